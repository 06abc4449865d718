"""Face detection with BlazeFace (MediaPipe's short- and full-range face detectors, as ONNX).

numpy + OpenCV only; the network runs in a :class:`smirk_edge.runtimes.Runner` (any object with
``infer(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]`` will do). Without one, an
ONNX Runtime runner (:func:`smirk_edge.runtimes.make_runner`, one thread) opens the model shipped
in ``smirk_edge/assets``; :func:`open_detector` opens a bundle's detector artifacts on any engine.

Models (converted by ``export/detector/convert_blazeface.py``; see ``assets/NOTICE.blazeface.md``)

=========  =======  =======  ============================================================
variant    input    anchors  good for
=========  =======  =======  ============================================================
``short``  128x128  896      faces that fill a good part of the frame (selfie, webcam,
                             face crops); MediaPipe's ``model_selection=0``
``full``   192x192  2304     smaller / more distant faces, group photos; MediaPipe's
                             ``model_selection=1``
=========  =======  =======  ============================================================

Model I/O: input ``input`` float32 ``(B, 3, S, S)``, **RGB**, values in **[-1, 1]**
(``pixel / 127.5 - 1``); outputs ``regressors`` ``(B, N, 16)`` and ``classificators``
``(B, N, 1)`` (logits).

Preprocessing (:func:`letterbox`): the BGR uint8 frame is resized, keeping its aspect ratio, to
fit S x S (``INTER_AREA`` when shrinking), centred on a black canvas (black = -1 after
normalisation, as MediaPipe's ``ImageToTensorCalculator`` with ``keep_aspect_ratio: true`` and
``BORDER_ZERO`` does), converted to RGB and scaled to [-1, 1].

Anchors (:func:`generate_anchors`): MediaPipe's ``SsdAnchorsCalculator`` with the options of the
face-detection graphs in the mediapipe 0.10.21 wheel (they are compiled into
``_framework_bindings.so``; read out of it with the wheel's own ``FaceDetectionOptions`` and
``CalculatorGraphConfig`` protos):

* common (graph ``FaceDetection``): ``anchor_offset_x = anchor_offset_y = 0.5``,
  ``aspect_ratios: [1.0]``, ``fixed_anchor_size: true`` (so every anchor is 1 x 1 and
  ``min_scale = 0.1484375`` / ``max_scale = 0.75`` do not matter);
* short range: ``input 128x128, num_layers 4, strides [8, 16, 16, 16],
  interpolated_scale_aspect_ratio 1.0`` -> 2 anchors per cell and layer; layers with equal
  strides share one grid: 16x16x2 + 8x8x6 = 896;
* full range: ``input 192x192, num_layers 1, strides [4], interpolated_scale_aspect_ratio 0.0``
  -> 1 anchor per cell: 48x48 = 2304.

Anchor order is row-major over the grid (y, then x, then anchor), grids in stride order; centres
are ``((x + 0.5) / grid_w, (y + 0.5) / grid_h)`` in normalised input coordinates.

Decoding (:func:`decode`; MediaPipe ``TensorsToDetectionsCalculator``: ``num_coords 16,
box_coord_offset 0, keypoint_coord_offset 4, num_keypoints 6, reverse_output_order true,
sigmoid_score true, score_clipping_thresh 100``, ``x/y/w/h_scale`` = input size): with ``r`` the
16 regressor values of an anchor at centre ``(ax, ay)`` and ``S`` the input size,
``cx = r0 / S + ax``, ``cy = r1 / S + ay``, ``w = r2 / S``, ``h = r3 / S``, keypoint ``k`` at
``(r[4+2k] / S + ax, r[5+2k] / S + ay)``; score = sigmoid(clip(logit, -100, 100)).

Non-maximum suppression (:func:`weighted_nms`, the default, or :func:`hard_nms`): MediaPipe's
face detector uses *weighted* NMS with IoU threshold 0.3: the best box and all boxes overlapping
it by more than the threshold are replaced by their score-weighted mean (box and keypoints), with
the best box's score. We keep that default because averaging the overlapping anchors steadies
boxes and keypoints (less jitter from frame to frame, which the crop for SMIRK inherits);
``nms="hard"`` keeps the single best box of each cluster instead.

Keypoints, in this order (:data:`KEYPOINT_NAMES`): right eye, left eye, nose tip, mouth centre,
right ear tragion, left ear tragion. "Right" is **the subject's** right: for a face looking at the
camera the right eye is on the image's *left* (smaller x).

Coordinates: pixels of the original image, x to the right, y down, origin at the top-left corner
of the top-left pixel (pixel ``i`` spans ``[i, i + 1)``). Boxes are ``(x0, y0, x1, y1)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import cv2
import numpy as np

from .errors import InputError

if TYPE_CHECKING:  # the contract lives in smirk_edge.runtimes; the core never imports it eagerly
    from .runtimes.base import Runner

__all__ = [
    "KEYPOINT_NAMES",
    "MODELS",
    "Detections",
    "FaceDetector",
    "Letterbox",
    "ModelSpec",
    "decode",
    "generate_anchors",
    "hard_nms",
    "iou",
    "letterbox",
    "model_path",
    "open_detector",
    "weighted_nms",
]

VARIANTS = ("auto", "short", "full", "both")
"""``auto``: short range, then full range only when short range finds no (large) face; ``both``: both
models on every frame, merged by one NMS; ``short`` / ``full``: one model."""

KEYPOINT_NAMES = ("right_eye", "left_eye", "nose_tip", "mouth_center", "right_ear", "left_ear")
"""Keypoint order of :class:`Detections` (the subject's right / left)."""

ASSETS = Path(__file__).resolve().parent / "assets"
INPUT_NAME = "input"
OUTPUT_REGRESSORS = "regressors"
OUTPUT_SCORES = "classificators"


@dataclass(frozen=True)
class ModelSpec:
    """One BlazeFace variant: its file, input size and SSD anchor options (MediaPipe's values)."""

    name: str
    filename: str
    input_size: int  # S: the model input is S x S pixels
    strides: tuple[int, ...]  # one per SSD layer
    interpolated_scale_aspect_ratio: float  # > 0 adds one anchor per cell and layer
    anchor_offset: float = 0.5
    default_score_threshold: float = 0.5  # MediaPipe: min_score_thresh 0.5 short, 0.6 full

    @property
    def num_anchors(self) -> int:
        return len(generate_anchors(self))


MODELS: dict[str, ModelSpec] = {
    "short": ModelSpec("short", "blazeface_short.onnx", 128, (8, 16, 16, 16), 1.0,
                       default_score_threshold=0.5),
    "full": ModelSpec("full", "blazeface_full.onnx", 192, (4,), 0.0,
                      default_score_threshold=0.6),
}


def model_path(variant: str) -> Path:
    """Path of the shipped ONNX model of ``variant`` ("short" or "full")."""
    if variant not in MODELS:
        raise InputError(f"unknown detector variant {variant!r}; use one of {sorted(MODELS)}")
    return ASSETS / MODELS[variant].filename


_ANCHOR_CACHE: dict[ModelSpec, np.ndarray] = {}


def generate_anchors(spec: ModelSpec) -> np.ndarray:
    """SSD anchor centres, ``(N, 2)`` float32 (x, y) in normalised input coordinates [0, 1].

    Follows MediaPipe's ``SsdAnchorsCalculator`` with ``fixed_anchor_size: true`` (all anchors
    are 1 x 1, so only the centres matter): consecutive layers with the same stride share a grid
    of ``ceil(S / stride)`` cells a side; each layer contributes one anchor per cell for aspect
    ratio 1.0, plus one more when ``interpolated_scale_aspect_ratio > 0``. Order: grid by grid,
    row-major (y, then x), then the anchors of a cell.
    """
    cached = _ANCHOR_CACHE.get(spec)
    if cached is not None:
        return cached
    out = []
    strides = list(spec.strides)
    i = 0
    while i < len(strides):
        j = i
        per_cell = 0
        while j < len(strides) and strides[j] == strides[i]:
            per_cell += 1 + (spec.interpolated_scale_aspect_ratio > 0)
            j += 1
        g = math.ceil(spec.input_size / strides[i])
        ys, xs = np.meshgrid(np.arange(g), np.arange(g), indexing="ij")
        centres = np.stack([(xs + spec.anchor_offset) / g, (ys + spec.anchor_offset) / g], -1)
        out.append(np.repeat(centres.reshape(-1, 2), per_cell, axis=0))
        i = j
    anchors = np.concatenate(out).astype(np.float32)
    anchors.setflags(write=False)
    _ANCHOR_CACHE[spec] = anchors
    return anchors


# ----------------------------------------------------------------------------------------------
# Preprocessing
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Letterbox:
    """The map between original-image pixels and model-input pixels of one letterboxed frame.

    ``u = x * scale_x + pad_x`` and ``v = y * scale_y + pad_y`` (input pixels, 0..size), with
    ``scale_x = new_w / W`` and ``scale_y = new_h / H`` (equal up to rounding of the resized size).
    """

    size: int
    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float

    def to_input(self, points: np.ndarray) -> np.ndarray:
        """Image pixels ``(..., 2)`` -> model-input pixels ``(..., 2)`` (float64)."""
        p = np.asarray(points, dtype=np.float64)
        return np.stack([p[..., 0] * self.scale_x + self.pad_x,
                         p[..., 1] * self.scale_y + self.pad_y], -1)

    def to_image(self, points: np.ndarray) -> np.ndarray:
        """Model-input pixels ``(..., 2)`` -> image pixels ``(..., 2)`` (float64)."""
        p = np.asarray(points, dtype=np.float64)
        return np.stack([(p[..., 0] - self.pad_x) / self.scale_x,
                         (p[..., 1] - self.pad_y) / self.scale_y], -1)


def _check_image(image: Any) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise InputError(f"expected a numpy array (H, W, 3) uint8 BGR image, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise InputError(f"expected a uint8 BGR image, got dtype {image.dtype}; convert it first "
                         "(e.g. np.clip(img * 255, 0, 255).astype(np.uint8) for [0, 1] floats)")
    if image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"expected an (H, W, 3) BGR image, got shape {image.shape}; grey and "
                         "BGRA frames must be converted first (cv2.cvtColor ... COLOR_GRAY2BGR / "
                         "COLOR_BGRA2BGR)")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise InputError(f"empty image of shape {image.shape}")
    return image


def letterbox_canvas(image_bgr: np.ndarray, size: int) -> tuple[np.ndarray, Letterbox]:
    """The ``size x size`` BGR uint8 canvas of :func:`letterbox` (before RGB and scaling) and its map."""
    img = _check_image(image_bgr)
    h, w = img.shape[:2]
    s = min(size / w, size / h)
    new_w = min(size, max(1, round(w * s)))
    new_h = min(size, max(1, round(h * s)))
    interp = cv2.INTER_AREA if (new_w < w or new_h < h) else cv2.INTER_LINEAR
    resized = cv2.resize(img, (new_w, new_h), interpolation=interp)
    pad_x = (size - new_w) // 2
    pad_y = (size - new_h) // 2
    canvas = np.zeros((size, size, 3), np.uint8)
    canvas[pad_y:pad_y + new_h, pad_x:pad_x + new_w] = resized
    return canvas, Letterbox(size, new_w / w, new_h / h, pad_x, pad_y)


def shrink_canvas(canvas: np.ndarray, box: Letterbox, size: int) -> tuple[np.ndarray, Letterbox]:
    """A letterboxed canvas resized to a smaller ``size`` (the same frame, the map scaled with it):
    one resize of the full frame serves both BlazeFace inputs."""
    r = size / box.size
    small = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA)
    return small, Letterbox(size, box.scale_x * r, box.scale_y * r, box.pad_x * r, box.pad_y * r)


def canvas_tensor(canvas: np.ndarray) -> np.ndarray:
    """BGR uint8 ``(S, S, 3)`` canvas -> float32 ``(3, S, S)`` RGB in [-1, 1] (BlazeFace's input)."""
    out = np.empty((3,) + canvas.shape[:2], np.float32)
    scale = np.float32(1 / 127.5)
    for c in range(3):  # one pass per channel (BGR -> RGB by index): the same float32 ops, ~5x faster
        np.multiply(canvas[:, :, 2 - c], scale, out=out[c], dtype=np.float32)
    out -= np.float32(1.0)
    return out


def letterbox(image_bgr: np.ndarray, size: int) -> tuple[np.ndarray, Letterbox]:
    """Fit a BGR uint8 image into a ``size x size`` model input, keeping its aspect ratio.

    Returns ``(tensor, box)``: ``tensor`` is float32 ``(3, size, size)``, RGB, in [-1, 1], the
    image centred with black (-1) bars; ``box`` maps coordinates between the two
    (:class:`Letterbox`).
    """
    canvas, box = letterbox_canvas(image_bgr, size)
    return canvas_tensor(canvas), box


# ----------------------------------------------------------------------------------------------
# Decoding and NMS
# ----------------------------------------------------------------------------------------------

def decode(regressors: np.ndarray, logits: np.ndarray, anchors: np.ndarray,
           input_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw model outputs of one image -> boxes, scores, keypoints (normalised input coords).

    ``regressors``: ``(N, 16)``; ``logits``: ``(N,)`` or ``(N, 1)``; ``anchors``: ``(N, 2)``.
    Returns ``boxes`` ``(N, 4)`` x0, y0, x1, y1 in [0, 1] units of the input square (may extend
    past it), ``scores`` ``(N,)`` in (0, 1), ``keypoints`` ``(N, 6, 2)`` normalised x, y.
    """
    reg = np.asarray(regressors, dtype=np.float32).reshape(-1, 16)
    lg = np.asarray(logits, dtype=np.float32).reshape(-1)
    if reg.shape[0] != anchors.shape[0] or lg.shape[0] != anchors.shape[0]:
        raise InputError(f"model output has {reg.shape[0]} boxes / {lg.shape[0]} scores, "
                         f"expected {anchors.shape[0]} (wrong model for this variant?)")
    inv = np.float32(1.0 / input_size)
    c = reg[:, 0:2] * inv + anchors
    half = reg[:, 2:4] * (inv * 0.5)
    boxes = np.concatenate([c - half, c + half], axis=1)
    kps = reg[:, 4:16].reshape(-1, 6, 2) * inv + anchors[:, None, :]
    scores = 1.0 / (1.0 + np.exp(-np.clip(lg.astype(np.float64), -100.0, 100.0)))
    return boxes, scores.astype(np.float32), kps


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one box ``(4,)`` with ``boxes`` ``(M, 4)`` (x0, y0, x1, y1) -> ``(M,)``."""
    ix0 = np.maximum(box[0], boxes[:, 0])
    iy0 = np.maximum(box[1], boxes[:, 1])
    ix1 = np.minimum(box[2], boxes[:, 2])
    iy1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
    area = max(box[2] - box[0], 0) * max(box[3] - box[1], 0)
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def hard_nms(boxes: np.ndarray, scores: np.ndarray, keypoints: np.ndarray, iou_threshold: float,
             max_out: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy NMS: keep the best box, drop boxes with IoU > ``iou_threshold``, repeat.

    Shapes: ``(M, 4)``, ``(M,)``, ``(M, K, 2)`` in, the kept subset (best first) out.
    """
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size and (max_out is None or len(keep) < max_out):
        i = order[0]
        keep.append(i)
        rest = order[1:]
        order = rest[iou(boxes[i], boxes[rest]) <= iou_threshold]
    k = np.asarray(keep, dtype=np.int64)
    return boxes[k], scores[k], keypoints[k]


def weighted_nms(boxes: np.ndarray, scores: np.ndarray, keypoints: np.ndarray,
                 iou_threshold: float, max_out: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MediaPipe-style weighted NMS (``algorithm: WEIGHTED``).

    Take the best remaining box; every remaining box with IoU > ``iou_threshold`` with it
    (itself included) forms its cluster; emit the score-weighted mean box and keypoints of the
    cluster with the best box's score; remove the cluster; repeat. Shapes as :func:`hard_nms`.
    """
    order = np.argsort(-scores, kind="stable")
    ob, os_, ok = [], [], []
    while order.size and (max_out is None or len(ob) < max_out):
        i = order[0]
        ov = iou(boxes[i], boxes[order])
        ov[0] = 1.0
        members = order[ov > iou_threshold]
        w = scores[members].astype(np.float64)
        w = w / w.sum()
        ob.append((boxes[members] * w[:, None]).sum(0))
        ok.append((keypoints[members] * w[:, None, None]).sum(0))
        os_.append(scores[i])
        order = order[ov <= iou_threshold]
    if not ob:
        return (np.zeros((0, 4), boxes.dtype), np.zeros((0,), scores.dtype),
                np.zeros((0,) + keypoints.shape[1:], keypoints.dtype))
    return (np.asarray(ob, boxes.dtype), np.asarray(os_, scores.dtype),
            np.asarray(ok, keypoints.dtype))


# ----------------------------------------------------------------------------------------------
# Results and the detector
# ----------------------------------------------------------------------------------------------

@dataclass
class Detections:
    """Faces found in one image, best score first, in original-image pixels.

    ``boxes``: ``(N, 4)`` float32 x0, y0, x1, y1. ``scores``: ``(N,)`` float32 in (0, 1).
    ``keypoints``: ``(N, 6, 2)`` float32 x, y in :data:`KEYPOINT_NAMES` order (right eye, left
    eye, nose tip, mouth centre, right ear, left ear; the subject's right).
    """

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))
    keypoints: np.ndarray = field(default_factory=lambda: np.zeros((0, 6, 2), np.float32))

    def __len__(self) -> int:
        return int(self.scores.shape[0])


def _default_runner(variant: str, engine: str = "onnxruntime", threads: int | None = 1) -> "Runner":
    """An active runner of ``engine`` for the shipped model of ``variant``."""
    from .runtimes import registry

    return registry.make_runner(engine, model_path(variant),
                                **registry.ENGINES[engine].runner_options(threads, None)).activate()


class FaceDetector:
    """BlazeFace face detector: BGR uint8 frame in, :class:`Detections` in image pixels out.

    Args:
        runner: object with ``infer(feed) -> dict`` for the variant's ONNX model (feed
            ``{"input": (B, 3, S, S) float32}``, returns ``regressors`` and ``classificators``),
            or a mapping ``{"short": runner, "full": runner}`` (needed by ``"auto"``); ``None``
            opens the shipped models with ONNX Runtime runners (1 thread each), which
            :meth:`close` releases.
        variant: ``"short"`` (128 px input: faces large in the frame, face crops),
            ``"full"`` (192 px: small / distant faces), ``"auto"`` (default: short range, full range
            only when short range finds no face or only faces narrower than
            :attr:`FULL_RANGE_BELOW` of the frame: one network pass on webcam-like frames) or ``"both"``
            (both on the whole frame, merged by one NMS). Measured on the shared photos (see
            ``training/detector_recall.py``): the short-range model alone finds about half of
            the >= 40 px faces in 500 px group photos, the full-range model alone finds only
            about a quarter of the faces in tight face crops (UTKFace 200 px); together they find
            both (at the cost of running both networks).
        score_threshold: minimum face score in (0, 1); default: MediaPipe's per-model value
            (0.5 short, 0.6 full).
        iou_threshold: NMS overlap threshold (MediaPipe: 0.3).
        max_faces: at most this many detections (best first).
        nms: ``"weighted"`` (MediaPipe's, default) or ``"hard"``.
        min_face: ``None`` (default) or the smallest face side, in image pixels, that must be
            found in large frames. A 192 px model sees a 4000 px frame at 1/20 scale and misses
            faces under ~200 px; with ``min_face`` set, the full-range model also runs on a
            pyramid of overlapping tiles (see :meth:`detect`). Costs one network pass per tile.
        tile_batch: tiles per runner call (bounds the batch a runner must accept).
    """

    #: a tile is this many times ``min_face`` wide: the full-range model finds faces down to
    #: about 1/19 of its input side reliably (measured), so a face of ``min_face`` px lands at
    #: ~12 px in the 192 px input.
    TILE_FACTOR = 16
    #: ``auto`` runs the full-range model too when the short-range model finds no face wider than
    #: this fraction of the frame's shorter side. Measured on the shared photos
    #: (``training/detector_recall.py``): where short range misses faces of a group photo, the
    #: faces it does find are 0.19-0.28 of the shorter side (0.28: 2008_007676, whose other six faces
    #: only the full-range model finds); a face 1 m from a 720p webcam is ~0.4-0.47.
    FULL_RANGE_BELOW = 0.30

    def __init__(self, runner: "Runner | Mapping[str, Runner] | None" = None, variant: str = "auto",
                 score_threshold: float | None = None, iou_threshold: float = 0.3,
                 max_faces: int = 64, nms: str = "weighted", min_face: int | None = None,
                 tile_batch: int = 16):
        if variant not in VARIANTS:
            raise InputError(f"unknown detector variant {variant!r}; use one of {list(VARIANTS)}")
        if nms not in ("weighted", "hard"):
            raise InputError(f"unknown nms {nms!r}; use 'weighted' or 'hard'")
        if score_threshold is not None and not 0.0 < score_threshold < 1.0:
            raise InputError(f"score_threshold must be in (0, 1), got {score_threshold}")
        if not 0.0 < iou_threshold <= 1.0:
            raise InputError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
        if max_faces < 1:
            raise InputError(f"max_faces must be >= 1, got {max_faces}")
        if min_face is not None and min_face < 8:
            raise InputError(f"min_face must be >= 8 px (or None), got {min_face}")
        if tile_batch < 1:
            raise InputError(f"tile_batch must be >= 1, got {tile_batch}")
        self.variant = variant
        self.score_threshold = score_threshold
        self.iou_threshold = float(iou_threshold)
        self.max_faces = int(max_faces)
        self.nms = nms
        self.min_face = None if min_face is None else int(min_face)
        self.tile_batch = int(tile_batch)
        needed = ["short", "full"] if variant in ("auto", "both") else [variant]
        if self.min_face is not None and "full" not in needed:
            needed.append("full")  # tiles run the full-range model
        self._whole = ["short", "full"] if variant in ("auto", "both") else [variant]
        self.passes: list[str] = []  # the models the last detect() ran on the whole frame
        self._runners: dict[str, Runner] = {}
        self._owned: list[Runner] = []
        for v in needed:
            if runner is None:
                r = _default_runner(v)
                self._owned.append(r)
            elif isinstance(runner, Mapping):
                if v not in runner:
                    raise InputError(f"this configuration needs a runner for {v!r}; pass "
                                     "{'short': runner, 'full': runner}")
                r = runner[v]
            else:
                if len(needed) > 1:
                    raise InputError(f"variant {variant!r} (min_face={min_face}) runs several "
                                     "models: pass {'short': runner, 'full': runner}")
                r = runner
            self._runners[v] = r

    @property
    def runners(self) -> "dict[str, Runner]":
        """The runner of each variant this detector uses."""
        return dict(self._runners)

    def close(self) -> None:
        """Deactivate the runners this detector opened itself (``runner=None``)."""
        for r in self._owned:
            if getattr(r, "is_active", False):
                r.deactivate()

    # -- network passes ---------------------------------------------------------------------
    def _threshold(self, v: str) -> float:
        return (self.score_threshold if self.score_threshold is not None
                else MODELS[v].default_score_threshold)

    def _run(self, v: str, tensors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self._runners[v].infer({INPUT_NAME: tensors})
        try:
            return np.asarray(out[OUTPUT_REGRESSORS]), np.asarray(out[OUTPUT_SCORES])
        except KeyError as exc:
            raise InputError(f"runner returned {sorted(out)}, expected "
                             f"{OUTPUT_REGRESSORS!r} and {OUTPUT_SCORES!r}") from exc

    def _decode_to_image(self, v: str, reg, cls, lb: Letterbox, scale: float = 1.0,
                         offset: tuple[float, float] = (0.0, 0.0)):
        """Decoded candidates over threshold, in original-image pixels (before NMS).

        ``lb`` maps the (tile of the) level image to the input; ``offset`` is the tile's corner
        in level pixels and ``scale`` the level's size relative to the original image.
        """
        spec = MODELS[v]
        boxes, scores, kps = decode(reg, cls, generate_anchors(spec), spec.input_size)
        m = scores >= self._threshold(v)
        s = spec.input_size
        off = np.asarray(offset, np.float64)
        b = (lb.to_image(boxes[m].reshape(-1, 2, 2) * s) + off) / scale
        k = (lb.to_image(kps[m] * s) + off) / scale
        return b.reshape(-1, 4).astype(np.float32), scores[m], k.astype(np.float32)

    def _whole_frame(self, v: str, inputs: dict[str, tuple[np.ndarray, Letterbox]]):
        canvas, lb = inputs[v]
        reg, cls = self._run(v, canvas_tensor(canvas)[None])
        self.passes.append(v)
        return self._decode_to_image(v, reg[0], cls[0], lb)

    def _inputs(self, image: np.ndarray) -> dict[str, tuple[np.ndarray, Letterbox]]:
        """The whole-frame canvas of each model this variant may run, from one resize of the frame
        (the largest input; smaller ones are resized from that canvas)."""
        sizes = sorted(self._whole, key=lambda v: -MODELS[v].input_size)
        first = letterbox_canvas(image, MODELS[sizes[0]].input_size)
        out = {sizes[0]: first}
        for v in sizes[1:]:
            out[v] = shrink_canvas(first[0], first[1], MODELS[v].input_size)
        return out

    def tile_plan(self, height: int, width: int) -> list[tuple[float, int, int, int]]:
        """The tiles :meth:`detect` runs for a ``height x width`` frame when ``min_face`` is set.

        Returns ``(scale, x0, y0, side)`` per tile: the frame is resized by ``scale`` (1, 1/2,
        1/4, ... an image pyramid) and the square ``side`` px tile at ``(x0, y0)`` of that level
        is one network input. Tiles are ``TILE_FACTOR * min_face`` px and overlap by at least a
        quarter of their side (>= 4 * min_face, more than the 2 * min_face largest face a level
        is responsible for: bigger faces are whole in a tile of a coarser level). The pyramid
        stops when a level fits in one tile; the whole-frame pass covers the rest.
        """
        if self.min_face is None:
            return []
        side = self.TILE_FACTOR * self.min_face
        plan = []
        scale = 1.0
        while True:
            lw, lh = int(round(width * scale)), int(round(height * scale))
            if max(lw, lh) <= side:
                break
            stride = side - side // 4

            def starts(n: int) -> list[int]:
                if n <= side:
                    return [0]
                k = math.ceil((n - side) / stride) + 1
                return [int(round(i * (n - side) / (k - 1))) for i in range(k)]

            for y0 in starts(lh):
                for x0 in starts(lw):
                    plan.append((scale, x0, y0, side))
            scale /= 2
        return plan

    def _tiles(self, image: np.ndarray):
        h, w = image.shape[:2]
        plan = self.tile_plan(h, w)
        levels: dict[float, np.ndarray] = {}
        spec = MODELS["full"]
        parts = []
        for i in range(0, len(plan), self.tile_batch):
            chunk = plan[i:i + self.tile_batch]
            tensors, meta = [], []
            for scale, x0, y0, side in chunk:
                if scale not in levels:
                    levels[scale] = image if scale == 1.0 else cv2.resize(
                        image, (int(round(w * scale)), int(round(h * scale))),
                        interpolation=cv2.INTER_AREA)
                t, lb = letterbox(levels[scale][y0:y0 + side, x0:x0 + side], spec.input_size)
                tensors.append(t)
                meta.append((lb, scale, (float(x0), float(y0))))
            reg, cls = self._run("full", np.stack(tensors))
            for j, (lb, scale, off) in enumerate(meta):
                parts.append(self._decode_to_image("full", reg[j], cls[j], lb, scale, off))
        return parts

    # -- public ------------------------------------------------------------------------------
    def detect(self, image_bgr: np.ndarray) -> Detections:
        """Find faces in one ``(H, W, 3)`` uint8 BGR image (any size).

        ``auto`` runs the short-range model on one resize of the frame to its input, and the
        full-range model (on its own resize) only when short range finds no face or only small
        ones (:attr:`FULL_RANGE_BELOW`); ``both`` runs both on one resize of the frame (to the
        larger input, shrunk for the smaller) and merges them; ``short`` / ``full`` run one model. With
        ``min_face`` set and a frame larger than one tile, the full-range model also runs on the
        tiles of :meth:`tile_plan`. All candidates are merged by one NMS. Returns at most
        ``max_faces`` detections, best first, in image pixels; empty when there is no face.
        Raises :class:`~smirk_edge.errors.InputError` for anything but an ``(H, W, 3)`` uint8
        array (grey / BGRA frames must be converted by the caller).
        """
        img = _check_image(image_bgr)
        self.passes = []
        if self.variant == "auto":
            # the short-range canvas straight from the frame: the common case (one large face) pays
            # one small resize (a 720p frame to 128 x 72 costs a third of the resize to 192 x 108);
            # the full-range canvas is made only when that model runs
            parts = [self._whole_frame("short", {"short": letterbox_canvas(img, MODELS["short"].input_size)})]
            boxes = parts[0][0]
            widest = float((boxes[:, 2] - boxes[:, 0]).max()) if len(boxes) else 0.0
            if widest < self.FULL_RANGE_BELOW * min(img.shape[:2]):  # none, or small: a distant scene
                parts.append(self._whole_frame("full", {"full": letterbox_canvas(img, MODELS["full"].input_size)}))
        else:
            inputs = self._inputs(img)
            parts = [self._whole_frame(v, inputs) for v in self._whole]
        if self.min_face is not None:
            parts += self._tiles(img)
        scores = np.concatenate([p[1] for p in parts])
        if scores.size == 0:
            return Detections()
        boxes = np.concatenate([p[0] for p in parts])
        kps = np.concatenate([p[2] for p in parts])
        nms = weighted_nms if self.nms == "weighted" else hard_nms
        b, s, k = nms(boxes, scores, kps, self.iou_threshold, self.max_faces)
        return Detections(b.astype(np.float32), s.astype(np.float32), k.astype(np.float32))

    __call__ = detect

    #: at most this many canvases per runner call in :meth:`detect_many`
    MANY_BATCH = 64

    def detect_many(self, images: "list[np.ndarray]") -> list[Detections]:
        """:meth:`detect` of several images with one network pass per model and chunk of
        :attr:`MANY_BATCH` canvases (``auto``: the short-range model on every image, then the
        full-range model on the images that need it, together). The same detections as
        :meth:`detect` image by image (up to the engine's batch rounding); with ``min_face`` set
        (tiles) each image is detected on its own."""
        imgs = [_check_image(im) for im in images]
        if self.min_face is not None or len(imgs) <= 1:
            return [self.detect(im) for im in imgs]
        passes: list[str] = []
        parts: list[list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = [[] for _ in imgs]

        shared: dict[int, dict[str, tuple[np.ndarray, Letterbox]]] = {}

        def canvas(i: int, v: str) -> tuple[np.ndarray, Letterbox]:
            if self.variant == "auto":  # each model's canvas straight from the frame, as detect()
                return letterbox_canvas(imgs[i], MODELS[v].input_size)
            if i not in shared:  # both: one resize of the frame, shrunk for the smaller input
                shared[i] = self._inputs(imgs[i])
            return shared[i][v]

        def run(v: str, idx: list[int]) -> None:
            for a in range(0, len(idx), self.MANY_BATCH):
                chunk = idx[a:a + self.MANY_BATCH]
                canvases = [canvas(i, v) for i in chunk]
                reg, cls = self._run(v, np.stack([canvas_tensor(c) for c, _ in canvases]))
                for j, (i, (_, lb)) in enumerate(zip(chunk, canvases)):
                    parts[i].append(self._decode_to_image(v, reg[j], cls[j], lb))
            passes.append(v)

        everyone = list(range(len(imgs)))
        if self.variant == "auto":
            run("short", everyone)
            far = []
            for i, im in enumerate(imgs):
                boxes = parts[i][0][0]
                widest = float((boxes[:, 2] - boxes[:, 0]).max()) if len(boxes) else 0.0
                if widest < self.FULL_RANGE_BELOW * min(im.shape[:2]):
                    far.append(i)
            if far:
                run("full", far)
        else:
            for v in self._whole:
                run(v, everyone)
        self.passes = passes
        nms = weighted_nms if self.nms == "weighted" else hard_nms
        out = []
        for p in parts:
            scores = np.concatenate([q[1] for q in p])
            if scores.size == 0:
                out.append(Detections())
                continue
            b, sc, k = nms(np.concatenate([q[0] for q in p]), scores, np.concatenate([q[2] for q in p]),
                           self.iou_threshold, self.max_faces)
            out.append(Detections(b.astype(np.float32), sc.astype(np.float32), k.astype(np.float32)))
        return out

    def detect_region(self, image_bgr: np.ndarray) -> Detections:
        """Faces in a small region around an expected face (a tracker's check): the short-range
        model alone, once, on the whole letterboxed region; same output as :meth:`detect`."""
        img = _check_image(image_bgr)
        variant = "short" if "short" in self._runners else next(iter(self._runners))
        canvas = letterbox_canvas(img, MODELS[variant].input_size)
        self.passes = []  # (reset per call, as detect() does: it must not grow over a long stream)
        boxes, scores, kps = self._whole_frame(variant, {variant: canvas})
        if scores.size == 0:
            return Detections()
        nms = weighted_nms if self.nms == "weighted" else hard_nms
        b, s, k = nms(boxes, scores, kps, self.iou_threshold, self.max_faces)
        return Detections(b.astype(np.float32), s.astype(np.float32), k.astype(np.float32))


def open_detector(bundle: Any, engine: str | None = None, threads: int | None = None, variant: str = "auto",
                  score_threshold: float | None = None, max_faces: int = 64, device: str | None = None) -> FaceDetector:
    """A :class:`FaceDetector` on real runners: the bundle's ``detector`` artifacts (else the models
    shipped in ``smirk_edge/assets``) opened with ``engine`` (default: the first installed of
    OpenVINO and ONNX Runtime, :func:`smirk_edge.runtimes.registry.detector_engine`).
    ``engine="torch"`` with a CUDA ``device`` runs the same ONNX files with torch on that GPU
    (:class:`~smirk_edge.runtimes.onnx_torch.OnnxTorchRunner`, one CUDA graph per input shape).
    The detector's :meth:`FaceDetector.close` releases the runners."""
    from .runtimes import registry

    on_gpu = engine == "torch" and device is not None and str(device).startswith("cuda")
    engine = "torch" if on_gpu else registry.detector_engine(engine)
    arts = {a.attrs.get("variant", a.name): a for a in bundle.find(role="detector")} if bundle is not None else {}
    runners = {}
    for v in MODELS:
        path = bundle.main_path(arts[v]) if v in arts else model_path(v)
        if on_gpu:
            from .runtimes.onnx_torch import OnnxTorchRunner

            runners[v] = OnnxTorchRunner(path, device=str(device)).activate()
            continue
        runners[v] = registry.make_runner(engine, path, **registry.ENGINES[engine].runner_options(threads, None)).activate()
    det = FaceDetector(runners, variant=variant, score_threshold=score_threshold, max_faces=max_faces)
    det._owned = list(runners.values())
    return det
