"""``Reconstructor``: BGR frames in, 3D faces out, on whatever engine the machine has.

Per frame: detect -> crop (SMIRK's policy) -> encode (any engine) -> decode (numpy face model, or
the fused graph's outputs) -> project and map back -> optional refine pass cropped from the
predicted landmarks -> :class:`~smirk_edge.results.Face`. ``stream()`` tracks faces from the
previous frame's landmarks and smooths parameters over time.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings

from importlib import resources
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from . import camera
from .bundle import Bundle
from .crop import (CROP_SIZE, DEFAULT_SCALE, DETECTOR_TO_LANDMARK_BOX, LANDMARK105_TO_LANDMARK_BOX, BoxMapping,  # noqa: F401
                   CropTransform, crop_from_box, preprocess, square_from_box, transform_from_square)
from .errors import BundleError, SmirkEdgeError, install_hint
from .face_model import FaceModel
from .face_model.model import rodrigues, yaw_degrees
from .image import as_bgr_uint8, load_image
from .results import PARAM_WIDTHS, Face, Params, crop_roll_degrees, head_pose_degrees
from .smoothing import OneEuroConfig, OneEuroFilter

log = logging.getLogger(__name__)

DEFAULT_BUNDLE_DIR = "default_bundle"
ENCODER_INPUT = "image"


def default_bundle_path() -> Path:
    """The embedded default bundle in ``smirk_edge/assets/default_bundle``."""
    return Path(str(resources.files("smirk_edge.assets").joinpath(DEFAULT_BUNDLE_DIR)))


def _open_bundle(bundle: str | os.PathLike | Bundle | None) -> Bundle:
    if isinstance(bundle, Bundle):
        return bundle
    if bundle is None:
        path = default_bundle_path()
        if not (path / "manifest.json").is_file():
            raise BundleError(
                f"the embedded default model is missing from this installation ({path} has no manifest.json): "
                "reinstall smirk-edge, or pass a bundle made by 'smirk-edge export' (Reconstructor('my.bundle'))")
        return Bundle(path)
    return Bundle(bundle)


def model_to_image_affine(cam: np.ndarray, transform: CropTransform, size: int = CROP_SIZE) -> np.ndarray:
    """2x3 affine taking model-frame (X, Y) metres to image pixels, for one face.

    Composes SMIRK's camera (crop pixels = ((s(X+tx), -s(Y+ty)) + 1) * size/2) with the inverse crop.
    """
    s, tx, ty = (float(v) for v in cam)
    h = size / 2.0
    to_crop = np.array([[h * s, 0.0, h * (s * tx + 1.0)], [0.0, -h * s, h * (1.0 - s * ty)]])
    return _compose(transform.inverse_matrix, to_crop)


def _compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """2x3 affine ``outer ∘ inner``."""
    m = outer[:, :2] @ inner
    m[:, 2] += outer[:, 2]
    return m


class Reconstructor:
    """Reconstruct 3D faces from BGR images with a model bundle on any available engine.

    Args:
        bundle: a bundle folder (``smirk-edge export``), a :class:`Bundle`, or None for the embedded
            default model.
        backend: ``"auto"`` (fastest engine that can open an encoder artifact), or
            ``"onnxruntime"``, ``"openvino"``, ``"tensorrt"``.
        precision: ``"fp32"``, ``"fp16"``, ``"int8"`` or None (prefer fp32).
        device: engine device (``"cpu"``, ``"cuda"``, OpenVINO ``"GPU"``/``"NPU"``...), or None.
        refine: re-crop from the predicted landmarks and encode again (the crop SMIRK was trained on).
        max_faces: at most this many faces per image (largest first).
        crop_scale: SMIRK crop scale (1.4 as in SMIRK's demo).
        detector: ``"auto"``, ``"short"`` or ``"full"`` (see :mod:`smirk_edge.detector`).
        score_threshold: detector confidence threshold.
        threads: engine threads (None = engine default).
        smoothing: One-Euro parameters for :meth:`stream`.
        redetect_every: in :meth:`stream`, run the detector every N frames even while tracking.
        align_roll: a face rolled more than this many degrees in the image (from the detector's
            eye keypoints, then from the first pass's head pose) gets a crop rotated upright, as
            the encoder was trained on crops within +-10 degrees; None keeps every crop upright.
            Tracking in :meth:`stream` keeps upright crops.

    Concurrency: calls on one Reconstructor are serialised by an internal lock, so sharing one
    between threads is safe but not parallel. For parallel work give each thread its own
    Reconstructor (engine sessions are not shared); results equal those of serial calls.
    """

    def __init__(self, bundle: str | os.PathLike | Bundle | None = None, backend: str = "auto",
                 precision: str | None = None, device: str | None = None, refine: bool = True,
                 max_faces: int = 8, crop_scale: float = DEFAULT_SCALE, detector: str = "auto",
                 score_threshold: float = 0.5, threads: int | None = None,
                 smoothing: OneEuroConfig = OneEuroConfig(), redetect_every: int = 15,
                 align_roll: float | None = 15.0):
        from .runtimes import registry

        if max_faces < 1:
            raise ValueError("max_faces must be >= 1")
        if not 0.5 <= crop_scale <= 4.0:
            raise ValueError(f"crop_scale {crop_scale} is outside [0.5, 4]")
        self.bundle = _open_bundle(bundle)
        self.refine = refine
        self.max_faces = max_faces
        self.crop_scale = crop_scale
        self.align_roll = None if align_roll is None else float(align_roll)
        self.smoothing = smoothing
        self.redetect_every = max(1, int(redetect_every))
        self.timings: dict[str, float] = {}
        self._lock = threading.RLock()

        fm = self.bundle.find(role="face_model")
        if not fm:
            raise BundleError(f"bundle {self.bundle.root} has no face model artifact")
        self.face_model = FaceModel.load(self.bundle.main_path(fm[0]).read_bytes())

        encoders = self.bundle.encoders()  # fused graphs stand in for missing encoders; geometry outputs unused
        if not encoders:
            raise BundleError(f"bundle {self.bundle.root} has no encoder artifact")
        # artifacts made only for building TensorRT engines are never run directly; artifacts that
        # failed the accuracy gate are used only when their precision is asked for explicitly
        usable = [a for a in encoders if a.attrs.get("intended_engine") in (None, "any")]
        if precision is None:
            usable = [a for a in usable if not a.attrs.get("degraded")]
        else:
            for a in usable:
                if a.precision == precision and a.attrs.get("degraded"):
                    warnings.warn(f"{a.name} failed the bundle's accuracy gate (marked degraded) and is used "
                                  f"because precision={precision!r} was asked for", RuntimeWarning, stacklevel=2)
        if not usable:
            raise BundleError(f"bundle {self.bundle.root} has no encoder artifact that passed the accuracy gate")
        records = [registry.Artifact(a.kind, a.precision, a.name) for a in usable]
        selection = registry.select_engine(records, preferred=backend, precision=precision, device=device)
        self.selection = selection

        def candidate(engine: str, name: str):
            art = self.bundle.get(name)
            return lambda: registry.make_runner(engine, self.bundle.main_path(art), precision=art.precision,
                                                **self._runner_options(engine, threads, device))

        chain = [(selection.engine, selection.artifact)] + list(selection.alternatives)
        if backend != "auto":
            chain = chain[:1]
        result = registry.open_with_fallback([candidate(e, a.path) for e, a in chain])
        self.encoder = result.runner
        self.engine = f"{self.encoder.engine}:{self.encoder.device} {self.encoder.precision}"
        self.selection_reason = selection.reason if result.index == 0 else (
            f"fell back to {chain[result.index][0]} ({chain[result.index][1].path}) after: "
            + "; ".join(f"{n}: {e}" for n, e in result.failures))
        log.info("smirk-edge encoder: %s (%s)", self.engine, self.selection_reason)

        self.detector = self._make_detector(detector, score_threshold, threads)

    # ------------------------------------------------------------------ set-up helpers
    @staticmethod
    def _runner_options(engine: str, threads: int | None, device: str | None) -> dict:
        opts: dict = {}
        if threads is not None and engine in ("onnxruntime", "openvino"):
            opts["threads"] = threads
        if device is not None and engine == "openvino":
            opts["device"] = device.upper()
        if device is not None and engine == "onnxruntime" and device.lower().startswith(("cuda", "gpu")):
            opts["providers"] = "cuda"  # never fall back to the CPU provider silently
        return opts

    def _make_detector(self, variant: str, score_threshold: float, threads: int | None):
        from .detector import FaceDetector
        from .runtimes import registry

        arts = {a.attrs.get("variant", a.name): a for a in self.bundle.find(role="detector")}
        engine = self.encoder.engine if self.encoder.engine in ("onnxruntime", "openvino") else None
        if engine is None:
            installed = registry.available_engines()
            engine = next((e for e in ("openvino", "onnxruntime") if e in installed), None)
        if engine is None:
            raise BundleError(f"the face detector needs ONNX Runtime or OpenVINO: {install_hint('onnxruntime')}")
        runners = {}
        for v in ("short", "full"):
            if v in arts:
                path = self.bundle.main_path(arts[v])
            else:
                from .detector import model_path

                path = model_path(v)
            r = registry.make_runner(engine, path, **self._runner_options(engine, threads, None))
            runners[v] = r.activate()
        self._detector_runners = list(runners.values())
        return FaceDetector(runners, variant=variant, score_threshold=score_threshold, max_faces=self.max_faces)

    def close(self) -> None:
        """Release engine resources (also done by the context manager)."""
        for r in [self.encoder, *getattr(self, "_detector_runners", [])]:
            if r.is_active:
                r.deactivate()

    def __enter__(self) -> "Reconstructor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Reconstructor(bundle={str(self.bundle.root)!r}, engine={self.engine!r})"

    # ------------------------------------------------------------------ core steps
    def encode(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run the encoder on ``(B, 3, 224, 224)`` RGB float32 crops in [0, 1] -> parameter arrays."""
        if batch.shape[0] == 0:
            return {k: np.zeros((0, w), np.float32) for k, w in PARAM_WIDTHS.items()}
        with self._lock:
            out = self.encoder.infer({ENCODER_INPUT: np.ascontiguousarray(batch, np.float32)})
        for k, v in out.items():
            if not np.all(np.isfinite(v)):
                raise SmirkEdgeError(f"the encoder produced NaN/inf in {k!r} ({self.engine}); "
                                     "run 'smirk-edge selftest' on this bundle")
        return out

    def _encode_crops(self, image: np.ndarray, transforms: list[CropTransform], t: dict) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        batch = preprocess(image, transforms)
        t1 = time.perf_counter()
        out = self.encode(batch)
        t2 = time.perf_counter()
        t["crop"] = t.get("crop", 0.0) + (t1 - t0) * 1e3
        t["encode"] = t.get("encode", 0.0) + (t2 - t1) * 1e3
        return out

    def _landmark_boxes(self, image: np.ndarray, t: dict) -> tuple[np.ndarray, np.ndarray]:
        t0 = time.perf_counter()
        det = self.detector.detect(image)
        t["detect"] = (time.perf_counter() - t0) * 1e3
        order = np.argsort(-((det.boxes[:, 2] - det.boxes[:, 0]) * (det.boxes[:, 3] - det.boxes[:, 1])))
        order = order[: self.max_faces]
        boxes = np.array([DETECTOR_TO_LANDMARK_BOX.apply(b) for b in det.boxes[order]]).reshape(-1, 4)
        eyes = det.keypoints[order][:, 1] - det.keypoints[order][:, 0]  # subject's right eye -> left eye
        rolls = np.degrees(np.arctan2(-eyes[:, 1], eyes[:, 0])) if len(order) else np.zeros(0)
        return boxes, det.scores[order], rolls

    def _crop(self, box: np.ndarray, roll: float = 0.0) -> CropTransform:
        """SMIRK's crop of a landmark box, rotated upright when the face is rolled past ``align_roll``."""
        if self.align_roll is None or abs(roll) < self.align_roll:
            return crop_from_box(box, self.crop_scale)
        centre, side = square_from_box(box, self.crop_scale)
        return transform_from_square(centre, side, CROP_SIZE, float(roll))

    def _faces_from(self, image: np.ndarray, boxes: np.ndarray, scores: np.ndarray, t: dict,
                    refine: bool, track_ids: Sequence[int] | None = None,
                    rolls: Sequence[float] | None = None) -> tuple[list[Face], list]:
        rolls = np.zeros(len(boxes)) if rolls is None else np.asarray(rolls, np.float64)
        transforms = [self._crop(b, r) for b, r in zip(boxes, rolls)]
        out = self._encode_crops(image, transforms, t)
        if refine and transforms:
            t0 = time.perf_counter()
            boxes105 = self._predicted_boxes(out, transforms)
            yaws = yaw_degrees(rodrigues(out["pose"]))
            rolls = [head_pose_degrees(p, crop_roll_degrees(tr.matrix))[2] for p, tr in zip(out["pose"], transforms)]
            t["decode"] = t.get("decode", 0.0) + (time.perf_counter() - t0) * 1e3
            transforms = [self._crop(LANDMARK105_TO_LANDMARK_BOX.apply(b, y), r)
                          for b, y, r in zip(boxes105, yaws, rolls)]
            out = self._encode_crops(image, transforms, t)
        return self._assemble(out, transforms, boxes, scores, t, track_ids), transforms

    def _predicted_boxes(self, out: dict[str, np.ndarray], transforms: list[CropTransform]) -> np.ndarray:
        """Image-space boxes of the predicted 105 landmarks (for the refine pass and tracking)."""
        geo = self.face_model.decode(shape=out["shape"], expression=out["expression"], pose=out["pose"],
                                     jaw=out["jaw"], eyelid=out["eyelid"])
        boxes = []
        for i, tr in enumerate(transforms):
            px = camera.project(geo.landmarks105[i:i + 1], out["cam"][i:i + 1])[0, :, :2]
            pts = tr.to_image(px)
            boxes.append([pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()])
        return np.array(boxes).reshape(-1, 4)

    def _assemble(self, out: dict[str, np.ndarray], transforms: list[CropTransform], boxes: np.ndarray,
                  scores: np.ndarray, t: dict, track_ids: Sequence[int] | None = None,
                  affines: Sequence[np.ndarray] | None = None) -> list[Face]:
        if not transforms:
            return []
        t0 = time.perf_counter()
        geo = self.face_model.decode(shape=out["shape"], expression=out["expression"], pose=out["pose"],
                                     jaw=out["jaw"], eyelid=out["eyelid"])
        t1 = time.perf_counter()
        faces = []
        for i, tr in enumerate(transforms):
            A = affines[i] if affines is not None else model_to_image_affine(out["cam"][i], tr)
            k = float(np.sqrt(abs(np.linalg.det(A[:, :2]))))  # image pixels per metre
            def to_img(p, A=A):  # noqa: E306
                return p[:, :2] @ A[:, :2].T + A[:, 2]
            verts = geo.vertices[i]
            v_img = np.concatenate([to_img(verts), (-k * verts[:, 2:3])], axis=1).astype(np.float32)
            faces.append(Face(
                params=Params.from_outputs(out, i), vertices=verts, vertices_image=v_img,
                landmarks68=to_img(geo.landmarks68[i]).astype(np.float32),
                landmarks105=to_img(geo.landmarks105[i]).astype(np.float32),
                box=np.asarray(boxes[i], np.float32), score=float(scores[i]),
                head_pose=head_pose_degrees(out["pose"][i], crop_roll_degrees(tr.matrix)),
                crop_matrix=tr.matrix.copy(),
                faces=self.face_model.faces, track_id=-1 if track_ids is None else int(track_ids[i]),
                engine=self.engine))
        t["decode"] = t.get("decode", 0.0) + (t1 - t0) * 1e3
        t["project"] = t.get("project", 0.0) + (time.perf_counter() - t1) * 1e3
        return faces

    # ------------------------------------------------------------------ public API
    def __call__(self, image: np.ndarray | str | os.PathLike) -> list[Face]:
        """Reconstruct every face (up to ``max_faces``) in one BGR image (array or file path).

        Returns an empty list when there is no face. Raises InputError for unusable input.
        """
        with self._lock:
            return self._call(image)

    def _call(self, image: np.ndarray | str | os.PathLike) -> list[Face]:
        t_start = time.perf_counter()
        t: dict[str, float] = {}
        img = load_image(image) if isinstance(image, (str, os.PathLike)) else as_bgr_uint8(image)
        t["decode_image"] = (time.perf_counter() - t_start) * 1e3
        boxes, scores, rolls = self._landmark_boxes(img, t)
        faces, _ = self._faces_from(img, boxes, scores, t, self.refine, rolls=rolls)
        t["total"] = (time.perf_counter() - t_start) * 1e3
        self.timings = t
        for f in faces:
            f.timings = t
        return faces

    def batch(self, images: Iterable[np.ndarray | str | os.PathLike]) -> list[list[Face]]:
        """Reconstruct a list of images (each independently); same errors as :meth:`__call__`."""
        return [self(im) for im in images]

    def from_landmarks(self, image: np.ndarray, landmarks: Sequence[np.ndarray]) -> list[Face]:
        """Reconstruct faces whose landmarks are known (e.g. MediaPipe's 478): SMIRK's exact crop, no detector."""
        with self._lock:
            return self._from_landmarks(image, landmarks)

    def _from_landmarks(self, image: np.ndarray, landmarks: Sequence[np.ndarray]) -> list[Face]:
        t: dict[str, float] = {}
        img = as_bgr_uint8(image)
        boxes = np.array([[l[:, 0].min(), l[:, 1].min(), l[:, 0].max(), l[:, 1].max()]
                          for l in (np.asarray(x, np.float64) for x in landmarks)]).reshape(-1, 4)
        faces, _ = self._faces_from(img, boxes, np.ones(len(boxes)), t, refine=False)
        self.timings = t
        return faces

    def stream(self, frames: Iterable[np.ndarray], timestamps: Iterable[float] | None = None,
               on_error: str = "report") -> Iterator[list[Face]]:
        """Video: track faces from the previous frame's landmarks and smooth their parameters.

        The detector runs on the first frame, when no face is tracked, and every ``redetect_every``
        frames (new faces are picked up, lost ones dropped). Parameters (expression, jaw, eyelids,
        pose, shape) and the model-to-image transform are filtered with One-Euro filters.

        ``on_error="report"``: a frame that cannot be processed yields an empty list, and the error
        is kept in :attr:`last_error` and reported with a warning; ``"raise"`` re-raises it.
        """
        if on_error not in ("report", "raise"):
            raise ValueError("on_error must be 'report' or 'raise'")
        tracker = _Tracker(self)
        ts = iter(timestamps) if timestamps is not None else None
        self.last_error: Exception | None = None
        self.errors: list[tuple[int, Exception]] = []
        for index, frame in enumerate(frames):
            stamp = next(ts, None) if ts is not None else None
            try:
                faces = tracker.step(frame, index, stamp)
            except SmirkEdgeError as exc:
                if on_error == "raise":
                    raise
                self.last_error = exc
                self.errors.append((index, exc))
                warnings.warn(f"frame {index} skipped: {exc}", RuntimeWarning, stacklevel=2)
                faces = []
            yield faces


class _Track:
    def __init__(self, track_id: int, box: np.ndarray, config: OneEuroConfig):
        self.id = track_id
        self.box = box  # 478-landmark-equivalent box for the next crop
        self.filters = {k: OneEuroFilter(config) for k in ("pose", "shape", "expression", "eyelid", "jaw", "affine")}


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class _Tracker:
    """Per-stream state of :meth:`Reconstructor.stream`."""

    def __init__(self, rec: Reconstructor):
        self.rec = rec
        self.tracks: list[_Track] = []
        self.next_id = 0

    def step(self, frame: np.ndarray, index: int, stamp: float | None) -> list[Face]:
        with self.rec._lock:
            return self._step(frame, index, stamp)

    def _step(self, frame: np.ndarray, index: int, stamp: float | None) -> list[Face]:
        rec = self.rec
        t_start = time.perf_counter()
        t: dict[str, float] = {}
        img = as_bgr_uint8(frame)
        h, w = img.shape[:2]
        if not self.tracks or index % rec.redetect_every == 0:
            boxes, scores, _ = rec._landmark_boxes(img, t)
            self._match(boxes)
        if not self.tracks:
            t["total"] = (time.perf_counter() - t_start) * 1e3
            rec.timings = t
            return []
        transforms = [crop_from_box(tr.box, rec.crop_scale) for tr in self.tracks]
        out = rec._encode_crops(img, transforms, t)
        t0 = time.perf_counter()
        affines = []
        for i, (tr, T) in enumerate(zip(self.tracks, transforms)):
            for k in ("pose", "shape", "expression", "eyelid", "jaw"):
                out[k][i] = tr.filters[k].filter(out[k][i], stamp)
            affines.append(tr.filters["affine"].filter(model_to_image_affine(out["cam"][i], T), stamp).astype(np.float64))
        t["smooth"] = (time.perf_counter() - t0) * 1e3
        boxes = np.array([tr.box for tr in self.tracks])
        faces = rec._assemble(out, transforms, boxes, np.ones(len(self.tracks)), t,
                              [tr.id for tr in self.tracks], affines)
        keep = []
        for tr, f in zip(self.tracks, faces):
            lm = f.landmarks105
            box105 = np.array([lm[:, 0].min(), lm[:, 1].min(), lm[:, 0].max(), lm[:, 1].max()])
            new_box = LANDMARK105_TO_LANDMARK_BOX.apply(box105, float(yaw_degrees(rodrigues(f.params.pose[None]))[0]))
            side = min(new_box[2] - new_box[0], new_box[3] - new_box[1])
            cx, cy = (new_box[0] + new_box[2]) / 2, (new_box[1] + new_box[3]) / 2
            if side >= 8 and -0.25 * w <= cx <= 1.25 * w and -0.25 * h <= cy <= 1.25 * h:
                tr.box = new_box
                f.box = new_box.astype(np.float32)
                keep.append((tr, f))
        self.tracks = [tr for tr, _ in keep]
        faces = [f for _, f in keep]
        t["total"] = (time.perf_counter() - t_start) * 1e3
        rec.timings = t
        for f in faces:
            f.timings = t
        return faces

    def _match(self, boxes: np.ndarray) -> None:
        """Greedy IoU matching of detections to tracks; unmatched tracks are dropped, new faces added."""
        matched: list[_Track] = []
        free = list(self.tracks)
        for b in boxes:
            best, best_iou = None, 0.3
            for tr in free:
                v = _iou(tr.box, b)
                if v > best_iou:
                    best, best_iou = tr, v
            if best is not None:
                free.remove(best)
                best.box = b
                matched.append(best)
            else:
                matched.append(_Track(self.next_id, b, self.rec.smoothing))
                self.next_id += 1
        self.tracks = matched[: self.rec.max_faces]
