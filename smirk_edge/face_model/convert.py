"""Convert the licensed FLAME 2020 + SMIRK asset files into a smirk-edge face-model ``.npz``.

Inputs (none can be shipped; each user downloads them under their licences):

=================================  ==============================================================
``generic_model.pkl``              FLAME 2020, Python-2 pickle: dict with chumpy ``v_template``
                                   ``(5023, 3)`` and ``shapedirs`` ``(5023, 3, 400)`` (300 shape +
                                   100 expression columns), ``posedirs`` ``(5023, 3, 36)``,
                                   ``weights`` ``(5023, 5)``, ``kintree_table`` ``(2, 5)`` (root
                                   parent 4294967295), ``f`` ``(9976, 3)`` uint, ``J_regressor``
                                   SciPy csc ``(5, 5023)``, ``J``, ``bs_style``, ``bs_type``.
``landmark_embedding.npy``         DECA/SMIRK: 0-d object array holding a dict:
                                   ``static_lmk_faces_idx (51,)``, ``static_lmk_bary_coords
                                   (51, 3)``, ``dynamic_lmk_faces_idx (79, 17)`` and
                                   ``dynamic_lmk_bary_coords (79, 17, 3)`` (torch tensors in the
                                   released file), ``full_lmk_faces_idx (1, 68)``,
                                   ``full_lmk_bary_coords (1, 68, 3)``.
``mediapipe_landmark_embedding``   ``.npz``: ``lmk_face_idx (105,)``, ``lmk_b_coords (105, 3)``,
                                   ``landmark_indices (105,)`` (MediaPipe face-mesh indices).
``l_eyelid.npy``, ``r_eyelid.npy``  ``(5023, 3)`` float offsets, added after skinning.
``FLAME_masks.pkl`` (optional)     dict region name -> vertex indices; ``'face'`` gives the
                                   triangles SMIRK's renderer draws.
=================================  ==============================================================

Everything is read with :mod:`smirk_edge.safe_pickle` (no chumpy, SciPy or torch, no code from
the files is run). Only the first 300 shape and first 50 expression columns are kept, as SMIRK
does (``shapedirs[..., :300]`` and ``shapedirs[..., 300:350]``).

``face_region_faces`` (when masks are given) = the triangles whose three vertices all lie in
``FLAME_masks['face']``: SMIRK's renderer (``src/renderer/renderer.py``,
``keep_vertices_and_update_faces``) keeps exactly those, which leaves out the eyeballs, the
scalp, the ears and the neck. Without masks the field is omitted (every triangle is drawn).

FLAME 2023 (``flame2023.pkl``) has the same dictionary layout and is accepted when its arrays
have these shapes, but its expression basis differs from FLAME 2020's, and the SMIRK checkpoint
was trained with FLAME 2020 (SMIRK issues #10, #49): decoded SMIRK parameters only mean what
they should with FLAME 2020. The converter records the source file names and SHA-256 hashes in
the model's notice.
"""

from __future__ import annotations

import argparse
import hashlib
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import safe_pickle
from ..errors import FaceModelError, UnsafeFileError, excerpt
from . import format as fmt

__all__ = ["convert_flame", "build_arrays", "read_flame_model", "read_landmark_embedding",
           "read_mediapipe_embedding", "read_eyelid", "read_face_region", "main", "run", "add_arguments",
           "FLAME_NOTICE", "SMIRK_ASSET_LAYOUT", "DESCRIPTION"]

PathLike = str | os.PathLike

FLAME_NOTICE = (
    "Derived from the FLAME model (Max Planck Institute for Intelligent Systems), licensed under "
    "the FLAME model licence (https://flame.is.tue.mpg.de/modellicense.html): non-commercial "
    "scientific research use only. This file is a derivative of licensed assets: do NOT "
    "redistribute it. Landmark embeddings from DECA/SMIRK assets (see their licences)."
)

#: Where SMIRK's repository keeps each input, relative to its ``assets/`` folder.
SMIRK_ASSET_LAYOUT = {
    "flame_pkl": "FLAME2020/generic_model.pkl",
    "landmark_embedding": "landmark_embedding.npy",
    "mediapipe_embedding": "mediapipe_landmark_embedding/mediapipe_landmark_embedding.npz",
    "l_eyelid": "l_eyelid.npy",
    "r_eyelid": "r_eyelid.npy",
    "masks_pkl": "FLAME_masks/FLAME_masks.pkl",
}

_BARY_TOL = 1e-2  # barycentric rows must sum to 1 within this


# ----------------------------------------------------------------------------- helpers
# largest array a FLAME-format input may declare (FLAME 2020's largest is about 50 MB as float64)
MAX_INPUT_ARRAY_BYTES = 256 << 20


def _err(role: str, path: PathLike, msg: str) -> FaceModelError:
    if len(msg) > 600:
        msg = msg[:600] + f"...<{len(msg)} chars>"
    return FaceModelError(f"{role} {excerpt(os.fspath(path), 200)}: {msg}")


def _load_with(loader, role: str, path: PathLike, **kwargs) -> Any:
    """Run a safe_pickle loader, re-raising its errors with the file's role and path."""
    if not Path(os.fspath(path)).is_file():
        raise _err(role, path, "file not found")
    kwargs.setdefault("max_array_bytes", MAX_INPUT_ARRAY_BYTES)
    try:
        return loader(path, **kwargs)
    except safe_pickle.CorruptFileError as exc:
        raise _err(role, path, f"truncated or corrupt ({exc})") from exc
    except UnsafeFileError as exc:
        raise UnsafeFileError(f"{role} {excerpt(os.fspath(path), 200)}: {excerpt(str(exc), 600)}") from exc


def _np_load_plain(role: str, path: PathLike) -> Any:
    """A ``.npy`` array or an ``.npz`` dict of arrays, pickles disabled, headers checked before any
    allocation (:mod:`smirk_edge.npz_guard`); errors as :class:`FaceModelError`."""
    from ..npz_guard import ArrayFileError, is_zip, load_npy, load_npz

    if not Path(os.fspath(path)).is_file():
        raise _err(role, path, "file not found")
    try:
        if is_zip(path):
            return load_npz(path, "the archive", MAX_INPUT_ARRAY_BYTES, 2 * MAX_INPUT_ARRAY_BYTES)
        return load_npy(path, "the file", MAX_INPUT_ARRAY_BYTES)
    except ArrayFileError as exc:
        raise _err(role, path, f"cannot read: {exc}") from None
    except OSError as exc:
        raise _err(role, path, f"cannot read: {exc.strerror or exc}") from None


def _numbers(role: str, path: PathLike, name: str, value: Any) -> np.ndarray:
    """``value`` (an array or nested lists from the file) as an array, sized before allocating."""
    try:
        return safe_pickle.as_array(value, repr(name), MAX_INPUT_ARRAY_BYTES)
    except safe_pickle.CorruptFileError as exc:
        raise _err(role, path, str(exc)) from None
    except UnsafeFileError as exc:
        raise UnsafeFileError(f"{role} {excerpt(os.fspath(path), 200)}: {exc}") from None


def _array(role: str, path: PathLike, name: str, value: Any, shape: tuple, kind: str) -> np.ndarray:
    """Check one array: ``shape`` may hold ``None`` for free dims; ``kind`` "f" or "i"."""
    a = _numbers(role, path, name, value)
    if a.dtype.hasobject:
        raise _err(role, path, f"{name!r} is not a numeric array")
    if a.ndim != len(shape) or any(w is not None and g != w for g, w in zip(a.shape, shape)):
        want = tuple("*" if w is None else w for w in shape)
        raise _err(role, path, f"{name!r} has shape {a.shape}, expected {want}")
    if kind == "f":
        if a.dtype.kind not in "fiu":
            raise _err(role, path, f"{name!r} has dtype {a.dtype}, expected floating point")
        a = a.astype(np.float64)
        if not np.all(np.isfinite(a)):
            raise _err(role, path, f"{name!r} holds NaN or inf")
    else:
        if a.dtype.kind == "f":
            if not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
                raise _err(role, path, f"{name!r} should hold integers, got non-integral {a.dtype}")
        elif a.dtype.kind not in "iub":
            raise _err(role, path, f"{name!r} has dtype {a.dtype}, expected integers")
        a = a.astype(np.int64)
    return a


def _indices(role: str, path: PathLike, name: str, a: np.ndarray, upper: int, what: str) -> np.ndarray:
    if a.size and (a.min() < 0 or a.max() >= upper):
        raise _err(role, path, f"{name!r} indexes {what} in [{a.min()}, {a.max()}], but there are "
                               f"only {upper} {what} (is this file for another mesh?)")
    return a.astype(np.int32)


def _bary(role: str, path: PathLike, name: str, a: np.ndarray) -> np.ndarray:
    s = a.sum(-1)
    if a.size and np.max(np.abs(s - 1.0)) > _BARY_TOL:
        raise _err(role, path, f"{name!r} rows should sum to 1 (barycentric), max deviation "
                               f"{np.max(np.abs(s - 1.0)):.3g}")
    return a.astype(np.float32)


# ----------------------------------------------------------------------------- readers
def read_flame_model(path: PathLike) -> dict[str, np.ndarray]:
    """Read FLAME ``generic_model.pkl`` into face-model arrays (no chumpy, SciPy or torch).

    Returns:
        ``v_template (V, 3)``, ``shapedirs (V, 3, 300)``, ``exprdirs (V, 3, 50)``,
        ``posedirs (V, 3, 36)``, ``J_regressor (5, V)`` (dense), ``parents (5,)`` with
        ``parents[0] = -1``, ``lbs_weights (V, 5)``, ``faces (F, 3)``; metres, float32/int32.

    Raises:
        FaceModelError: missing keys, wrong shapes, faces out of range, fewer than 350
            blendshape columns; the message names the file.
        UnsafeFileError: the pickle names anything outside the allow-list.
    """
    role = "FLAME model"
    d = _load_with(safe_pickle.load_pickle, role, path, encoding="latin1")
    if not isinstance(d, dict):
        raise _err(role, path, f"expected a dict of arrays, got {type(d).__name__}")
    need = ("v_template", "shapedirs", "posedirs", "weights", "kintree_table", "f", "J_regressor")
    missing = [k for k in need if k not in d]
    if missing:
        raise _err(role, path, f"missing keys {missing} (is this FLAME's generic_model.pkl?)")
    J = fmt.N_JOINTS
    v = _array(role, path, "v_template", d["v_template"], (None, 3), "f")
    V = v.shape[0]
    sd = _array(role, path, "shapedirs", d["shapedirs"], (V, 3, None), "f")
    n_need = fmt.N_SHAPE + fmt.N_EXPRESSION
    if sd.shape[2] < n_need:
        raise _err(role, path, f"'shapedirs' has {sd.shape[2]} columns; need at least {n_need} "
                               f"({fmt.N_SHAPE} shape + {fmt.N_EXPRESSION} expression; FLAME 2020 has 400)")
    pd = _array(role, path, "posedirs", d["posedirs"], (V, 3, fmt.N_POSE_FEATURES), "f")
    w = _array(role, path, "weights", d["weights"], (V, J), "f")
    kt = _array(role, path, "kintree_table", d["kintree_table"], (2, J), "i")
    f = _array(role, path, "f", d["f"], (None, 3), "i")
    faces = _indices(role, path, "f", f, V, "vertices")
    jr = _array(role, path, "J_regressor", d["J_regressor"], (J, V), "f")
    # kintree_table: row 1 = joint ids, row 0 = parent ids (root's parent is 2**32 - 1)
    col_of = {int(j): i for i, j in enumerate(kt[1])}
    if len(col_of) != J:
        raise _err(role, path, f"'kintree_table' joint ids {kt[1].tolist()} are not unique")
    parents = np.full(J, -1, np.int32)
    for i in range(1, J):
        p = int(kt[0, i])
        if p not in col_of:
            raise _err(role, path, f"'kintree_table' joint {i} has unknown parent {p}")
        parents[i] = col_of[p]
    if int(kt[0, 0]) in col_of:
        raise _err(role, path, f"'kintree_table' root has a parent ({int(kt[0, 0])})")
    if np.any(parents[1:] >= np.arange(1, J)):
        raise _err(role, path, f"'kintree_table' parents {parents.tolist()} are not in topological order")
    return {
        "v_template": v.astype(np.float32),
        "shapedirs": sd[:, :, :fmt.N_SHAPE].astype(np.float32),
        "exprdirs": sd[:, :, fmt.N_SHAPE:n_need].astype(np.float32),
        "posedirs": pd.astype(np.float32),
        "J_regressor": jr.astype(np.float32),
        "parents": parents,
        "lbs_weights": w.astype(np.float32),
        "faces": faces,
    }


def read_landmark_embedding(path: PathLike, n_faces: int) -> dict[str, np.ndarray]:
    """Read DECA-style ``landmark_embedding.npy`` (torch tensors inside are read without torch).

    Args:
        n_faces: triangle count ``F`` of the FLAME mesh, for the range check.

    Returns:
        ``lmk_faces_idx (51,)``, ``lmk_bary_coords (51, 3)``, ``dynamic_lmk_faces_idx (79, 17)``,
        ``dynamic_lmk_bary_coords (79, 17, 3)``, ``full_lmk_faces_idx (68,)``,
        ``full_lmk_bary_coords (68, 3)`` (the leading 1 of the ``full_*`` entries is dropped).
    """
    role = "landmark embedding"
    d = _load_with(safe_pickle.load_npy_object, role, path, encoding="latin1")
    if not isinstance(d, dict):
        raise _err(role, path, f"expected a dict (np.save of a dict), got {type(d).__name__}")
    keys = ("static_lmk_faces_idx", "static_lmk_bary_coords", "dynamic_lmk_faces_idx",
            "dynamic_lmk_bary_coords", "full_lmk_faces_idx", "full_lmk_bary_coords")
    missing = [k for k in keys if k not in d]
    if missing:
        raise _err(role, path, f"missing keys {missing} (is this DECA/SMIRK's landmark_embedding.npy?)")
    S, C, Y = fmt.N_STATIC_LMK, fmt.N_CONTOUR_LMK, fmt.N_YAW_BINS
    full_f = _numbers(role, path, "full_lmk_faces_idx", d["full_lmk_faces_idx"])
    full_b = _numbers(role, path, "full_lmk_bary_coords", d["full_lmk_bary_coords"])
    if full_f.ndim == 2 and full_f.shape[0] == 1:
        full_f = full_f[0]
    if full_b.ndim == 3 and full_b.shape[0] == 1:
        full_b = full_b[0]
    out = {
        "lmk_faces_idx": _array(role, path, "static_lmk_faces_idx", d["static_lmk_faces_idx"], (S,), "i"),
        "lmk_bary_coords": _array(role, path, "static_lmk_bary_coords", d["static_lmk_bary_coords"], (S, 3), "f"),
        "dynamic_lmk_faces_idx": _array(role, path, "dynamic_lmk_faces_idx", d["dynamic_lmk_faces_idx"],
                                        (Y, C), "i"),
        "dynamic_lmk_bary_coords": _array(role, path, "dynamic_lmk_bary_coords", d["dynamic_lmk_bary_coords"],
                                          (Y, C, 3), "f"),
        "full_lmk_faces_idx": _array(role, path, "full_lmk_faces_idx", full_f, (68,), "i"),
        "full_lmk_bary_coords": _array(role, path, "full_lmk_bary_coords", full_b, (68, 3), "f"),
    }
    for k in list(out):
        if k.endswith("faces_idx"):
            out[k] = _indices(role, path, k, out[k], n_faces, "triangles")
        else:
            out[k] = _bary(role, path, k, out[k])
    return out


def read_mediapipe_embedding(path: PathLike, n_faces: int) -> dict[str, np.ndarray]:
    """Read ``mediapipe_landmark_embedding.npz``, in SMIRK's order of the 105 indices.

    When ``landmark_indices`` holds :data:`~smirk_edge.face_model.format.MEDIAPIPE_105_INDICES`
    in another order the rows are reordered to match; a different set is refused.

    Returns:
        ``mp_lmk_faces_idx (105,)``, ``mp_lmk_bary_coords (105, 3)``, ``mp_landmark_indices (105,)``.
    """
    role = "MediaPipe landmark embedding"
    z = _np_load_plain(role, path)
    if not isinstance(z, dict):
        raise _err(role, path, "expected an .npz archive with lmk_face_idx, lmk_b_coords, landmark_indices")
    missing = [k for k in ("lmk_face_idx", "lmk_b_coords", "landmark_indices") if k not in z]
    if missing:
        raise _err(role, path, f"missing arrays {missing} (has {excerpt(sorted(z), 200)})")
    raw = {k: z[k] for k in ("lmk_face_idx", "lmk_b_coords", "landmark_indices")}
    N = fmt.N_MP_LMK
    fi = _array(role, path, "lmk_face_idx", raw["lmk_face_idx"], (N,), "i")
    bc = _array(role, path, "lmk_b_coords", raw["lmk_b_coords"], (N, 3), "f")
    li = _array(role, path, "landmark_indices", raw["landmark_indices"], (N,), "i")
    want = fmt.MEDIAPIPE_105_INDICES.astype(np.int64)
    if not np.array_equal(li, want):
        if len(np.unique(li)) != N or not np.array_equal(np.sort(li), np.sort(want)):
            extra = sorted(set(li.tolist()) - set(want.tolist()))[:10]
            raise _err(role, path, "'landmark_indices' are not SMIRK's 105 MediaPipe indices "
                                   f"(unexpected: {extra}; duplicates: {len(li) - len(np.unique(li))})")
        pos = {int(m): i for i, m in enumerate(li)}
        order = np.array([pos[int(m)] for m in want])
        fi, bc, li = fi[order], bc[order], li[order]
    return {
        "mp_lmk_faces_idx": _indices(role, path, "lmk_face_idx", fi, n_faces, "triangles"),
        "mp_lmk_bary_coords": _bary(role, path, "lmk_b_coords", bc),
        "mp_landmark_indices": li.astype(np.int32),
    }


def read_eyelid(path: PathLike, n_vertices: int, side: str) -> np.ndarray:
    """Read ``l_eyelid.npy`` / ``r_eyelid.npy``: ``(V, 3)`` metres per unit eyelid closure."""
    role = f"{side} eyelid blendshape"
    a = _np_load_plain(role, path)
    if isinstance(a, dict):
        raise _err(role, path, "expected a .npy array, got an .npz archive")
    a = np.asarray(a)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    return _array(role, path, f"{side}_eyelid", a, (n_vertices, 3), "f").astype(np.float32)


def read_face_region(path: PathLike, faces: np.ndarray, n_vertices: int) -> np.ndarray:
    """Triangles SMIRK's renderer draws: those with all three vertices in ``FLAME_masks['face']``.

    Args:
        faces: ``(F, 3)`` triangles of the FLAME mesh.

    Returns:
        ``(Fr,)`` int32 triangle indices, ascending.
    """
    role = "FLAME masks"
    d = _load_with(safe_pickle.load_pickle, role, path, encoding="latin1")
    if not isinstance(d, dict) or "face" not in d:
        keys = sorted(d) if isinstance(d, dict) else type(d).__name__
        raise _err(role, path, f"expected a dict with a 'face' entry, got {keys}")
    idx = _array(role, path, "face", _numbers(role, path, "face", d["face"]).reshape(-1), (None,), "i")
    idx = _indices(role, path, "face", idx, n_vertices, "vertices")
    inside = np.zeros(n_vertices, bool)
    inside[idx] = True
    region = np.flatnonzero(inside[faces].all(axis=1)).astype(np.int32)
    if region.size == 0:
        raise _err(role, path, "no triangle has all its vertices in the 'face' region")
    return region


# ----------------------------------------------------------------------------- conversion
def build_arrays(flame_pkl: PathLike, landmark_embedding: PathLike, mediapipe_embedding: PathLike,
                 l_eyelid: PathLike, r_eyelid: PathLike, masks_pkl: PathLike | None = None
                 ) -> dict[str, np.ndarray]:
    """Read and cross-check all inputs; return the face-model arrays (see ``format.SPEC``)."""
    arrays = read_flame_model(flame_pkl)
    V, F = arrays["v_template"].shape[0], arrays["faces"].shape[0]
    arrays.update(read_landmark_embedding(landmark_embedding, F))
    arrays.update(read_mediapipe_embedding(mediapipe_embedding, F))
    arrays["l_eyelid"] = read_eyelid(l_eyelid, V, "left")
    arrays["r_eyelid"] = read_eyelid(r_eyelid, V, "right")
    if masks_pkl is not None:
        arrays["face_region_faces"] = read_face_region(masks_pkl, arrays["faces"], V)
    return fmt.validate(arrays)


def _sha256(path: PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _default_model_id(flame_pkl: PathLike) -> str:
    name = Path(os.fspath(flame_pkl)).name
    return "flame2020" if name == "generic_model.pkl" else f"flame-{Path(name).stem}"


def convert_flame(flame_pkl: PathLike, landmark_embedding: PathLike, mediapipe_embedding: PathLike,
                  l_eyelid: PathLike, r_eyelid: PathLike, out_npz: PathLike,
                  masks_pkl: PathLike | None = None, model_id: str | None = None) -> Path:
    """Convert FLAME 2020 + SMIRK assets into a face-model ``.npz`` at ``out_npz``.

    Args:
        flame_pkl: FLAME ``generic_model.pkl``.
        landmark_embedding: DECA/SMIRK ``landmark_embedding.npy``.
        mediapipe_embedding: SMIRK ``mediapipe_landmark_embedding.npz``.
        l_eyelid, r_eyelid: SMIRK ``l_eyelid.npy``, ``r_eyelid.npy``.
        out_npz: output path (conventionally ``*.npz``); parent folders are created.
        masks_pkl: optional ``FLAME_masks.pkl``; adds ``face_region_faces``.
        model_id: stored id; default ``"flame2020"`` for ``generic_model.pkl``, else
            ``"flame-<stem>"``.

    Returns:
        The written path. Its notice states the FLAME licence and that the file must not be
        redistributed, plus the SHA-256 of every input.

    Raises:
        FaceModelError: an input is missing, truncated, or has the wrong structure (the message
            names the file); UnsafeFileError: a pickle names something outside the allow-list.
    """
    inputs = {"generic_model": flame_pkl, "landmark_embedding": landmark_embedding,
              "mediapipe_embedding": mediapipe_embedding, "l_eyelid": l_eyelid, "r_eyelid": r_eyelid}
    if masks_pkl is not None:
        inputs["masks"] = masks_pkl
    arrays = build_arrays(flame_pkl, landmark_embedding, mediapipe_embedding, l_eyelid, r_eyelid, masks_pkl)
    sources = "; ".join(f"{k}={Path(os.fspath(p)).name} sha256={_sha256(p)}" for k, p in inputs.items())
    notice = f"{FLAME_NOTICE} Sources: {sources}."
    out = Path(os.fspath(out_npz))
    out.parent.mkdir(parents=True, exist_ok=True)
    return fmt.save(out, arrays, model_id=model_id or _default_model_id(flame_pkl), notice=notice)


# ----------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``convert-flame`` options to ``parser`` (for a subcommand parser)."""
    parser.add_argument("--assets", metavar="DIR", type=Path,
                        help="SMIRK's assets/ folder: fills every input not given explicitly "
                             f"({', '.join(SMIRK_ASSET_LAYOUT.values())})")
    parser.add_argument("--flame", dest="flame_pkl", type=Path, help="FLAME 2020 generic_model.pkl")
    parser.add_argument("--landmark-embedding", type=Path, help="landmark_embedding.npy (DECA/SMIRK)")
    parser.add_argument("--mediapipe-embedding", type=Path, help="mediapipe_landmark_embedding.npz")
    parser.add_argument("--l-eyelid", type=Path, help="l_eyelid.npy")
    parser.add_argument("--r-eyelid", type=Path, help="r_eyelid.npy")
    parser.add_argument("--masks", dest="masks_pkl", type=Path,
                        help="FLAME_masks.pkl (optional: restricts the rendered face region)")
    parser.add_argument("--model-id", help="id stored in the file (default flame2020)")
    parser.add_argument("-o", "--output", required=True, type=Path, help="output face-model .npz")
    return parser


def _resolve_inputs(args: argparse.Namespace) -> dict[str, Path | None]:
    paths: dict[str, Path | None] = {}
    for key, rel in SMIRK_ASSET_LAYOUT.items():
        given = getattr(args, key)
        if given is None and args.assets is not None:
            cand = args.assets / rel
            given = cand if (key != "masks_pkl" or cand.is_file()) else None
        paths[key] = given
    missing = [k for k, p in paths.items() if p is None and k != "masks_pkl"]
    if missing:
        flags = {"flame_pkl": "--flame", "landmark_embedding": "--landmark-embedding",
                 "mediapipe_embedding": "--mediapipe-embedding", "l_eyelid": "--l-eyelid",
                 "r_eyelid": "--r-eyelid"}
        raise FaceModelError("convert-flame needs " + ", ".join(flags[k] for k in missing)
                             + " (or --assets pointing at SMIRK's assets/ folder)")
    return paths


DESCRIPTION = ("Convert FLAME 2020 + SMIRK assets into a smirk-edge face model (.npz). The output is "
               "derived from FLAME (MPI licence) and must not be redistributed.")


def run(args: argparse.Namespace) -> int:
    """Handler for a parser built with :func:`add_arguments`: convert, print the output path.

    Raises:
        FaceModelError, UnsafeFileError: see :func:`convert_flame`.
    """
    paths = _resolve_inputs(args)
    out = convert_flame(paths["flame_pkl"], paths["landmark_embedding"], paths["mediapipe_embedding"],
                        paths["l_eyelid"], paths["r_eyelid"], args.output, masks_pkl=paths["masks_pkl"],
                        model_id=args.model_id)
    print(out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``smirk-edge convert-flame``: parse ``argv``, convert, print the output path.

    Returns 0 on success. Errors are raised as :class:`FaceModelError` /
    :class:`UnsafeFileError` (the CLI prints them); bad options exit via argparse (status 2).
    """
    parser = add_arguments(argparse.ArgumentParser(prog="smirk-edge convert-flame", description=DESCRIPTION))
    return run(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
