"""The frame pipeline as named stages: one mostly pure function per stage, arrays in, arrays out.

=========  ===========================  =====================================================
stage      function                     in -> out
=========  ===========================  =====================================================
detect     :func:`detect`               BGR frame -> :class:`Detected` (landmark boxes, scores,
                                        in-image roll from the eye keypoints)
crop       :func:`crop`                 frame + boxes (+ rolls) -> :class:`Crops` (crop
                                        transforms and the encoder batch ``(B, 3, S, S)``)
encode     :func:`encode`               batch -> parameter arrays ``{"pose": (B, 3), ...}``
decode     :func:`decode`               parameters -> :class:`~smirk_edge.face_model.FaceGeometry`
                                        (model frame, metres)
project    :func:`project`              geometry + model->image affines -> :class:`Projected`
                                        (image pixels); :func:`image_affines` makes the affines
refine     :func:`refine`               first pass -> landmark boxes and rolls for the second crop
smooth     :func:`smooth`               one track's filters + parameters + affine -> smoothed ones
assemble   :func:`assemble`             everything above -> ``list[Face]``
=========  ===========================  =====================================================

Tracking (``track`` in the design) is :class:`smirk_edge.tracking.Tracker`, built on these stages.
:class:`Stages` binds the resources a stage needs (detector, encoder runner, face model, crop
policy) so that :class:`~smirk_edge.Reconstructor` and the tracker compose the same calls.

:meth:`Stages.faces` decodes and projects nothing itself: its faces read their geometry from a
:class:`FrameGeometry` (the frame's :func:`decode` and :func:`project`, each part computed when a
face first reads it), so a caller that wants the parameters alone pays for no mesh, and one that
wants landmarks pays for no projected vertices.

Every function here takes and returns numpy arrays and plain records, so a torch implementation
(upload once, crop with ``grid_sample`` from the same crop matrices, encode, decode, project) can
mirror it stage by stage.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Protocol, Sequence, Union, cast

import numpy as np

from .crop import (CROP_SIZE, DEFAULT_SCALE, DETECTOR_TO_LANDMARK_BOX, INPUT_NAME, LANDMARK105_TO_LANDMARK_BOX, CropTransform,
                   preprocess, square_from_box, transform_from_square)
from .errors import InputError, SmirkEdgeError
from .face_model import FaceGeometry, FaceModel
from .face_model.model import rodrigues, yaw_degrees
from .results import PARAM_WIDTHS, DeferredRow, Face, Params

__all__ = [
    "CropPolicy", "Crops", "Detected", "FrameGeometry", "FrameView", "Projected", "StageTimer", "Stages",
    "detect", "detect_many", "crop", "crop_transforms", "encode", "decode", "image_affines", "project", "head_poses",
    "landmark_boxes", "refine", "box_disagreement", "smooth", "assemble",
]


# ---------------------------------------------------------------------------------------------- records
Rolls = Union[np.ndarray, Sequence[float], None]
"""In-image roll per face, degrees counter-clockwise (None: every crop upright)."""


class Detector(Protocol):
    """What :func:`detect` needs: ``detect(image) -> Detections`` (see :mod:`smirk_edge.detector`)."""

    def detect(self, image_bgr: np.ndarray) -> Any: ...


class EncoderRunner(Protocol):
    """What :func:`encode` needs: the :class:`smirk_edge.runtimes.Runner` contract's ``infer``."""

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class CropPolicy:
    """SMIRK's crop policy as the bundle's metadata states it (``crop_policy``, ``input``).

    Attributes:
        scale: square side = mean box side * ``scale`` (1.4 in SMIRK's demo).
        size: crop side in pixels, the encoder's input size (224).
        align_roll: faces rolled more than this (degrees, in the image) get a crop rotated upright;
            None keeps every crop upright.
    """

    scale: float = DEFAULT_SCALE
    size: int = CROP_SIZE
    align_roll: float | None = 15.0


@dataclass
class Detected:
    """Output of :func:`detect`, largest face first.

    ``boxes`` ``(N, 4)`` x0, y0, x1, y1 image pixels: the landmark box SMIRK's crop expects (mapped
    from the detector box); ``scores`` ``(N,)`` in (0, 1); ``rolls`` ``(N,)`` degrees
    counter-clockwise in the image, from the eye keypoints.
    """

    boxes: np.ndarray
    scores: np.ndarray
    rolls: np.ndarray

    def __len__(self) -> int:
        return int(self.scores.shape[0])


@dataclass
class Crops:
    """Output of :func:`crop`: one transform per face and the encoder batch ``(B, 3, S, S)`` RGB [0, 1]."""

    transforms: list[CropTransform]
    batch: np.ndarray

    def __len__(self) -> int:
        return len(self.transforms)


@dataclass
class Projected:
    """Output of :func:`project`, image pixels.

    ``affines`` ``(B, 2, 3)``: model-frame (X, Y) metres -> image pixels; ``vertices`` ``(B, V, 3)``
    x, y and depth (pixels, smaller = nearer); ``landmarks68`` ``(B, 68, 2)``; ``landmarks105``
    ``(B, 105, 2)``.
    """

    affines: np.ndarray
    vertices: np.ndarray
    landmarks68: np.ndarray
    landmarks105: np.ndarray


@dataclass
class StageTimer:
    """Per-stage milliseconds of one call; ``with timer("encode"): ...`` adds to a stage."""

    ms: dict[str, float] = field(default_factory=dict)
    start: float = field(default_factory=time.perf_counter)

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.ms[stage] = self.ms.get(stage, 0.0) + (time.perf_counter() - t0) * 1e3

    def finish(self) -> dict[str, float]:
        """The timings with ``total`` (since the timer was made) filled in."""
        self.ms["total"] = (time.perf_counter() - self.start) * 1e3
        return self.ms


# ---------------------------------------------------------------------------------------------- stages
def detect(detector: Detector, image: np.ndarray, max_faces: int) -> Detected:
    """Stage *detect*: faces of one BGR uint8 frame, the ``max_faces`` largest, as landmark boxes."""
    return _detected(detector.detect(image), max_faces)


def _detected(det: Any, max_faces: int) -> Detected:
    order = np.argsort(-((det.boxes[:, 2] - det.boxes[:, 0]) * (det.boxes[:, 3] - det.boxes[:, 1])))[:max_faces]
    boxes = np.array([DETECTOR_TO_LANDMARK_BOX.apply(b) for b in det.boxes[order]]).reshape(-1, 4)
    eyes = det.keypoints[order][:, 1] - det.keypoints[order][:, 0]  # subject's right eye -> left eye
    rolls = np.degrees(np.arctan2(-eyes[:, 1], eyes[:, 0])) if len(order) else np.zeros(0)
    return Detected(boxes, det.scores[order], rolls)


def detect_many(detector: Detector, images: Sequence[np.ndarray], max_faces: int) -> list[Detected]:
    """Stage *detect* of several frames: the detector's ``detect_many`` (one network pass per model
    for all of them) when it has one, else :func:`detect` frame by frame."""
    many = getattr(detector, "detect_many", None)
    if many is None:
        return [detect(detector, im, max_faces) for im in images]
    return [_detected(d, max_faces) for d in many(list(images))]


def _upright_matrices(boxes: np.ndarray, scale: float, size: int) -> np.ndarray:
    """``(B, 2, 3)`` :func:`~smirk_edge.crop.crop_from_box` matrices of ``(B, 4)`` boxes at once (the same
    float64 operations, so the same values); a bad box raises its error as ``crop_from_box`` does."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    x0, y0, x1, y1 = b.T
    with np.errstate(invalid="ignore", over="ignore"):
        side = ((x1 - x0) + (y1 - y0)) / 2.0 * scale
        bad = ~(np.isfinite(b).all(1) & (x1 > x0) & (y1 > y0) & (side >= 1))
    if bad.any():
        square_from_box(b[int(np.flatnonzero(bad)[0])], scale)  # raises InputError, worded as for one box
    k = (size - 1) / np.trunc(side)
    half = (size - 1) / 2.0
    m = np.zeros((len(b), 2, 3))
    m[:, 0, 0] = m[:, 1, 1] = k
    m[:, 0, 2] = half - k * (x1 - (x1 - x0) / 2.0)
    m[:, 1, 2] = half - k * (y1 - (y1 - y0) / 2.0)
    return m


def crop_transforms(boxes: np.ndarray, rolls: Rolls, policy: CropPolicy) -> list[CropTransform]:
    """SMIRK's crop of each landmark box, rotated upright where the face is rolled past ``policy.align_roll``
    (the upright ones computed together: a batch of hundreds of faces costs a few microseconds a face)."""
    angles = np.zeros(len(boxes)) if rolls is None else np.asarray(rolls, np.float64)
    upright = np.ones(len(boxes), bool) if policy.align_roll is None else np.abs(angles) < policy.align_roll
    mats = _upright_matrices(np.asarray(boxes)[upright], policy.scale, policy.size) if upright.any() \
        else np.zeros((0, 2, 3))
    out, j = [], 0
    for box, roll, up in zip(boxes, angles, upright):
        if up:
            out.append(CropTransform(mats[j], policy.size))
            j += 1
        else:
            centre, side = square_from_box(box, policy.scale)
            out.append(transform_from_square(centre, side, policy.size, float(roll)))
    return out


def crop(image: np.ndarray, boxes: np.ndarray, rolls: Rolls, policy: CropPolicy) -> Crops:
    """Stage *crop*: the crop transforms of ``boxes`` and the encoder batch cut from ``image``."""
    transforms = crop_transforms(boxes, rolls, policy)
    return Crops(transforms, preprocess(image, transforms, policy.size))


def encode(runner: EncoderRunner, batch: np.ndarray, input_name: str = INPUT_NAME,
           widths: Mapping[str, int] = PARAM_WIDTHS) -> dict[str, np.ndarray]:
    """Stage *encode*: ``(B, 3, S, S)`` float32 crops -> parameter arrays ``{name: (B, width)}``.

    Raises :class:`SmirkEdgeError` when the engine returns NaN/inf.
    """
    if batch.shape[0] == 0:
        return {k: np.zeros((0, w), np.float32) for k, w in widths.items()}
    out = runner.infer({input_name: np.ascontiguousarray(batch, np.float32)})
    for k, v in out.items():
        if not np.all(np.isfinite(v)):
            raise SmirkEdgeError(f"the encoder produced NaN/inf in {k!r} ({getattr(runner, 'name', runner)}); "
                                 "run 'smirk-edge selftest' on this bundle")
    return out


def decode(face_model: FaceModel, params: Mapping[str, np.ndarray]) -> FaceGeometry:
    """Stage *decode*: parameters -> vertices and landmarks, model frame (metres)."""
    return face_model.decode(shape=params["shape"], expression=params["expression"], pose=params["pose"],
                             jaw=params["jaw"], eyelid=params["eyelid"])


def image_affines(cam: np.ndarray, crop_matrices: Sequence[np.ndarray], size: int = CROP_SIZE) -> np.ndarray:
    """``(B, 2, 3)`` affines taking model-frame (X, Y) metres to image pixels, one per face.

    SMIRK's camera (:mod:`smirk_edge.camera`: crop pixels ``((s(X+tx), -s(Y+ty)) + 1) * size/2``)
    composed with the inverse of each ``(2, 3)`` image -> crop matrix.
    """
    # every face at once: the camera is diagonal in (X, Y) (camera.model_to_crop_affine), the crop
    # inverted in closed form as cv2.invertAffineTransform does
    c = np.asarray(cam, np.float64).reshape(-1, 3)
    m = np.asarray(crop_matrices, np.float64).reshape(-1, 2, 3)
    n = min(len(c), len(m))
    c, m = c[:n], m[:n]
    h = size / 2.0
    s, tx, ty = c[:, 0], c[:, 1], c[:, 2]
    sx, sy, ox, oy = h * s, -h * s, h * (s * tx + 1.0), h * (1.0 - s * ty)  # crop px = (sx X + ox, sy Y + oy)
    det = m[:, 0, 0] * m[:, 1, 1] - m[:, 0, 1] * m[:, 1, 0]
    with np.errstate(divide="ignore"):
        d = np.where(det != 0, 1.0 / np.where(det != 0, det, 1.0), 0.0)
    a11, a22, a12, a21 = m[:, 1, 1] * d, m[:, 0, 0] * d, -m[:, 0, 1] * d, -m[:, 1, 0] * d
    b1 = -a11 * m[:, 0, 2] - a12 * m[:, 1, 2]
    b2 = -a21 * m[:, 0, 2] - a22 * m[:, 1, 2]
    out = np.zeros((n, 2, 3))
    out[:, 0, 0], out[:, 0, 1], out[:, 1, 0], out[:, 1, 1] = a11 * sx, a12 * sy, a21 * sx, a22 * sy
    out[:, 0, 2] = a11 * ox + a12 * oy + b1
    out[:, 1, 2] = a21 * ox + a22 * oy + b2
    return out


def to_image(points: np.ndarray, affines: np.ndarray) -> np.ndarray:
    """Model-frame points ``(B, N, 2+)`` metres -> image pixels ``(B, N, 2)`` float32 through ``affines`` ``(B, 2, 3)``."""
    A = np.asarray(affines, np.float64)
    return (np.einsum("bnk,bjk->bnj", points[..., :2], A[:, :, :2]) + A[:, None, :, 2]).astype(np.float32)


def vertices_to_image(vertices: np.ndarray, affines: np.ndarray) -> np.ndarray:
    """Model-frame vertices ``(B, V, 3)`` -> image x, y and depth ``(B, V, 3)`` float32 (depth ``-k * Z``,
    ``k`` the affine's pixels per metre)."""
    A = np.asarray(affines, np.float64)
    k = np.sqrt(np.abs(np.linalg.det(A[:, :, :2])))[:, None, None]  # image pixels per metre
    return np.concatenate([to_image(vertices, A), (-k * vertices[..., 2:3])], axis=-1).astype(np.float32)


def project(geometry: FaceGeometry, affines: np.ndarray) -> Projected:
    """Stage *project*: model-frame geometry -> image pixels through per-face ``affines`` ``(B, 2, 3)``.

    Depth is ``-k * Z`` with ``k`` the affine's pixels per metre (orthographic, smaller = nearer).
    """
    A = np.asarray(affines, np.float64)
    return Projected(A, vertices_to_image(geometry.vertices, A), to_image(geometry.landmarks68, A),
                     to_image(geometry.landmarks105, A))


class FrameGeometry:
    """One frame's :func:`decode` and :func:`project`, each part computed when it is first read.

    ``params``: the decode's inputs (copied: the encoder may reuse its output buffers); ``affines``
    ``(B, 2, 3)`` model -> image; ``geometry``: an existing decode of ``params``, or a view of
    another :class:`FrameGeometry` of the same parameters (e.g. the refine check's) whose decode is
    shared; else decoded on first need. :attr:`model_frame` reads like a
    :class:`~smirk_edge.face_model.FaceGeometry`, :attr:`image_frame` like a :class:`Projected`;
    :func:`assemble` gives its faces deferred fields on them. Thread-safe; each part is computed once.
    """

    def __init__(self, face_model: FaceModel, params: Mapping[str, np.ndarray], affines: np.ndarray,
                 geometry: "FaceGeometry | FrameView | None" = None):
        self.face_model = face_model
        self.params = {k: np.array(params[k], copy=True) for k in ("shape", "expression", "pose", "jaw", "eyelid")}
        self.affines = np.array(affines, np.float64)
        self._source = geometry.frame if isinstance(geometry, FrameView) else None
        self._geometry = None if isinstance(geometry, FrameView) else geometry
        self._image: dict[str, np.ndarray] = {}
        self._lock = threading.RLock()
        self.model_frame = FrameView(self, image=False)
        self.image_frame = FrameView(self, image=True)

    @property
    def decoded(self) -> bool:
        """True once the frame's parameters are decoded."""
        return self._geometry is not None or (self._source is not None and self._source.decoded)

    @property
    def projected_parts(self) -> tuple[str, ...]:
        """The parts projected so far."""
        return tuple(self._image)

    def geometry(self) -> FaceGeometry:
        """The frame's :func:`decode` (computed on the first call)."""
        with self._lock:
            if self._geometry is None:
                self._geometry = self._source.geometry() if self._source is not None else decode(self.face_model,
                                                                                                  self.params)
            return self._geometry

    def projected(self, part: str) -> np.ndarray:
        """One part of the frame's :func:`project`: ``vertices`` ``(B, V, 3)``, ``landmarks68``
        ``(B, 68, 2)`` or ``landmarks105`` ``(B, 105, 2)``, image pixels."""
        with self._lock:
            if part not in self._image:
                g = getattr(self.geometry(), part)
                self._image[part] = vertices_to_image(g, self.affines) if part == "vertices" else to_image(g, self.affines)
            return self._image[part]


class FrameView:
    """``vertices`` / ``landmarks68`` / ``landmarks105`` of a :class:`FrameGeometry`: the model
    frame (``image=False``, metres) or the image (``image=True``, pixels), computed when read."""

    def __init__(self, frame: FrameGeometry, image: bool):
        self.frame, self.image = frame, image

    @property
    def affines(self) -> np.ndarray:
        return self.frame.affines

    def part(self, name: str) -> np.ndarray:
        return self.frame.projected(name) if self.image else getattr(self.frame.geometry(), name)

    @property
    def vertices(self) -> np.ndarray:
        return self.part("vertices")

    @property
    def landmarks68(self) -> np.ndarray:
        return self.part("landmarks68")

    @property
    def landmarks105(self) -> np.ndarray:
        return self.part("landmarks105")


def head_poses(pose: np.ndarray, crop_matrices: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """``(B, 3)`` yaw, pitch, roll degrees in the image frame (each crop's own rotation composed in):
    :func:`~smirk_edge.results.head_pose_degrees` of every face at once."""
    m = np.asarray(crop_matrices, np.float64).reshape(-1, 2, 3)
    if not len(m):
        return np.zeros((0, 3), np.float32)
    R = rodrigues(np.asarray(pose, np.float32).reshape(-1, 3)).astype(np.float64)
    a = np.radians(np.degrees(np.arctan2(m[:, 1, 0], m[:, 0, 0])))  # each crop's roll, as crop_roll_degrees
    c, s = np.cos(a), np.sin(a)
    Rz = np.zeros((len(m), 3, 3))
    Rz[:, 0, 0], Rz[:, 0, 1], Rz[:, 1, 0], Rz[:, 1, 1], Rz[:, 2, 2] = c, -s, s, c, 1.0
    R = np.where((a != 0)[:, None, None], Rz @ R, R)
    pitch = np.arcsin(np.clip(-R[:, 1, 2], -1.0, 1.0))
    yaw = np.arctan2(R[:, 0, 2], R[:, 2, 2])
    roll = np.arctan2(R[:, 1, 0], R[:, 1, 1])
    return np.degrees(np.stack([yaw, pitch, roll], axis=1)).astype(np.float32)


def landmark_boxes(landmarks105: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """``(B, 4)`` boxes SMIRK's crop expects, from predicted 105-landmark image positions ``(B, 105, 2)``
    and the crop-frame head rotation ``pose (B, 3)`` (FLAME yaw widens the box on turned heads)."""
    lm = np.asarray(landmarks105, np.float64).reshape(-1, 105, 2)
    if not len(lm):
        return np.zeros((0, 4), np.float64)
    yaws = yaw_degrees(rodrigues(np.asarray(pose, np.float32).reshape(-1, 3)))
    boxes = np.concatenate([lm.min(axis=1), lm.max(axis=1)], axis=1)
    return LANDMARK105_TO_LANDMARK_BOX.apply_many(boxes, yaws)


def refine(params: Mapping[str, np.ndarray], projected: Projected | FrameView,
           crops: Crops) -> tuple[np.ndarray, np.ndarray]:
    """Stage *refine*: landmark boxes ``(B, 4)`` and image rolls ``(B,)`` for the second crop, from
    the first pass's predicted landmarks and head pose (the crop policy SMIRK was trained on)."""
    matrices = [t.matrix for t in crops.transforms]
    return landmark_boxes(projected.landmarks105, params["pose"]), head_poses(params["pose"], matrices)[:, 2]


def box_disagreement(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(B,)`` 1 - IoU of two sets of boxes ``(B, 4)`` (0: the same box, 1: disjoint): how far the
    first crop's box is from the box of the landmarks it predicted (adaptive refine)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    iw = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = iw * ih
    area = lambda x: np.clip(x[:, 2] - x[:, 0], 0, None) * np.clip(x[:, 3] - x[:, 1], 0, None)  # noqa: E731
    union = area(a) + area(b) - inter
    return 1.0 - np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def smooth(filters: Mapping[str, Any], params: dict[str, np.ndarray], index: int,
           affine: np.ndarray, stamp: float | None) -> np.ndarray:
    """Stage *smooth*: filter face ``index`` of ``params`` in place (pose, shape, expression, eyelid,
    jaw) with one track's ``filters`` (objects with ``filter(x, t) -> x``: One-Euro filters, the
    identity lock for shape, :class:`~smirk_edge.smoothing.AffineFilter`); return its filtered
    model -> image ``affine`` ``(2, 3)``."""
    for k in ("pose", "shape", "expression", "eyelid", "jaw"):
        params[k][index] = filters[k].filter(params[k][index], stamp)
    return filters["affine"].filter(affine, stamp).astype(np.float64)


def _face_part(source: Any, name: str, i: int) -> np.ndarray:
    """Face ``i``'s ``name`` of a decoded or projected batch; deferred when ``source`` is a :class:`FrameView`."""
    if isinstance(source, FrameView):
        return cast(np.ndarray, DeferredRow(source, name, i))
    return getattr(source, name)[i]


class _BatchPoses:
    """The head poses of one batch (:func:`head_poses`, every face at once), computed when the first
    face reads its own (from copies of the inputs); a face's value is its row."""

    __slots__ = ("pose", "matrices", "_rows")

    def __init__(self, pose: np.ndarray, matrices: np.ndarray):
        self.pose = np.array(pose, np.float32).reshape(-1, 3)
        self.matrices = np.array(matrices, np.float64).reshape(-1, 2, 3)
        self._rows: np.ndarray | None = None

    def part(self, name: str) -> np.ndarray:
        """``(B, 3)`` degrees (``name``: ``"head_pose"``, the only part)."""
        rows = self._rows
        if rows is None:  # two threads at once compute the same rows; either result is kept
            rows = self._rows = head_poses(self.pose, self.matrices)
        return rows


def assemble(params: Mapping[str, np.ndarray], geometry: FaceGeometry | FrameView, projected: Projected | FrameView,
             crops: Crops, boxes: np.ndarray, scores: np.ndarray, triangles: np.ndarray,
             track_ids: Sequence[int] | None = None, engine: str = "") -> list[Face]:
    """The :class:`Face` records of one frame (parameters copied, arrays float32).

    ``geometry`` / ``projected``: the frame's decode and projection, or the two views of a
    :class:`FrameGeometry` (each face's geometry is then computed when first read). Head pose is
    computed when first read, for the whole batch at once.

    Per face this costs a few microseconds (``rec.batch`` of hundreds of faces on a GPU spends its
    host time here): the parameters, boxes and crop matrices are copied once for the batch and each
    face holds its rows of those copies (its own memory: no other face or caller shares a row).
    """
    matrices = np.array([tr.matrix for tr in crops.transforms], np.float64).reshape(-1, 2, 3)
    P = {k: np.array(params[k], np.float32).reshape(len(matrices), -1) for k in PARAM_WIDTHS}
    box32 = np.array(boxes, np.float32).reshape(-1, 4)
    poses = _BatchPoses(P["pose"], matrices)
    part = _face_part
    return [Face(params=Params(pose=P["pose"][i], cam=P["cam"][i], shape=P["shape"][i],
                               expression=P["expression"][i], eyelid=P["eyelid"][i], jaw=P["jaw"][i]),
                 vertices=part(geometry, "vertices", i), vertices_image=part(projected, "vertices", i),
                 landmarks68=part(projected, "landmarks68", i), landmarks105=part(projected, "landmarks105", i),
                 box=box32[i], score=float(scores[i]), head_pose=cast(np.ndarray, DeferredRow(poses, "head_pose", i)),
                 crop_matrix=matrices[i], faces=triangles,
                 track_id=-1 if track_ids is None else int(track_ids[i]), engine=engine)
            for i in range(len(matrices))]


# ---------------------------------------------------------------------------------------------- composition
@dataclass
class Stages:
    """The stages bound to one model: the detector, the encoder runner, the face model and the crop
    policy. :class:`~smirk_edge.Reconstructor` and :class:`~smirk_edge.tracking.Tracker` compose these
    calls; each method times itself into the given :class:`StageTimer`."""

    detector: Detector
    encoder: EncoderRunner
    face_model: FaceModel
    policy: CropPolicy
    max_faces: int = 8
    input_name: str = INPUT_NAME
    widths: Mapping[str, int] = field(default_factory=lambda: dict(PARAM_WIDTHS))
    engine: str = ""

    def detect(self, image: np.ndarray, timer: StageTimer) -> Detected:
        with timer("detect"):
            return detect(self.detector, image, self.max_faces)

    def detect_many(self, images: Sequence[np.ndarray], timer: StageTimer) -> list[Detected]:
        """Stage *detect* of several frames at once (``Reconstructor.batch``)."""
        with timer("detect"):
            return detect_many(self.detector, images, self.max_faces)

    def encode_crops(self, image: np.ndarray, boxes: np.ndarray, rolls: Rolls,
                     timer: StageTimer, policy: CropPolicy | None = None) -> tuple[Crops, dict[str, np.ndarray]]:
        """Stages *crop* and *encode* of one pass."""
        crops = self.crop_frame(image, boxes, rolls, timer, policy)
        return crops, self.encode_batch(crops.batch, timer)

    def crop_frame(self, image: np.ndarray, boxes: np.ndarray, rolls: Rolls, timer: StageTimer,
                   policy: CropPolicy | None = None) -> Crops:
        """Stage *crop* of one frame."""
        with timer("crop"):
            return crop(image, boxes, rolls, policy or self.policy)

    def crop_frames(self, images: Sequence[np.ndarray], owner: np.ndarray, boxes: np.ndarray, rolls: Rolls,
                    timer: StageTimer, policy: CropPolicy | None = None) -> Crops:
        """Stage *crop* of the faces of several frames: ``owner`` ``(N,)`` is each face's frame (sorted, so
        the batch keeps the faces' order), ``boxes`` ``(N, 4)`` and ``rolls`` theirs; one batch of all."""
        rl = None if rolls is None else np.asarray(rolls)
        parts = [self.crop_frame(images[i], boxes[owner == i], None if rl is None else rl[owner == i], timer, policy)
                 for i in range(len(images)) if np.any(owner == i)]
        return parts[0] if len(parts) == 1 else self.join_crops(parts)

    def encode_batch(self, batch: Any, timer: StageTimer) -> dict[str, np.ndarray]:
        """Stage *encode* of a crop batch (``Crops.batch``)."""
        with timer("encode"):
            return encode(self.encoder, batch, self.input_name, self.widths)

    def reconstruct(self, image: np.ndarray, boxes: np.ndarray, scores: np.ndarray, rolls: Rolls,
                    refine_pass: bool | str, timer: StageTimer, refine_threshold: float = 0.0) -> list[Face]:
        """crop -> encode [-> decode -> project -> refine -> crop -> encode] -> decode -> project -> faces.

        ``refine_pass``: True re-crops every face from its predicted landmarks and encodes again;
        ``"auto"`` does so only for faces whose landmark box disagrees with the first crop's box by
        more than ``refine_threshold`` (:func:`box_disagreement`); False never.
        """
        return self.reconstruct_many([image], [Detected(np.asarray(boxes, np.float64).reshape(-1, 4),
                                                        np.asarray(scores), rolls)],  # type: ignore[arg-type]
                                     refine_pass, timer, refine_threshold)[0]

    def reconstruct_many(self, images: Sequence[np.ndarray], detections: Sequence[Detected],
                         refine_pass: bool | str, timer: StageTimer, refine_threshold: float = 0.0
                         ) -> list[list[Face]]:
        """:meth:`reconstruct` of several frames with one encoder batch per pass (all their faces),
        one decode and one projection: what ``Reconstructor.batch`` runs."""
        counts = [len(d.boxes) for d in detections]
        owner = np.repeat(np.arange(len(images)), counts)
        boxes = np.concatenate([np.asarray(d.boxes, np.float64).reshape(-1, 4) for d in detections])
        scores = np.concatenate([np.asarray(d.scores, np.float64).reshape(-1) for d in detections])
        rolls = None if all(d.rolls is None for d in detections) else np.concatenate(
            [np.zeros(n) if d.rolls is None else np.asarray(d.rolls, np.float64).reshape(-1)
             for d, n in zip(detections, counts)])

        def crop_pass(sel: np.ndarray, bx: np.ndarray, rl: np.ndarray | None) -> Crops:
            return self.crop_frames(images, sel, bx, rl, timer)

        crops = crop_pass(owner, boxes, rolls)
        params = self.encode_batch(crops.batch, timer)
        geometry = affines = None
        if refine_pass and len(crops):
            geometry, projected = self.decode_project(params, crops, timer)
            affines = projected.affines
            with timer("decode"):  # the refine check's decode (deferred in the numpy stages) counts as decode
                new_boxes, new_rolls = refine(params, projected, crops)
            redo = np.ones(len(crops), bool)
            if refine_pass == "auto":
                redo = box_disagreement(boxes, new_boxes) > refine_threshold
            if redo.any():
                geometry = affines = None  # decoded again below, from the second pass
            if redo.all():
                crops = crop_pass(owner, new_boxes, new_rolls)
                params = self.encode_batch(crops.batch, timer)
            elif redo.any():
                idx = np.flatnonzero(redo)
                again = crop_pass(owner[idx], new_boxes[idx], np.asarray(new_rolls)[idx])
                again_params = self.encode_batch(again.batch, timer)
                crops = self.merge_crops(crops, idx, again)
                params = {k: v.copy() for k, v in params.items()}
                for k in params:
                    params[k][idx] = again_params[k]
        faces = self.faces(params, crops, boxes, scores, timer, affines, geometry=geometry)
        cuts = np.cumsum([0] + counts)
        return [faces[a:b] for a, b in zip(cuts[:-1], cuts[1:])]

    def faces(self, params: dict[str, np.ndarray], crops: Crops, boxes: np.ndarray, scores: np.ndarray,
              timer: StageTimer, affines: np.ndarray | None = None,
              track_ids: Sequence[int] | None = None,
              geometry: FaceGeometry | FrameView | None = None) -> list[Face]:
        """The :class:`Face` records of :meth:`decode_project` (numpy stages: a :class:`FrameGeometry`,
        computed when a face first reads it; ``geometry``: already decoded from ``params``, e.g. by
        an adaptive refine pass that kept the first crop)."""
        if not len(crops):
            return []
        timer.ms.setdefault("decode", 0.0)  # numpy stages: decoded when first read, not in this call
        geometry, projected = self.decode_project(params, crops, timer, affines, geometry)
        with timer("project"):
            return assemble(params, geometry, projected, crops, boxes, scores, self.face_model.faces,
                            track_ids, self.engine)

    def decode_project(self, params: Mapping[str, np.ndarray], crops: Crops, timer: StageTimer,
                       affines: np.ndarray | None = None, geometry: FaceGeometry | FrameView | None = None
                       ) -> tuple[FaceGeometry | FrameView, Projected | FrameView]:
        """Stages *decode* and *project* of a batch, deferred: the two views of a :class:`FrameGeometry`,
        each part computed when first read (``affines``/``geometry``: already at hand; a ``geometry``
        view of an earlier pass shares its decode)."""
        with timer("project"):
            if affines is None:
                affines = image_affines(params["cam"], [t.matrix for t in crops.transforms], self.policy.size)
            frame = FrameGeometry(self.face_model, params, affines, geometry)
        return frame.model_frame, frame.image_frame

    def merge_crops(self, crops: Crops, idx: np.ndarray, again: Crops) -> Crops:
        """``crops`` with the faces ``idx`` replaced by those of ``again`` (a second crop pass)."""
        transforms = list(crops.transforms)
        for j, i in enumerate(idx):
            transforms[i] = again.transforms[j]
        batch = crops.batch.copy()
        batch[idx] = again.batch
        return Crops(transforms, batch)

    def join_crops(self, parts: Sequence[Crops]) -> Crops:
        """One batch of the crops of several frames (``Reconstructor.batch`` encodes them at once)."""
        transforms = [t for p in parts for t in p.transforms]
        batches = [p.batch for p in parts if len(p)]
        batch = np.concatenate(batches) if batches else np.zeros((0, 3, self.policy.size, self.policy.size),
                                                                 np.float32)
        return Crops(transforms, batch)


def check_landmarks(landmarks: Sequence[np.ndarray]) -> np.ndarray:
    """Landmark boxes ``(N, 4)`` of a list of per-face landmark arrays ``(K, 2+)`` image pixels."""
    if isinstance(landmarks, np.ndarray) and landmarks.ndim != 3:
        raise InputError(f"landmarks must be a list of (K, 2) arrays, one per face, got one array of shape "
                         f"{landmarks.shape}; for one face pass [landmarks]")
    boxes = []
    for i, lm in enumerate(landmarks):
        a = np.asarray(lm)
        if a.dtype == object or not (np.issubdtype(a.dtype, np.number)) or a.ndim != 2 or a.shape[1] < 2 \
                or a.shape[0] < 2:
            raise InputError(f"landmarks of face {i} must be a numeric (K, 2) array with K >= 2, got "
                             f"{'shape ' + str(a.shape) if a.dtype != object else type(lm).__name__}")
        a = a.astype(np.float64)
        if not np.all(np.isfinite(a[:, :2])):
            raise InputError(f"landmarks of face {i} contain NaN or inf")
        boxes.append([a[:, 0].min(), a[:, 1].min(), a[:, 0].max(), a[:, 1].max()])
    return np.array(boxes, np.float64).reshape(-1, 4)
