"""Result types: SMIRK parameters and reconstructed faces. Imports numpy only.

Coordinate frames:
- model frame: metres, x toward the image right in a frontal view (the subject's left), y up,
  z toward the camera;
- image frame: pixels of the input image, origin at the centre of the top-left pixel, x right,
  y down; depth is SMIRK's orthographic z in the same pixel units, smaller = nearer the camera.

A :class:`Face` made by the pipeline computes its geometry when it is first read (see
:data:`DEFERRED_FIELDS`): a caller that reads only the parameters never decodes a mesh.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, cast

import numpy as np

from .rotation import crop_roll_degrees, head_rotation_matrix  # noqa: F401  (crop_roll_degrees: re-exported)

PARAM_WIDTHS = {"pose": 3, "cam": 3, "shape": 300, "expression": 50, "eyelid": 2, "jaw": 3}
DEFERRED_FIELDS = ("vertices", "vertices_image", "landmarks68", "landmarks105", "head_pose")
"""The :class:`Face` fields that may be given as :func:`deferred` values: computed on first read, then kept."""


class Deferred:
    """A :class:`Face` field's value still to be computed: ``fn()`` runs on the first read."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[], np.ndarray]):
        self.fn = fn

    def resolve(self) -> np.ndarray:
        return self.fn()


class DeferredRow(Deferred):
    """Row ``index`` of ``source.part(name)``, read on the first access: what the pipeline gives
    each face of a batch (one small object per field, no closure: a batch of hundreds of faces
    allocates few objects for the garbage collector to scan)."""

    __slots__ = ("source", "name", "index")

    def __init__(self, source: Any, name: str, index: int):
        self.source, self.name, self.index = source, name, index

    def resolve(self) -> np.ndarray:
        return self.source.part(self.name)[self.index]


def deferred(fn: Callable[[], np.ndarray]) -> np.ndarray:
    """Give ``fn`` where a :class:`Face` field of :data:`DEFERRED_FIELDS` takes an array
    (``Face(vertices=deferred(lambda: ...), ...)``): the field computes ``fn()`` when it is first
    read and keeps the result. Only for those fields; typed as the array it stands for."""
    return cast(np.ndarray, Deferred(fn))


class _DeferredField:
    """Data descriptor of one :data:`DEFERRED_FIELDS` field: stores what ``__init__`` is given in
    the instance dict and resolves a :class:`Deferred` on the first read (two threads reading at
    once both get the same value: the pipeline's ``fn`` caches its frame's results)."""

    def __init__(self, name: str):
        self.name = name

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        if obj is None:
            raise AttributeError(self.name)
        try:
            value = obj.__dict__[self.name]
        except KeyError:
            raise AttributeError(self.name) from None
        if isinstance(value, Deferred):
            value = value.resolve()
            obj.__dict__[self.name] = value
        return value

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__[self.name] = value


@dataclass
class Params:
    """SMIRK parameters of one face.

    Attributes:
        pose: ``(3,)`` global head rotation, axis-angle radians (model frame).
        cam: ``(3,)`` orthographic camera (scale, tx, ty) of the 224 crop (see smirk_edge.camera).
        shape: ``(300,)`` identity coefficients.
        expression: ``(50,)`` expression coefficients.
        eyelid: ``(2,)`` [left, right] eyelid closure in [0, 1].
        jaw: ``(3,)`` jaw rotation, axis-angle radians (opening is the first, >= 0).
    """

    pose: np.ndarray
    cam: np.ndarray
    shape: np.ndarray
    expression: np.ndarray
    eyelid: np.ndarray
    jaw: np.ndarray

    @classmethod
    def from_outputs(cls, outputs: Mapping[str, np.ndarray], index: int) -> "Params":
        return cls(**{k: np.asarray(outputs[k][index], np.float32).copy() for k in PARAM_WIDTHS})

    def to_dict(self) -> dict[str, list[float]]:
        return {k: [float(x) for x in getattr(self, k)] for k in PARAM_WIDTHS}

    def as_batch(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k)[None] for k in PARAM_WIDTHS}


def head_pose_degrees(pose: np.ndarray, crop_roll_deg: float = 0.0) -> np.ndarray:
    """``(yaw, pitch, roll)`` degrees from an axis-angle global rotation ``(3,)``.

    Convention: ``R = Ry(yaw) @ Rx(pitch) @ Rz(roll)`` in the model frame. Yaw > 0 turns the face
    toward the image right (the subject's left); pitch > 0 tilts the face down (chin toward the
    chest); roll > 0 tilts the head counter-clockwise as seen in the image.

    ``pose`` is what the encoder sees, i.e. relative to its crop; ``crop_roll_deg`` is the crop's
    own counter-clockwise rotation in the image (:func:`crop_roll_degrees`), composed in so that
    the angles describe the head in the image.
    """
    R = head_rotation_matrix(pose, crop_roll_deg)
    pitch = np.arcsin(np.clip(-R[1, 2], -1.0, 1.0))
    yaw = np.arctan2(R[0, 2], R[2, 2])
    roll = np.arctan2(R[1, 0], R[1, 1])
    return np.degrees([yaw, pitch, roll]).astype(np.float32)


@dataclass
class Face:
    """One reconstructed face.

    Attributes:
        params: SMIRK parameters (:class:`Params`).
        vertices: ``(V, 3)`` metres, model frame (neutral camera, posed head).
        vertices_image: ``(V, 3)`` image pixels x, y and depth (see module docstring).
        landmarks68: ``(68, 2)`` image pixels (iBUG 68-point order).
        landmarks105: ``(105, 2)`` image pixels (MediaPipe indices, see ``FaceModel.mp_landmark_indices``).
        box: ``(4,)`` x0, y0, x1, y1 image pixels of the detection (or of the tracked landmarks).
        score: detector confidence in [0, 1] (for a tracked face: the score of its latest check).
        head_pose: ``(3,)`` yaw, pitch, roll in degrees (:func:`head_pose_degrees`).

        ``vertices``, ``vertices_image``, ``landmarks68``, ``landmarks105`` and ``head_pose`` of a
        face from the pipeline are computed from its parameters and crop when first read (the whole
        frame's faces are decoded together, once), so they cost nothing until then and
        :attr:`timings` count only what the call itself needed; the values are the same as if
        they had been computed in the call.
        crop_matrix: ``(2, 3)`` image -> 224 crop affine used for the final encoding.
        track_id: stable id across frames in ``stream()``; -1 for single images.
        timings: per-stage milliseconds of the call that produced this face (each face holds its
            own copy; :attr:`FrameResult.timings` is the call's).
        engine: which engine ran the encoder (e.g. ``onnxruntime:CPUExecutionProvider fp32``).
    """

    params: Params
    vertices: np.ndarray
    vertices_image: np.ndarray
    landmarks68: np.ndarray
    landmarks105: np.ndarray
    box: np.ndarray
    score: float
    head_pose: np.ndarray
    crop_matrix: np.ndarray
    faces: np.ndarray | None = field(repr=False, default=None)  # (F, 3) triangles of the face model
    track_id: int = -1
    timings: dict[str, float] = field(default_factory=dict)
    engine: str = ""

    def pending(self) -> tuple[str, ...]:
        """The fields of :data:`DEFERRED_FIELDS` not computed yet (empty once each was read)."""
        return tuple(k for k in DEFERRED_FIELDS if isinstance(self.__dict__.get(k), Deferred))

    def __getstate__(self) -> dict:
        """Pickling and copying compute the deferred fields first (a :class:`Deferred` holds a closure)."""
        for k in self.pending():
            getattr(self, k)
        return dict(self.__dict__)

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def to_dict(self, include_vertices: bool = False) -> dict:
        """JSON-ready dict (parameters, landmarks, box, pose; vertices only when asked)."""
        d = {
            "box": [float(x) for x in self.box],
            "score": float(self.score),
            "head_pose_deg": {"yaw": float(self.head_pose[0]), "pitch": float(self.head_pose[1]),
                              "roll": float(self.head_pose[2])},
            "params": self.params.to_dict(),
            "landmarks68": np.round(self.landmarks68, 3).tolist(),
            "landmarks105": np.round(self.landmarks105, 3).tolist(),
            "crop_matrix": np.asarray(self.crop_matrix).tolist(),
            "track_id": self.track_id,
            "engine": self.engine,
        }
        if include_vertices:
            d["vertices"] = np.round(self.vertices, 6).tolist()
            d["vertices_image"] = np.round(self.vertices_image, 3).tolist()
        return d

    def save_json(self, path: str | os.PathLike, include_vertices: bool = False) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(include_vertices), indent=1))
        return path

    def save_mesh(self, path: str | os.PathLike, space: str = "model", **gltf_options) -> Path:
        """Write the mesh as ``.obj``, ``.ply`` or binary glTF ``.glb`` (by suffix).

        ``space``: "model" (metres) or "image" (pixels). A ``.glb`` needs the ``gltf`` extra and takes
        the options of :func:`smirk_edge.gltf.write_face_glb` (``image_size``, ``pixel_size``).
        """
        from .meshio import write_mesh

        if space not in ("model", "image"):
            raise ValueError(f"space must be 'model' or 'image', got {space!r}")
        if self.faces is None:
            from .errors import InputError

            raise InputError("this face carries no triangles (Face.faces is None): nothing to write")
        if str(path).lower().endswith(".glb"):
            from .gltf import write_face_glb

            return write_face_glb(path, self, space=space, **gltf_options)
        if gltf_options:
            raise TypeError(f"options {sorted(gltf_options)} apply to .glb files only")
        verts = self.vertices if space == "model" else self.vertices_image
        return write_mesh(path, verts, self.faces)


for _name in DEFERRED_FIELDS:  # after @dataclass: __init__ assigns through the descriptors
    setattr(Face, _name, _DeferredField(_name))
del _name


class FrameResult(list):
    """The faces of one call (``rec(image)``, one frame of ``rec.stream()``), with what the call measured.

    A ``list[Face]`` (so ``faces[0]``, ``len(faces)`` and ``faces == []`` work as before) that also
    carries:

    Attributes:
        timings: per-stage milliseconds of this call (``detect``, ``crop``, ``encode``, ``decode``,
            ``project``, ``smooth``, ``total``...); ``decode`` counts only the decoding the call itself
            needed (refine check, tracking), since a face's geometry is computed when first read.
        errors: the errors that made this call give no faces (a skipped video frame); empty otherwise.
        frame_index: the frame index in ``stream()``; None for single images.
    """

    def __init__(self, faces: "list[Face] | tuple[Face, ...]" = (), timings: dict[str, float] | None = None,
                 errors: "list[Exception] | tuple[Exception, ...]" = (), frame_index: int | None = None):
        super().__init__(faces)
        self.timings: dict[str, float] = dict(timings or {})
        self.errors: list[Exception] = list(errors)
        self.frame_index = frame_index

    @property
    def faces(self) -> "list[Face]":
        """The faces as a plain list."""
        return list(self)

    def __repr__(self) -> str:
        return f"FrameResult({len(self)} faces, total={self.timings.get('total', 0.0):.1f} ms, errors={len(self.errors)})"
