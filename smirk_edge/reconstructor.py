"""``Reconstructor``: BGR frames in, 3D faces out, on whatever engine the machine has.

The Reconstructor is options plus composition: it opens a bundle (its metadata gives the crop
policy and the encoder's input), starts the encoder and the detector on real runners, and runs the
stages of :mod:`smirk_edge.pipeline` per frame: detect -> crop -> encode [-> decode -> project ->
refine -> crop -> encode] -> decode -> project -> :class:`~smirk_edge.results.Face`. ``stream()``
runs a :class:`~smirk_edge.tracking.Tracker` on the same stages.
"""

from __future__ import annotations

import logging
import numbers
import os
import warnings
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from ._locks import ForkSafeLock
from .bundle import Bundle
from .crop import CROP_SIZE, CropTransform
from .errors import BundleError, InputError, SmirkEdgeError
from .face_model import FaceModel
from .image import as_bgr_uint8, load_image
from .options import ReconstructorOptions, check_on_error
from .pipeline import CropPolicy, StageTimer, Stages, check_landmarks, encode, image_affines
from .results import Face, FrameResult
from .tracking import Tracker

log = logging.getLogger(__name__)

# the embedded models, by encoder variant (Reconstructor(variant=...)), under smirk_edge/assets
EMBEDDED_BUNDLES = {"fast": "fast_bundle", "full": "full_bundle"}
DEFAULT_VARIANT = "fast"
"""The encoder variant of the default model (``Reconstructor()``): the distilled ``fast`` encoder,
which is more accurate than the full one on every landmark metric (docs/default_model_card.md)."""
DEFAULT_BUNDLE_DIR = EMBEDDED_BUNDLES[DEFAULT_VARIANT]

__all__ = ["DEFAULT_VARIANT", "Reconstructor", "Stream", "bundle_variant", "default_bundle_path",
           "model_to_image_affine"]


def default_bundle_path(variant: str | None = None) -> Path:
    """The embedded bundle of an encoder ``variant`` (None: the default model, of
    :data:`DEFAULT_VARIANT`; ``"fast"``: ``smirk_edge/assets/fast_bundle``; ``"full"``:
    ``smirk_edge/assets/full_bundle``, SMIRK's three-backbone encoder)."""
    name = EMBEDDED_BUNDLES.get(variant or DEFAULT_VARIANT)
    if name is None:
        from .errors import OptionError

        raise OptionError(f"no embedded model of variant {variant!r} (embedded: {', '.join(EMBEDDED_BUNDLES)}); "
                          "export one with 'smirk-edge export' and pass its bundle")
    return Path(str(resources.files("smirk_edge.assets").joinpath(name)))


def bundle_variant(bundle: Bundle) -> str:
    """The encoder variant a bundle holds (its source checkpoint's ``encoder_variant``; ``"full"``
    for bundles that do not record one, which predate the variants)."""
    src = bundle.metadata.get("source_checkpoint")
    v = src.get("encoder_variant") if isinstance(src, dict) else None
    return str(v) if v else "full"


def _open_bundle(bundle: str | os.PathLike | Bundle | None, variant: str | None = None) -> Bundle:
    if bundle is None:
        path = default_bundle_path(variant)
        if not (path / "manifest.json").is_file():
            raise BundleError(
                f"the embedded {variant or 'default'} model is missing from this installation ({path} has no "
                "manifest.json): reinstall smirk-edge, or pass a bundle made by 'smirk-edge export' "
                "(Reconstructor('my.bundle'))")
        return Bundle(path)
    opened = bundle if isinstance(bundle, Bundle) else Bundle(bundle)
    if variant is not None and bundle_variant(opened) != variant:
        from .errors import OptionError

        raise OptionError(f"variant={variant!r} was asked for, but bundle {opened.root} holds the "
                          f"{bundle_variant(opened)!r} encoder (a bundle holds one variant); leave variant unset, "
                          "or pass a bundle exported from a checkpoint of that variant")
    return opened


def model_to_image_affine(cam: np.ndarray, transform: CropTransform, size: int = CROP_SIZE) -> np.ndarray:
    """2x3 affine taking model-frame (X, Y) metres to image pixels, for one face
    (:func:`smirk_edge.pipeline.image_affines` for one camera and crop)."""
    return image_affines(np.asarray(cam)[None], [transform.matrix], size)[0]


class Reconstructor:
    """Reconstruct 3D faces from BGR images with a model bundle on any available engine.

    Args:
        bundle: a bundle folder (``smirk-edge export``), a :class:`Bundle`, or None for the embedded
            default model (the distilled ``fast`` encoder; ``variant="full"``: the embedded model
            with SMIRK's three-backbone encoder).
        options: a :class:`~smirk_edge.options.ReconstructorOptions`; keyword arguments (the same
            names: ``backend``, ``precision``, ``device``, ``refine``, ``refine_threshold``, ``max_faces``, ``crop_scale``,
            ``detector``, ``score_threshold``, ``threads``, ``smoothing``, ``redetect_every``,
            ``align_roll``, ``variant``) replace single fields of it. Every bad option raises
            :class:`~smirk_edge.errors.OptionError` here, before any engine starts.

    Concurrency: calls on one Reconstructor are serialised by an internal lock, so sharing one
    between threads is safe but not parallel. For parallel work give each thread its own
    Reconstructor (engine sessions are not shared); results equal those of serial calls. A process
    forked while another thread is inside a call gets the lock back unlocked in the child.
    """

    def __init__(self, bundle: str | os.PathLike | Bundle | None = None, options: ReconstructorOptions | None = None,
                 **keywords: Any):
        if options is not None and not isinstance(options, ReconstructorOptions):
            if isinstance(options, str) and "backend" not in keywords:  # Reconstructor(path, "onnxruntime")
                keywords["backend"], options = options, None
            else:
                from .errors import OptionError

                raise OptionError(f"options must be a ReconstructorOptions, got {type(options).__name__}")
        self.options = ReconstructorOptions.from_keywords(options, **keywords)
        opts = self.options
        self.bundle = _open_bundle(bundle, opts.variant)
        self.variant = bundle_variant(self.bundle)
        info = self.bundle.info
        self.timings: dict[str, float] = {}
        self.errors: list[tuple[int, Exception]] = []
        self.last_error: Exception | None = None
        self._lock = ForkSafeLock()
        self._runners: list = []

        fm = self.bundle.find(role="face_model")
        if not fm:
            raise BundleError(f"bundle {self.bundle.root} has no face model artifact")
        self.face_model = FaceModel.load(self.bundle.main_path(fm[0]).read_bytes())
        info.check_face_model(self.face_model.model_id, self.face_model.n_vertices, str(self.bundle.root))

        from .detector import open_detector
        from .runtimes import registry

        from .cpu import apply_thread_budget, core_budget

        self.threads = opts.threads if opts.threads is not None else core_budget().threads
        self.thread_budget = apply_thread_budget(self.threads)  # OpenCV and BLAS share the engine's budget
        opened = self._open_encoder(registry)
        self.encoder = opened.runner
        self._runners.append(self.encoder)
        self.selection = opened.selection
        self.artifact = opened.artifact  # the encoder artifact that runs (after any fallback)
        self.selection_reason = opened.reason
        if self.bundle.skipped_for_cpu:
            self.selection_reason += "; " + "; ".join(w for _, w in self.bundle.skipped_for_cpu)
        self.engine = f"{self.encoder.engine}:{self.encoder.device} {self.encoder.precision}"
        log.info("smirk-edge encoder: %s (%s)", self.engine, self.selection_reason)

        self.detector = open_detector(self.bundle, self.encoder.engine, self.threads, opts.detector,
                                      opts.score_threshold, opts.max_faces, device=self.encoder.device)
        self._runners += list(self.detector.runners.values())
        policy = CropPolicy(info.crop_scale if opts.crop_scale is None else opts.crop_scale, info.input_size,
                            opts.align_roll)
        if self.encoder.engine == "torch":  # crop, encode, decode and project on the runner's device
            from .runtimes.torch_pipeline import TorchStages

            self.stages: Stages = TorchStages(self.detector, self.encoder, self.face_model, policy, opts.max_faces,
                                              info.input_name, dict(info.outputs), self.engine)
        else:
            self.stages = Stages(self.detector, self.encoder, self.face_model, policy, opts.max_faces,
                                 info.input_name, dict(info.outputs), self.engine)

    def _open_encoder(self, registry):
        """The encoder runner; an int8 ONNX artifact not gated for this CPU class is skipped (logged),
        and when that leaves no artifact of the asked precision for the asked engine, fp32 runs
        instead (logged and warned)."""
        opts = self.options
        from .runtimes.base import RunnerError

        if _wants_torch(opts.backend, opts.device, self.bundle):
            return self._open_torch(registry)
        arts = self.bundle.runnable_encoders(opts.precision)
        skipped = list(self.bundle.skipped_for_cpu)
        try:
            return registry.open_artifact(arts, self.bundle.main_path, opts.backend, opts.precision, opts.device,
                                          self.threads)
        except RunnerError:
            # the bundle has int8, but not for this engine on this CPU: the same answer on every CPU
            # class (fp32, logged and warned); a bundle without any int8 artifact is an error
            int8 = [a for a in arts if a.precision == "int8"]
            if opts.precision != "int8" or not (skipped or int8):
                raise
        if skipped:
            why = "; ".join(w for _, w in skipped)
        else:
            gated = sorted({str((a.attrs.get("accuracy") or {}).get("engine", "?")) for a in int8})
            why = (f"the bundle's int8 artifacts ({', '.join(os.fspath(a.path) for a in int8)}) are gated for "
                   f"{', '.join(gated)}, not {opts.backend}")
        log.warning("precision='int8' on %s: %s; running fp32 instead", opts.backend, why)
        warnings.warn(f"int8 is not available for backend {opts.backend!r} on this CPU ({why}); running fp32",
                      RuntimeWarning, stacklevel=3)
        return registry.open_artifact(self.bundle.runnable_encoders(None), self.bundle.main_path, opts.backend,
                                      None, opts.device, self.threads)

    def _open_torch(self, registry):
        """The torch backend: the bundle's ``torch-checkpoint`` encoder on ``device`` (default: CUDA
        when torch sees a GPU, else the CPU) at ``precision`` (default fp16 on CUDA, fp32 on the CPU;
        the weights are stored in fp16, so fp32 computes with the same values as the fp32 ONNX)."""
        opts = self.options
        info = self.bundle.info
        arts = [a for a in self.bundle.runnable_encoders(None) if a.kind == "torch-checkpoint"]
        if not arts:
            from .runtimes.base import RunnerError

            raise RunnerError(f"backend='torch' needs a torch-checkpoint artifact; bundle {self.bundle.root} has "
                              "none (export with --formats torch, or use the embedded default model)")
        device = opts.device
        if device is None:
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        precision = opts.precision or ("fp16" if str(device).startswith("cuda") else "fp32")
        if precision == "int8":
            from .errors import OptionError

            raise OptionError("backend='torch' runs fp32, fp16 (CUDA) or bf16; int8 is for ONNX Runtime/OpenVINO")
        runner = registry.make_runner("torch", self.bundle.main_path(arts[0]), precision=precision,
                                      device=str(device), input_name=info.input_name, input_size=info.input_size)
        runner.activate()
        selection = registry.Selection("torch", arts[0], "asked for" if opts.backend == "torch" else
                                       "a CUDA device was asked for and ONNX Runtime has no CUDA provider here")
        reason = f"torch: {selection.reason}, opens {arts[0].path} on {device} in {precision}"
        return registry.Opened(runner, "torch", arts[0], selection, reason)

    # ------------------------------------------------------------------ options, read-only views
    @property
    def model(self) -> dict:
        """Which model produces the results, for records that must name it: the bundle folder, its
        encoder variant, the source checkpoint's sha256 and the encoder artifact that runs."""
        src = self.bundle.metadata.get("source_checkpoint")
        return {"bundle": str(self.bundle.root), "variant": self.variant,
                "checkpoint_sha256": src.get("sha256") if isinstance(src, dict) else None,
                "artifact": self.artifact.name}

    @property
    def crop_scale(self) -> float:
        """The crop scale in use (the option, else the bundle's ``crop_policy.scale``)."""
        return self.stages.policy.scale

    @property
    def refine(self) -> bool | str:
        return self.options.refine

    @property
    def max_faces(self) -> int:
        return self.options.max_faces

    @property
    def align_roll(self) -> float | None:
        return self.options.align_roll

    @property
    def smoothing(self):
        return self.options.smoothing

    @property
    def redetect_every(self) -> int:
        return self.options.redetect_every

    @property
    def detector(self):
        """The face detector the stages run (may be replaced, e.g. by a wrapper that records calls)."""
        return self._detector

    @detector.setter
    def detector(self, value) -> None:
        self._detector = value
        if hasattr(self, "stages"):
            self.stages.detector = value

    # ------------------------------------------------------------------ life cycle
    def close(self) -> None:
        """Release engine resources (also done by the context manager)."""
        for r in self._runners:
            if r.is_active:
                r.deactivate()

    def __enter__(self) -> "Reconstructor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Reconstructor(bundle={str(self.bundle.root)!r}, engine={self.engine!r})"

    # ------------------------------------------------------------------ public API
    def encode(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run the encoder on ``(B, 3, S, S)`` RGB float32 crops in [0, 1] -> parameter arrays."""
        with self._lock:
            return encode(self.encoder, batch, self.stages.input_name, self.stages.widths)

    def __call__(self, image: np.ndarray | str | os.PathLike) -> FrameResult:
        """Reconstruct every face (up to ``max_faces``) in one BGR image (array or file path).

        Returns a :class:`~smirk_edge.results.FrameResult`: the list of faces (empty when there is
        no face) with the call's ``timings``. Raises InputError for unusable input.
        """
        with self._lock:
            timer = StageTimer()
            with timer("decode_image"):
                img = load_image(image) if isinstance(image, (str, os.PathLike)) else as_bgr_uint8(image)
            det = self.stages.detect(img, timer)
            faces = self.stages.reconstruct(img, det.boxes, det.scores, det.rolls, self.options.refine, timer,
                                            self.options.refine_threshold)
            return self._result(faces, timer)

    def batch(self, images: Iterable[np.ndarray | str | os.PathLike]) -> list[FrameResult]:
        """Reconstruct a list of images; same results and errors as :meth:`__call__` on each.

        Each image is decoded on its own and the detector runs on all of them at once (one batch
        per detector model); then the faces of all images go through the encoder as one batch per pass (and through decode and projection as one batch),
        which is what makes a GPU fast. The results' ``timings`` are those of the whole batch.
        """
        with self._lock:
            timer = StageTimer()
            with timer("decode_image"):
                imgs = [load_image(im) if isinstance(im, (str, os.PathLike)) else as_bgr_uint8(im) for im in images]
            dets = self.stages.detect_many(imgs, timer)
            per_image = self.stages.reconstruct_many(imgs, dets, self.options.refine, timer,
                                                     self.options.refine_threshold)
            timings = timer.finish()
            self.timings = timings
            results = []
            for faces in per_image:
                for f in faces:
                    f.timings = dict(timings)
                results.append(FrameResult(faces, dict(timings)))
            return results

    def from_landmarks(self, image: np.ndarray, landmarks: Sequence[np.ndarray]) -> FrameResult:
        """Reconstruct faces whose landmarks are known (e.g. MediaPipe's 478): SMIRK's exact crop, no detector.

        ``landmarks``: a list with one ``(K, 2)`` image-pixel array per face (K >= 2).
        """
        boxes = check_landmarks(landmarks)
        with self._lock:
            timer = StageTimer()
            img = as_bgr_uint8(image)
            faces = self.stages.reconstruct(img, boxes, np.ones(len(boxes)), None, False, timer)
            return self._result(faces, timer)

    def _result(self, faces: list[Face], timer: StageTimer) -> FrameResult:
        timings = timer.finish()
        self.timings = timings
        for f in faces:
            f.timings = dict(timings)
        return FrameResult(faces, timings)

    def tracker(self) -> Tracker:
        """A new :class:`~smirk_edge.tracking.Tracker` on this Reconstructor's stages and lock."""
        o = self.options
        return Tracker(self.stages, o.smoothing, o.redetect_every, o.max_faces, lock=self._lock)

    def stream(self, frames: Iterable[np.ndarray], timestamps: Iterable[float] | None = None,
               on_error: str = "report") -> "Stream":
        """Video: track faces from the previous frame's landmarks and smooth their parameters.

        The detector runs on the first frame, when no face is tracked, every ``redetect_every``
        frames (new faces are picked up, lost ones dropped), and when a track fails its check:
        every tracked frame checks each track with the detector on the track's region (a face that
        leaves ends its track; a frame-size change restarts tracking). Expression, jaw, eyelids,
        pose and the model-to-image transform are filtered (``smoothing``, a
        :class:`~smirk_edge.smoothing.StreamSmoothing`); shape is locked per track. Any iterable
        of frames works; :func:`smirk_edge.sources.open_source` reads files, cameras and stream
        URLs (docs/video.md).
        ``timestamps``: seconds per frame (real numbers), or None for the nominal frame rate.

        ``on_error="report"``: a frame that cannot be processed yields an empty result whose
        ``errors`` hold the error; it is also kept in the stream's (and :attr:`errors` /
        :attr:`last_error`) and reported with a warning. ``"raise"`` re-raises it. Bad arguments
        raise at once (OptionError, InputError), not at the first frame.
        """
        return Stream(self, frames, _check_timestamps(timestamps), check_on_error(on_error))


def _wants_torch(backend: str, device: str | None, bundle: Bundle) -> bool:
    """backend='torch', or 'auto' with a CUDA device that ONNX Runtime cannot serve here (no CUDA
    execution provider) while the bundle has a torch artifact."""
    if backend == "torch":
        return True
    if backend != "auto" or device is None or not str(device).lower().startswith("cuda"):
        return False
    if not any(a.kind == "torch-checkpoint" for a in bundle.encoders()):
        return False
    try:
        import onnxruntime

        return "CUDAExecutionProvider" not in onnxruntime.get_available_providers()
    except ImportError:
        return True


def _check_stamp(value: Any, index: int) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(float(value)):
        raise InputError(f"timestamp {index} must be a finite number of seconds, got {value!r}")
    return float(value)


def _check_timestamps(timestamps: Iterable[float] | None) -> Iterator[float] | None:
    if timestamps is None:
        return None
    if isinstance(timestamps, (str, bytes)):
        raise InputError(f"timestamps must be numbers (seconds), one per frame, got the string {timestamps!r}")
    if isinstance(timestamps, (Sequence, np.ndarray)):
        values = [_check_stamp(v, i) for i, v in enumerate(timestamps)]  # all at once when they are at hand
        return iter(values)
    return (_check_stamp(v, i) for i, v in enumerate(timestamps))


class Stream:
    """The iterator :meth:`Reconstructor.stream` returns: one :class:`FrameResult` per frame.

    Attributes:
        errors: ``(frame index, error)`` of every frame this stream skipped (its own list: another
            stream on the same Reconstructor never touches it).
        last_error: the latest of them, or None.
        tracker: the stream's :class:`~smirk_edge.tracking.Tracker`.
    """

    def __init__(self, rec: Reconstructor, frames: Iterable[np.ndarray], timestamps: Iterator[float] | None,
                 on_error: str):
        self.tracker = rec.tracker()
        self.errors: list[tuple[int, Exception]] = []
        self.last_error: Exception | None = None
        self._rec = rec
        rec.errors = self.errors  # the Reconstructor shows the latest stream's errors
        rec.last_error = None
        self._it = self._run(iter(frames), timestamps, on_error)

    def __iter__(self) -> "Stream":
        return self

    def __next__(self) -> FrameResult:
        return next(self._it)

    def _run(self, frames: Iterator[np.ndarray], timestamps: Iterator[float] | None,
             on_error: str) -> Iterator[FrameResult]:
        for index, frame in enumerate(frames):
            stamp = next(timestamps, None) if timestamps is not None else None
            try:
                result = self.tracker.step(frame, index, stamp)
            except SmirkEdgeError as exc:
                if on_error == "raise":
                    raise
                self.errors.append((index, exc))
                self.last_error = exc
                if self._rec.errors is self.errors:
                    self._rec.last_error = exc
                warnings.warn(f"frame {index} skipped: {exc}", RuntimeWarning, stacklevel=3)
                result = FrameResult([], {}, [exc], index)
            else:
                self._rec.timings = result.timings
            yield result
