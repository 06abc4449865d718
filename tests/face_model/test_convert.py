"""FLAME 2020 + SMIRK asset conversion on generated files of the real files' structure.

The real assets are licensed and absent here. The fixtures write files with exactly their
layout on a 60-vertex grid: ``generic_model.pkl`` is pickled in a subprocess that imports a
fake ``chumpy`` (pickling like chumpy's ``Ch``: ``__dict__`` minus ``_parents``/``_cache``)
and, for the Python-2-era module path, a fake ``scipy.sparse.csc``; the test process never
imports either. ``landmark_embedding.npy`` is written with numpy values and, when torch is
installed, with torch tensors as DECA/SMIRK ship it.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from factories import random_face_model_arrays  # tests/ is on sys.path (conftest.py)

from smirk_edge.errors import FaceModelError, UnsafeFileError
from smirk_edge.face_model import FaceModel
from smirk_edge.face_model import format as fmt
from smirk_edge.face_model.convert import (FLAME_NOTICE, build_arrays, convert_flame, main,
                                           read_flame_model, read_landmark_embedding)

HAS_SCIPY = importlib.util.find_spec("scipy") is not None
HAS_TORCH = importlib.util.find_spec("torch") is not None
NX, NY = 6, 10  # 60 vertices, 90 triangles

FAKE_CHUMPY = '''
import weakref
import numpy as np


class Ch(object):
    """Mimics chumpy.ch.Ch's pickling: __getstate__ drops _parents and _cache."""

    def __new__(cls, *args, **kwargs):
        result = super(Ch, cls).__new__(cls)
        object.__setattr__(result, "_dirty_vars", set())
        object.__setattr__(result, "_itr", None)
        object.__setattr__(result, "_parents", weakref.WeakKeyDictionary())
        object.__setattr__(result, "_cache", {"r": None, "drs": weakref.WeakKeyDictionary()})
        object.__setattr__(result, "_make_dense", False)
        object.__setattr__(result, "_make_sparse", False)
        object.__setattr__(result, "_depends_on_deps", {})
        if args:
            object.__setattr__(result, "x", np.asarray(args[0], np.float64))
            result._dirty_vars.add("x")
        return result

    def __getstate__(self):
        result = dict(self.__dict__)
        del result["_parents"]
        del result["_cache"]
        return result

    def __setstate__(self, d):
        d["_parents"] = weakref.WeakKeyDictionary()
        d["_cache"] = {"r": None, "drs": weakref.WeakKeyDictionary()}
        object.__setattr__(self, "__dict__", d)
'''

FAKE_OLD_SCIPY_CSC = '''
import numpy as np


class csc_matrix(object):
    """Instance attributes as SciPy 0.x pickled them (module path scipy.sparse.csc)."""

    def __init__(self, dense):
        dense = np.asarray(dense)
        cols = [np.flatnonzero(dense[:, j]) for j in range(dense.shape[1])]
        self.format = "csc"
        self.maxprint = 50
        self._shape = dense.shape
        self.indices = np.concatenate(cols).astype(np.int32)
        self.indptr = np.concatenate([[0], np.cumsum([len(c) for c in cols])]).astype(np.int32)
        self.data = np.concatenate([dense[c, j] for j, c in enumerate(cols)]).astype(np.float64)
        self._has_sorted_indices = True
'''

WRITER = '''
import pickle, sys
import numpy as np
from chumpy.ch import Ch

src, out, masks_out, protocol, sparse = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
z = np.load(src)
if sparse == "legacy":
    from scipy.sparse.csc import csc_matrix
    jreg = csc_matrix(z["J_regressor"])
elif sparse == "scipy":
    import scipy.sparse
    jreg = scipy.sparse.csc_matrix(z["J_regressor"])
else:
    jreg = z["J_regressor"]
model = {
    "f": z["f"], "J_regressor": jreg, "kintree_table": z["kintree_table"], "J": z["J"],
    "weights": z["weights"], "posedirs": z["posedirs"], "v_template": Ch(z["v_template"]),
    "shapedirs": Ch(z["shapedirs"]), "bs_style": "lbs", "bs_type": "lrotmin",
}
with open(out, "wb") as f:
    pickle.dump(model, f, protocol=protocol)
masks = {k[5:]: z[k] for k in z.files if k.startswith("mask_")}
with open(masks_out, "wb") as f:
    pickle.dump(masks, f, protocol=protocol)
'''

TORCH_LMK_WRITER = '''
import sys
import numpy as np
import torch
z = np.load(sys.argv[1])
d = {
    "static_lmk_faces_idx": z["static_lmk_faces_idx"],
    "static_lmk_bary_coords": z["static_lmk_bary_coords"],
    "dynamic_lmk_faces_idx": torch.from_numpy(z["dynamic_lmk_faces_idx"]).long(),
    "dynamic_lmk_bary_coords": torch.from_numpy(z["dynamic_lmk_bary_coords"]).float(),
    "full_lmk_faces_idx": z["full_lmk_faces_idx"],
    "full_lmk_bary_coords": z["full_lmk_bary_coords"],
}
np.save(sys.argv[2], d)
'''


# ----------------------------------------------------------------------------- fixtures
def _flame_source(seed: int = 0) -> dict[str, np.ndarray]:
    """FLAME-structured raw arrays (float64, FLAME key names) plus the expected face model."""
    a = random_face_model_arrays(NX, NY, seed=seed)
    rng = np.random.default_rng(seed + 100)
    V = a["v_template"].shape[0]
    jreg = a["J_regressor"].astype(np.float64)
    jreg[rng.random(jreg.shape) < 0.8] = 0.0  # sparse, as FLAME's is
    jreg[np.arange(5), np.arange(5) * 7] = 0.5
    jreg /= jreg.sum(1, keepdims=True)
    a["J_regressor"] = jreg.astype(np.float32)
    extra = rng.standard_normal((V, 3, 50)) * 1e-3  # expression columns 50..99, dropped
    shapedirs = np.concatenate([a["shapedirs"], a["exprdirs"], extra], axis=2).astype(np.float64)
    v = a["v_template"].astype(np.float64)
    face_vertices = np.flatnonzero((np.abs(v[:, 0]) < 0.05) & (v[:, 1] > -0.08))
    src = {
        "v_template": v,
        "shapedirs": shapedirs,
        "posedirs": a["posedirs"].astype(np.float64),
        "weights": a["lbs_weights"].astype(np.float64),
        "kintree_table": np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64),
        "f": a["faces"].astype(np.uint32),
        "J_regressor": jreg,
        "J": jreg @ v,
        "mask_face": face_vertices.astype(np.int64),
        "mask_neck": np.arange(0, NX, dtype=np.int64),
        "mask_left_eyeball": np.array([7, 8], dtype=np.int64),
        "static_lmk_faces_idx": a["lmk_faces_idx"].astype(np.int64),
        "static_lmk_bary_coords": a["lmk_bary_coords"].astype(np.float64),
        "dynamic_lmk_faces_idx": a["dynamic_lmk_faces_idx"].astype(np.int64),
        "dynamic_lmk_bary_coords": a["dynamic_lmk_bary_coords"].astype(np.float32),
        "full_lmk_faces_idx": a["full_lmk_faces_idx"][None].astype(np.int64),
        "full_lmk_bary_coords": a["full_lmk_bary_coords"][None].astype(np.float64),
    }
    return src, a


def _write_fake_packages(root: Path) -> Path:
    (root / "chumpy").mkdir(parents=True)
    (root / "chumpy" / "__init__.py").write_text("")
    (root / "chumpy" / "ch.py").write_text(textwrap.dedent(FAKE_CHUMPY))
    old = root / "oldscipy"
    (old / "scipy" / "sparse").mkdir(parents=True)
    (old / "scipy" / "__init__.py").write_text("")
    (old / "scipy" / "sparse" / "__init__.py").write_text("")
    (old / "scipy" / "sparse" / "csc.py").write_text(textwrap.dedent(FAKE_OLD_SCIPY_CSC))
    (root / "writer.py").write_text(textwrap.dedent(WRITER))
    (root / "torch_lmk_writer.py").write_text(textwrap.dedent(TORCH_LMK_WRITER))
    return root


def _run(args: list[str], pythonpath: list[Path]) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(p) for p in pythonpath))
    res = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr


def write_flame_pkl(tmp: Path, fake: Path, src_npz: Path, protocol: int = 2, sparse: str = "legacy",
                    name: str = "generic_model.pkl") -> tuple[Path, Path]:
    """Pickle generic_model.pkl and FLAME_masks.pkl in a subprocess (fake chumpy on its path)."""
    out, masks = tmp / name, tmp / f"masks_{protocol}_{sparse}.pkl"
    path = [fake] + ([fake / "oldscipy"] if sparse == "legacy" else [])
    _run([str(fake / "writer.py"), str(src_npz), str(out), str(masks), str(protocol), sparse], path)
    return out, masks


def write_other_assets(tmp: Path, src: dict, mp_order: np.ndarray | None = None) -> dict[str, Path]:
    lmk = {k: src[k] for k in ("static_lmk_faces_idx", "static_lmk_bary_coords", "dynamic_lmk_faces_idx",
                               "dynamic_lmk_bary_coords", "full_lmk_faces_idx", "full_lmk_bary_coords")}
    paths = {"lmk": tmp / "landmark_embedding.npy", "mp": tmp / "mediapipe_landmark_embedding.npz",
             "l": tmp / "l_eyelid.npy", "r": tmp / "r_eyelid.npy"}
    np.save(paths["lmk"], np.array(lmk, dtype=object), allow_pickle=True)
    order = np.arange(fmt.N_MP_LMK) if mp_order is None else mp_order
    np.savez(paths["mp"], lmk_face_idx=src["mp_faces"][order].astype(np.int64),
             lmk_b_coords=src["mp_bary"][order].astype(np.float64),
             landmark_indices=fmt.MEDIAPIPE_105_INDICES[order].astype(np.int64))
    np.save(paths["l"], src["l_eyelid"].astype(np.float64))
    np.save(paths["r"], src["r_eyelid"].astype(np.float64))
    return paths


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("flame_assets")
    fake = _write_fake_packages(tmp / "fake_pkgs")
    src, expected = _flame_source()
    src["mp_faces"], src["mp_bary"] = expected["mp_lmk_faces_idx"], expected["mp_lmk_bary_coords"]
    src["l_eyelid"], src["r_eyelid"] = expected["l_eyelid"], expected["r_eyelid"]
    src_npz = tmp / "src.npz"
    np.savez(src_npz, **{k: v for k, v in src.items() if isinstance(v, np.ndarray)})
    flame, masks = write_flame_pkl(tmp, fake, src_npz)
    paths = write_other_assets(tmp, src)
    return {"tmp": tmp, "fake": fake, "src": src, "src_npz": src_npz, "expected": expected,
            "flame": flame, "masks": masks, **paths}


def _convert(assets, out: Path, **kw) -> Path:
    args = dict(flame_pkl=assets["flame"], landmark_embedding=assets["lmk"],
                mediapipe_embedding=assets["mp"], l_eyelid=assets["l"], r_eyelid=assets["r"], out_npz=out)
    args.update(kw)
    return convert_flame(**args)


# ----------------------------------------------------------------------------- reading
def test_fake_packages_never_imported_here(assets):
    assert "chumpy" not in sys.modules
    assert "chumpy.ch" not in sys.modules


def test_fake_file_has_flame_structure(assets):
    """The generated pickle uses the globals the real file uses (chumpy Ch, old SciPy path)."""
    import pickletools

    data = assets["flame"].read_bytes()
    assert data[:2] == b"\x80\x02"  # protocol 2, as Python-2-era files
    globals_ = {str(arg) for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"}
    assert "chumpy.ch Ch" in globals_
    assert "scipy.sparse.csc csc_matrix" in globals_
    assert any(g.endswith("multiarray _reconstruct") for g in globals_)


@pytest.mark.parametrize("protocol,sparse", [
    (2, "legacy"), (0, "legacy"), (1, "dense"),
    pytest.param(2, "scipy", marks=pytest.mark.skipif(not HAS_SCIPY, reason="scipy not installed")),
    pytest.param(4, "scipy", marks=pytest.mark.skipif(not HAS_SCIPY, reason="scipy not installed")),
])
def test_read_flame_model_variants(assets, tmp_path, protocol, sparse):
    pkl, _ = write_flame_pkl(tmp_path, assets["fake"], assets["src_npz"], protocol, sparse)
    got = read_flame_model(pkl)
    exp, src = assets["expected"], assets["src"]
    np.testing.assert_array_equal(got["v_template"], src["v_template"].astype(np.float32))
    np.testing.assert_array_equal(got["shapedirs"], src["shapedirs"][:, :, :300].astype(np.float32))
    np.testing.assert_array_equal(got["exprdirs"], src["shapedirs"][:, :, 300:350].astype(np.float32))
    np.testing.assert_array_equal(got["exprdirs"], exp["exprdirs"])
    np.testing.assert_array_equal(got["posedirs"], exp["posedirs"])
    np.testing.assert_array_equal(got["J_regressor"], src["J_regressor"].astype(np.float32))
    np.testing.assert_array_equal(got["parents"], [-1, 0, 1, 1, 1])
    np.testing.assert_array_equal(got["lbs_weights"], exp["lbs_weights"])
    np.testing.assert_array_equal(got["faces"], exp["faces"])
    assert got["faces"].dtype == np.int32


def test_landmark_embedding_numpy_values(assets):
    got = read_landmark_embedding(assets["lmk"], n_faces=len(assets["expected"]["faces"]))
    exp = assets["expected"]
    for k in ("lmk_faces_idx", "lmk_bary_coords", "dynamic_lmk_faces_idx", "dynamic_lmk_bary_coords",
              "full_lmk_faces_idx", "full_lmk_bary_coords"):
        np.testing.assert_array_equal(got[k], exp[k], err_msg=k)
    assert got["full_lmk_faces_idx"].shape == (68,) and got["full_lmk_bary_coords"].shape == (68, 3)


@pytest.mark.skipif(not HAS_TORCH, reason="torch not installed: torch-tensor landmark_embedding not generated")
def test_landmark_embedding_with_torch_tensors(assets, tmp_path):
    """DECA/SMIRK's file holds torch tensors for the dynamic entries; read them torch-free."""
    src = tmp_path / "lmk_src.npz"
    np.savez(src, **{k: assets["src"][k] for k in (
        "static_lmk_faces_idx", "static_lmk_bary_coords", "dynamic_lmk_faces_idx",
        "dynamic_lmk_bary_coords", "full_lmk_faces_idx", "full_lmk_bary_coords")})
    out = tmp_path / "landmark_embedding.npy"
    _run([str(assets["fake"] / "torch_lmk_writer.py"), str(src), str(out)], [])
    assert b"torch._utils" in out.read_bytes() and b"_load_from_bytes" in out.read_bytes()
    got = read_landmark_embedding(out, n_faces=len(assets["expected"]["faces"]))
    exp = assets["expected"]
    np.testing.assert_array_equal(got["dynamic_lmk_faces_idx"], exp["dynamic_lmk_faces_idx"])
    np.testing.assert_array_equal(got["dynamic_lmk_bary_coords"], exp["dynamic_lmk_bary_coords"])
    np.testing.assert_array_equal(got["lmk_faces_idx"], exp["lmk_faces_idx"])


# ----------------------------------------------------------------------------- conversion
def test_convert_roundtrip_values(assets, tmp_path):
    out = _convert(assets, tmp_path / "sub" / "flame.npz", masks_pkl=assets["masks"])
    arrays, meta = fmt.load_arrays(out)
    exp, src = assets["expected"], assets["src"]
    for k in ("shapedirs", "exprdirs", "posedirs", "lbs_weights", "faces", "parents", "l_eyelid", "r_eyelid",
              "lmk_faces_idx", "lmk_bary_coords", "dynamic_lmk_faces_idx", "dynamic_lmk_bary_coords",
              "full_lmk_faces_idx", "full_lmk_bary_coords", "mp_lmk_faces_idx", "mp_lmk_bary_coords",
              "mp_landmark_indices"):
        np.testing.assert_array_equal(arrays[k], exp[k], err_msg=k)
    np.testing.assert_array_equal(arrays["v_template"], src["v_template"].astype(np.float32))
    np.testing.assert_allclose(arrays["J_regressor"], src["J_regressor"], rtol=1e-6)
    face = set(src["mask_face"].tolist())
    want = [i for i, tri in enumerate(exp["faces"]) if all(int(v) in face for v in tri)]
    assert 0 < len(want) < len(exp["faces"])
    np.testing.assert_array_equal(arrays["face_region_faces"], want)
    assert meta["model_id"] == "flame2020"
    assert meta["notice"].startswith(FLAME_NOTICE)
    assert "must not be redistributed" in meta["notice"].lower() or "do not redistribute" in meta["notice"].lower()
    assert "generic_model=generic_model.pkl sha256=" in meta["notice"]


def test_convert_without_masks_and_model_id(assets, tmp_path):
    out = _convert(assets, tmp_path / "m.npz", model_id="my-flame")
    m = FaceModel.load(out)
    assert m.model_id == "my-flame"
    assert "face_region_faces" not in m.arrays
    assert m.n_vertices == NX * NY


def _rodrigues64(r: np.ndarray) -> np.ndarray:
    th = np.linalg.norm(r)
    if th < 1e-12:
        return np.eye(3)
    k = r / th
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(th) * K + (1 - np.cos(th)) * K @ K


def _reference_decode(src, exp, beta, psi, pose, jaw, eyelid):
    """Plain float64 FLAME as SMIRK uses it, written from the raw FLAME-keyed inputs."""
    v = src["v_template"] + src["shapedirs"][:, :, :300] @ beta + src["shapedirs"][:, :, 300:350] @ psi
    Jr = src["J_regressor"] @ v
    parents = [-1, 0, 1, 1, 1]  # from kintree_table
    rots = [_rodrigues64(r) for r in (pose, np.zeros(3), jaw, np.zeros(3), np.zeros(3))]
    feat = np.concatenate([(R - np.eye(3)).ravel() for R in rots[1:]])
    v = v + src["posedirs"] @ feat
    G = []
    for j in range(5):
        L = np.eye(4)
        L[:3, :3] = rots[j]
        L[:3, 3] = Jr[j] - (Jr[parents[j]] if j else 0)
        G.append(L if j == 0 else G[parents[j]] @ L)
    A = []
    for j in range(5):
        M = G[j].copy()
        M[:3, 3] -= G[j][:3, :3] @ Jr[j]
        A.append(M)
    A = np.stack(A)
    vh = np.concatenate([v, np.ones((len(v), 1))], 1)
    T = np.einsum("vj,jmn->vmn", src["weights"], A)
    out = np.einsum("vmn,vn->vm", T, vh)[:, :3]
    out = out + src_eyelid(exp, "r") * eyelid[1] + src_eyelid(exp, "l") * eyelid[0]
    # landmarks: neck chain rotation (neck then global) -> yaw -> contour row
    R = rots[1] @ rots[0]
    yaw = np.degrees(np.arctan2(-R[2, 0], np.hypot(R[0, 0], R[1, 0])))
    y = int(np.round(min(yaw, 39.0)))
    row = y if y >= 0 else (78 if y < -39 else 39 - y)
    faces = src["f"].astype(np.int64)

    def bary(fi, bc):
        return np.einsum("lk,lkc->lc", bc, out[faces[fi]])

    lmk68 = np.concatenate([bary(src["dynamic_lmk_faces_idx"][row], src["dynamic_lmk_bary_coords"][row]),
                            bary(src["static_lmk_faces_idx"], src["static_lmk_bary_coords"])])
    lmk105 = bary(src["mp_faces"], src["mp_bary"])
    return out, lmk68, lmk105, row


def src_eyelid(exp, side):
    return exp[f"{side}_eyelid"].astype(np.float64)


@pytest.mark.parametrize("yaw", [0.3, -0.45])
def test_decode_matches_independent_reference(assets, tmp_path, yaw):
    model = FaceModel.load(_convert(assets, tmp_path / "m.npz"))
    rng = np.random.default_rng(3)
    beta, psi = rng.standard_normal(300), rng.standard_normal(50)
    pose, jaw = np.array([0.1, yaw, -0.05]), np.array([0.25, 0.02, -0.03])
    eyelid = np.array([0.3, 0.8])
    geo = model.decode(shape=beta, expression=psi, pose=pose, jaw=jaw, eyelid=eyelid)
    verts, lmk68, lmk105, row = _reference_decode(assets["src"], assets["expected"], beta, psi, pose, jaw, eyelid)
    assert row != 0  # the contour table row actually depends on the yaw
    np.testing.assert_allclose(geo.vertices[0], verts, atol=2e-6)
    np.testing.assert_allclose(geo.landmarks68[0], lmk68, atol=2e-6)
    np.testing.assert_allclose(geo.landmarks105[0], lmk105, atol=2e-6)


def test_mediapipe_rows_reordered_to_smirk_order(assets, tmp_path):
    perm = np.random.default_rng(1).permutation(fmt.N_MP_LMK)
    paths = write_other_assets(tmp_path, assets["src"], mp_order=perm)
    arrays = build_arrays(assets["flame"], paths["lmk"], paths["mp"], paths["l"], paths["r"])
    np.testing.assert_array_equal(arrays["mp_landmark_indices"], fmt.MEDIAPIPE_105_INDICES)
    np.testing.assert_array_equal(arrays["mp_lmk_faces_idx"], assets["expected"]["mp_lmk_faces_idx"])
    np.testing.assert_array_equal(arrays["mp_lmk_bary_coords"], assets["expected"]["mp_lmk_bary_coords"])


def test_cli_main_with_assets_dir(assets, tmp_path, capsys):
    root = tmp_path / "assets"
    layout = {"FLAME2020/generic_model.pkl": assets["flame"], "landmark_embedding.npy": assets["lmk"],
              "mediapipe_landmark_embedding/mediapipe_landmark_embedding.npz": assets["mp"],
              "l_eyelid.npy": assets["l"], "r_eyelid.npy": assets["r"],
              "FLAME_masks/FLAME_masks.pkl": assets["masks"]}
    for rel, p in layout.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(p.read_bytes())
    out = tmp_path / "o.npz"
    assert main(["--assets", str(root), "-o", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    assert "face_region_faces" in FaceModel.load(out).arrays
    with pytest.raises(FaceModelError, match="--flame"):
        main(["--landmark-embedding", str(assets["lmk"]), "-o", str(out)])


def test_subcommand_wiring_with_add_arguments_and_run(assets, tmp_path):
    """How the CLI can mount it: options first after the subcommand name."""
    import argparse

    from smirk_edge.face_model import convert

    parser = argparse.ArgumentParser(prog="smirk-edge")
    sub = parser.add_subparsers(dest="command")
    convert.add_arguments(sub.add_parser("convert-flame", description=convert.DESCRIPTION))
    out = tmp_path / "o.npz"
    args = parser.parse_args(["convert-flame", "--flame", str(assets["flame"]), "--landmark-embedding",
                              str(assets["lmk"]), "--mediapipe-embedding", str(assets["mp"]), "--l-eyelid",
                              str(assets["l"]), "--r-eyelid", str(assets["r"]), "-o", str(out)])
    assert convert.run(args) == 0
    assert FaceModel.load(out).model_id == "flame2020"


# ----------------------------------------------------------------------------- errors
def _pickle_dict(path: Path, d: dict) -> Path:
    path.write_bytes(pickle.dumps(d, protocol=2))
    return path


def _flame_dict(assets) -> dict:
    src = assets["src"]
    return {k: src[k] for k in ("v_template", "shapedirs", "posedirs", "weights", "kintree_table", "f",
                                "J_regressor", "J")}


def test_error_names_file_wrong_eyelid_vertex_count(assets, tmp_path):
    bad = tmp_path / "l_eyelid.npy"
    np.save(bad, np.zeros((59, 3)))
    with pytest.raises(FaceModelError, match=r"left eyelid.*l_eyelid\.npy.*\(60, 3\)"):
        _convert(assets, tmp_path / "o.npz", l_eyelid=bad)


def test_error_faces_out_of_range(assets, tmp_path):
    d = _flame_dict(assets)
    d["f"] = d["f"].copy()
    d["f"][3, 1] = 60
    bad = _pickle_dict(tmp_path / "generic_model.pkl", d)
    with pytest.raises(FaceModelError, match=r"FLAME model.*generic_model\.pkl.*'f' indexes vertices"):
        read_flame_model(bad)


def test_error_too_few_blendshape_columns(assets, tmp_path):
    d = _flame_dict(assets)
    d["shapedirs"] = d["shapedirs"][:, :, :340]
    with pytest.raises(FaceModelError, match="340 columns; need at least 350"):
        read_flame_model(_pickle_dict(tmp_path / "g.pkl", d))


def test_error_missing_keys_and_wrong_posedirs(assets, tmp_path):
    d = _flame_dict(assets)
    del d["J_regressor"]
    with pytest.raises(FaceModelError, match="missing keys.*J_regressor"):
        read_flame_model(_pickle_dict(tmp_path / "g1.pkl", d))
    d = _flame_dict(assets)
    d["posedirs"] = d["posedirs"][:, :, :27]
    with pytest.raises(FaceModelError, match=r"'posedirs' has shape \(60, 3, 27\)"):
        read_flame_model(_pickle_dict(tmp_path / "g2.pkl", d))


def test_error_landmark_faces_out_of_range(assets, tmp_path):
    lmk = {k: assets["src"][k].copy() for k in (
        "static_lmk_faces_idx", "static_lmk_bary_coords", "dynamic_lmk_faces_idx",
        "dynamic_lmk_bary_coords", "full_lmk_faces_idx", "full_lmk_bary_coords")}
    lmk["dynamic_lmk_faces_idx"][5, 2] = 9975  # a real-FLAME index on a 90-triangle mesh
    bad = tmp_path / "landmark_embedding.npy"
    np.save(bad, np.array(lmk, dtype=object), allow_pickle=True)
    with pytest.raises(FaceModelError, match=r"landmark embedding.*'dynamic_lmk_faces_idx' indexes triangles"):
        _convert(assets, tmp_path / "o.npz", landmark_embedding=bad)


def test_error_mediapipe_indices_differ(assets, tmp_path):
    bad = tmp_path / "mp.npz"
    idx = fmt.MEDIAPIPE_105_INDICES.astype(np.int64).copy()
    idx[0] = 1  # not one of the 105
    np.savez(bad, lmk_face_idx=assets["expected"]["mp_lmk_faces_idx"],
             lmk_b_coords=assets["expected"]["mp_lmk_bary_coords"], landmark_indices=idx)
    with pytest.raises(FaceModelError, match=r"MediaPipe landmark embedding.*mp\.npz.*not SMIRK's 105"):
        _convert(assets, tmp_path / "o.npz", mediapipe_embedding=bad)
    np.savez(bad, lmk_face_idx=assets["expected"]["mp_lmk_faces_idx"])
    with pytest.raises(FaceModelError, match="missing arrays"):
        _convert(assets, tmp_path / "o.npz", mediapipe_embedding=bad)


def test_truncated_and_garbage_inputs(assets, tmp_path):
    data = assets["flame"].read_bytes()
    trunc = tmp_path / "generic_model.pkl"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(FaceModelError, match=r"FLAME model.*generic_model\.pkl.*truncated or corrupt"):
        _convert(assets, tmp_path / "o.npz", flame_pkl=trunc)
    garbage = tmp_path / "landmark_embedding.npy"
    garbage.write_bytes(os.urandom(4096))
    with pytest.raises(FaceModelError, match=r"landmark embedding.*truncated or corrupt"):
        _convert(assets, tmp_path / "o.npz", landmark_embedding=garbage)
    lmk_trunc = tmp_path / "lmk_trunc.npy"
    lmk_trunc.write_bytes(assets["lmk"].read_bytes()[:-100])
    with pytest.raises(FaceModelError, match="truncated or corrupt"):
        _convert(assets, tmp_path / "o.npz", landmark_embedding=lmk_trunc)
    eyelid = tmp_path / "r_eyelid.npy"
    eyelid.write_bytes(assets["r"].read_bytes()[:200])
    with pytest.raises(FaceModelError, match=r"right eyelid.*r_eyelid\.npy"):
        _convert(assets, tmp_path / "o.npz", r_eyelid=eyelid)
    with pytest.raises(FaceModelError, match="file not found"):
        _convert(assets, tmp_path / "o.npz", flame_pkl=tmp_path / "nope.pkl")
    assert not (tmp_path / "o.npz").exists()


def test_malicious_flame_pickle_is_refused_and_not_run(assets, tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    d = _flame_dict(assets)
    d["bs_style"] = Evil()
    bad = tmp_path / "generic_model.pkl"
    bad.write_bytes(pickle.dumps(d, protocol=2))
    with pytest.raises(UnsafeFileError, match=r"generic_model\.pkl.*refused to load global (posix|nt|os)\.system"):
        _convert(assets, tmp_path / "o.npz", flame_pkl=bad)
    assert not marker.exists()
    # and through the optional masks file
    bad_masks = tmp_path / "FLAME_masks.pkl"
    bad_masks.write_bytes(pickle.dumps({"face": Evil()}, protocol=2))
    with pytest.raises(UnsafeFileError, match="FLAME masks"):
        _convert(assets, tmp_path / "o.npz", masks_pkl=bad_masks)
    assert not marker.exists()


def test_chumpy_expression_without_x_is_refused(assets, tmp_path):
    """A chumpy object that is a computed expression (no 'x') cannot be turned into an array."""
    script = tmp_path / "w.py"
    script.write_text(textwrap.dedent('''
        import pickle, sys
        from chumpy.ch import Ch
        c = Ch()
        with open(sys.argv[1], "wb") as f:
            pickle.dump({"v_template": c}, f, protocol=2)
    '''))
    out = tmp_path / "g.pkl"
    _run([str(script), str(out)], [assets["fake"]])
    with pytest.raises(FaceModelError, match="without an 'x' array"):
        read_flame_model(out)
