"""The smirk-edge face-model file: one ``.npz`` holding a FLAME-format model.

FLAME 2020 converted by :mod:`smirk_edge.face_model.convert` and the shipped stand-in
(:func:`smirk_edge.face_model.standin_path`) use exactly this layout, so every decoder
(numpy here, torch in ``smirk_edge.training.face_model``, ONNX in fused export graphs)
reads one format. ``V`` is the vertex count (5023 for FLAME, 468 for the stand-in),
``F`` the triangle count and ``J`` the joint count (5: global, neck, jaw, left eye, right eye).

Coordinate frame: metres, x to the subject's left (image right in a frontal view),
y up, z toward the camera. Everything is float32 / int32 on disk.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Mapping

import numpy as np

from ..errors import FaceModelError

FORMAT_NAME = "smirk-edge-face-model"
FORMAT_VERSION = 1
STANDIN_FILE = "standin_face_model.npz"


def standin_path() -> Path:
    """Path of the stand-in face model shipped in ``smirk_edge/assets`` (see its NOTICE)."""
    return Path(str(resources.files("smirk_edge.assets").joinpath(STANDIN_FILE)))


N_SHAPE = 300
N_EXPRESSION = 50
N_JOINTS = 5
N_POSE_FEATURES = (N_JOINTS - 1) * 9  # (R - I) of every joint but the root
N_STATIC_LMK = 51  # 68-point landmarks 18..68 (0-based 17..67)
N_CONTOUR_LMK = 17  # 68-point landmarks 1..17, chosen by head yaw
N_YAW_BINS = 79  # yaw 0..39 degrees -> rows 0..39, -1..-39 -> rows 40..78
N_MP_LMK = 105

# The MediaPipe face-mesh indices of the 105 landmarks, in the order SMIRK uses them.
MEDIAPIPE_105_INDICES = np.array(
    [276, 282, 283, 285, 293, 295, 296, 300, 334, 336, 46, 52, 53, 55, 63, 65, 66, 70, 105, 107,
     249, 263, 362, 373, 374, 380, 381, 382, 384, 385, 386, 387, 388, 390, 398, 466, 7, 33, 133,
     144, 145, 153, 154, 155, 157, 158, 159, 160, 161, 163, 173, 246, 168, 6, 197, 195, 5, 4, 129,
     98, 97, 2, 326, 327, 358, 0, 13, 14, 17, 37, 39, 40, 61, 78, 80, 81, 82, 84, 87, 88, 91, 95,
     146, 178, 181, 185, 191, 267, 269, 270, 291, 308, 310, 311, 312, 314, 317, 318, 321, 324, 375,
     402, 405, 409, 415],
    dtype=np.int32,
)


@dataclass(frozen=True)
class ArraySpec:
    """One array of the file: name, shape with symbolic dims, dtype kind, meaning."""

    name: str
    shape: tuple  # ints or the symbols "V", "F", "J"
    kind: str  # "f" float32 or "i" int32
    doc: str
    required: bool = True


SPEC: tuple[ArraySpec, ...] = (
    ArraySpec("v_template", ("V", 3), "f", "neutral mean face, metres"),
    ArraySpec("shapedirs", ("V", 3, N_SHAPE), "f", "identity basis, metres per unit coefficient"),
    ArraySpec("exprdirs", ("V", 3, N_EXPRESSION), "f", "expression basis, metres per unit coefficient"),
    ArraySpec("posedirs", ("V", 3, N_POSE_FEATURES), "f",
              "pose correctives; feature k = flatten(R_j - I) over joints 1..J-1, row-major"),
    ArraySpec("J_regressor", ("J", "V"), "f", "joint locations as vertex combinations"),
    ArraySpec("parents", ("J",), "i", "kinematic parent of each joint; parents[0] = -1"),
    ArraySpec("lbs_weights", ("V", "J"), "f", "skinning weights, rows sum to 1"),
    ArraySpec("l_eyelid", ("V", 3), "f", "left-eyelid closing offsets, added after skinning"),
    ArraySpec("r_eyelid", ("V", 3), "f", "right-eyelid closing offsets, added after skinning"),
    ArraySpec("faces", ("F", 3), "i", "triangles, counter-clockwise seen from the front"),
    ArraySpec("lmk_faces_idx", (N_STATIC_LMK,), "i", "triangle of each static 68-point landmark (18..68)"),
    ArraySpec("lmk_bary_coords", (N_STATIC_LMK, 3), "f", "barycentric coordinates in that triangle"),
    ArraySpec("dynamic_lmk_faces_idx", (N_YAW_BINS, N_CONTOUR_LMK), "i",
              "triangle of each contour landmark (1..17) for each rounded yaw bin"),
    ArraySpec("dynamic_lmk_bary_coords", (N_YAW_BINS, N_CONTOUR_LMK, 3), "f",
              "barycentric coordinates of the contour landmarks per yaw bin"),
    ArraySpec("full_lmk_faces_idx", (68,), "i", "all 68 landmarks in a frontal pose (for 3D landmarks)"),
    ArraySpec("full_lmk_bary_coords", (68, 3), "f", "barycentric coordinates of those 68"),
    ArraySpec("mp_lmk_faces_idx", (N_MP_LMK,), "i", "triangle of each of the 105 MediaPipe-indexed landmarks"),
    ArraySpec("mp_lmk_bary_coords", (N_MP_LMK, 3), "f", "barycentric coordinates of the 105"),
    ArraySpec("mp_landmark_indices", (N_MP_LMK,), "i", "MediaPipe face-mesh index of each of the 105"),
    ArraySpec("face_region_faces", ("Fr",), "i", "triangles of the face region the neural renderer draws",
              required=False),
)
_SPEC_BY_NAME = {s.name: s for s in SPEC}
META_KEYS = ("format", "format_version", "model_id", "notice")


def _check_arrays(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    missing = [s.name for s in SPEC if s.required and s.name not in arrays]
    if missing:
        raise FaceModelError(f"face model is missing arrays: {', '.join(missing)}")
    dims: dict[str, int] = {}
    out: dict[str, np.ndarray] = {}
    for s in SPEC:
        if s.name not in arrays:
            continue
        a = np.asarray(arrays[s.name])
        if a.ndim != len(s.shape):
            raise FaceModelError(f"face model array {s.name!r} has shape {a.shape}, expected {s.shape}")
        for got, want in zip(a.shape, s.shape):
            if isinstance(want, str):
                if dims.setdefault(want, got) != got:
                    raise FaceModelError(
                        f"face model array {s.name!r} has shape {a.shape}: dimension {want} is {got} "
                        f"here but {dims[want]} elsewhere")
            elif got != want:
                raise FaceModelError(f"face model array {s.name!r} has shape {a.shape}, expected {s.shape}")
        if s.kind == "f":
            if not np.issubdtype(a.dtype, np.floating):
                raise FaceModelError(f"face model array {s.name!r} must be floating point, got {a.dtype}")
            a = a.astype(np.float32, copy=False)
            if not np.all(np.isfinite(a)):
                raise FaceModelError(f"face model array {s.name!r} holds NaN or inf")
        else:
            if not np.issubdtype(a.dtype, np.integer):
                raise FaceModelError(f"face model array {s.name!r} must be integer, got {a.dtype}")
            a = a.astype(np.int32, copy=False)
        out[s.name] = np.ascontiguousarray(a)
    V, F, J = dims["V"], dims["F"], dims["J"]
    if J != N_JOINTS:
        raise FaceModelError(f"face model has {J} joints; the FLAME layout needs {N_JOINTS}")
    par = out["parents"]
    if par[0] != -1 or np.any(par[1:] < 0) or np.any(par[1:] >= np.arange(1, J)):
        raise FaceModelError(f"face model parents {par.tolist()} must start with -1 and point to earlier joints")
    if out["faces"].min(initial=0) < 0 or out["faces"].max(initial=0) >= V:
        raise FaceModelError("face model triangles index vertices out of range")
    for name in ("lmk_faces_idx", "dynamic_lmk_faces_idx", "full_lmk_faces_idx", "mp_lmk_faces_idx",
                 "face_region_faces"):
        if name in out and (out[name].min(initial=0) < 0 or out[name].max(initial=0) >= F):
            raise FaceModelError(f"face model array {name!r} indexes triangles out of range")
    return out


def validate(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Check names, shapes, dtypes and index ranges; return float32/int32 contiguous copies.

    Raises:
        FaceModelError: with the first problem found.
    """
    return _check_arrays(arrays)


def save(path: str | os.PathLike, arrays: Mapping[str, np.ndarray], model_id: str,
         notice: str = "", compress: bool = True) -> Path:
    """Validate ``arrays`` and write them as a face-model ``.npz`` (no pickles inside)."""
    checked = validate(arrays)
    extra = {k: v for k, v in arrays.items() if k not in _SPEC_BY_NAME and k not in META_KEYS}
    if extra:
        raise FaceModelError(f"unknown face model arrays: {sorted(extra)}")
    payload = dict(checked)
    payload["format"] = np.array(FORMAT_NAME)
    payload["format_version"] = np.array(FORMAT_VERSION, dtype=np.int32)
    payload["model_id"] = np.array(model_id)
    payload["notice"] = np.array(notice)
    path = Path(path)
    (np.savez_compressed if compress else np.savez)(path, **payload)
    return path


def load_arrays(source: str | os.PathLike | bytes) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    """Read a face-model ``.npz`` (path or bytes) with pickles disabled.

    Returns:
        ``(arrays, meta)``: validated arrays and ``{"model_id", "notice", "format_version"}``.
    """
    from ..errors import excerpt
    from ..npz_guard import ArrayFileError, load_npz

    name = f"<{len(source)} bytes>" if isinstance(source, (bytes, bytearray, memoryview)) else excerpt(os.fspath(source), 200)
    if not isinstance(source, (bytes, bytearray, memoryview)) and not os.path.isfile(source):
        raise FaceModelError(f"face model file not found: {name}")
    try:
        f = load_npz(source, f"face model {name}")
    except ArrayFileError as exc:
        raise FaceModelError(f"cannot read face model: {exc}") from None
    except OSError as exc:
        raise FaceModelError(f"cannot read face model {name}: {exc.strerror or exc}") from None
    try:
        fmt_name = str(f["format"])[:80]
        if fmt_name != FORMAT_NAME:
            raise FaceModelError(f"{name} is not a smirk-edge face model (format {fmt_name!r})")
        version = int(f["format_version"])
        if version > FORMAT_VERSION:
            raise FaceModelError(
                f"{name} has face-model format version {version}; this smirk-edge reads up to "
                f"{FORMAT_VERSION}: upgrade smirk-edge")
        meta = {"model_id": str(f["model_id"]), "notice": str(f["notice"]), "format_version": version}
        arrays = {k: v for k, v in f.items() if k in _SPEC_BY_NAME}
    except KeyError as exc:
        raise FaceModelError(f"{name} is not a smirk-edge face model (missing {excerpt(exc.args[0])})") from None
    except FaceModelError:
        raise
    except Exception as exc:
        raise FaceModelError(f"cannot read face model {name}: {type(exc).__name__}: {excerpt(str(exc), 200)}") from None
    return validate(arrays), meta
