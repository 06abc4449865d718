"""Re-fitting the 68-point embedding: on meshes of the stand-in whose 'annotations' come from a
known, displaced embedding, the refit finds the displaced points, helps faces it did not see, and
writes a face model that loads."""

from __future__ import annotations

import numpy as np
import pytest

from smirk_edge.face_model import FaceModel, format as fmt, rodrigues
from smirk_edge.face_model.model import yaw_bin
from smirk_edge.training.standin import mesh as M
from smirk_edge.training.standin.refit68 import RefitOptions, landmarks68_px, nme68, refit_embedding


def _faces(model: FaceModel, n: int, seed: int):
    rng = np.random.default_rng(seed)
    shape = np.zeros((n, 300), np.float32)
    shape[:, :20] = rng.normal(0, 1, (n, 20))
    expr = np.zeros((n, 50), np.float32)
    expr[:, :16] = rng.uniform(0, 0.6, (n, 16)) * (rng.random((n, 16)) < 0.3)
    pose = np.zeros((n, 3), np.float32)
    pose[:, 0] = rng.uniform(-0.25, 0.25, n)
    pose[:, 1] = np.radians(rng.uniform(-35, 35, n))
    g = model.decode(shape=shape, expression=expr, pose=pose)
    scale = rng.uniform(1500, 2500, n)[:, None, None]
    shift = rng.uniform(150, 350, (n, 1, 2))
    px = g.vertices[..., :2] * np.array([1.0, -1.0]) * scale + shift  # orthographic, y down
    return px, yaw_bin(rodrigues(pose))


def _displaced(arrays, rng):
    """The stand-in's embedding with every static point moved to a random nearby surface point."""
    T, F = arrays["v_template"].astype(np.float64), arrays["faces"].astype(np.int64)
    out = {k: np.array(v) for k, v in arrays.items()}
    moved = np.zeros((51, 3))
    for k in range(51):
        p = arrays["lmk_bary_coords"][k] @ T[F[arrays["lmk_faces_idx"][k]]]
        d = rng.normal(size=3)
        q = p + 0.004 * d / np.linalg.norm(d)
        t, b, _ = M.closest_point_on_mesh(q, T, F)
        out["lmk_faces_idx"][k], out["lmk_bary_coords"][k] = t, b
        moved[k] = b @ T[F[t]]
    return out, moved


@pytest.fixture(scope="module")
def case():
    model = FaceModel.standin()
    arrays = {k: np.array(v) for k, v in model.arrays.items()}
    truth, moved = _displaced(arrays, np.random.default_rng(3))
    fit_px, fit_rows = _faces(model, 160, seed=1)
    test_px, test_rows = _faces(model, 80, seed=2)
    gt_fit = landmarks68_px(fit_px, fit_rows, truth)
    gt_test = landmarks68_px(test_px, test_rows, truth)
    new, report = refit_embedding(arrays, fit_px, fit_rows, gt_fit, RefitOptions(min_faces=15))
    return dict(arrays=arrays, truth=truth, moved=moved, new=new, report=report,
                test=(test_px, test_rows, gt_test), fit=(fit_px, fit_rows, gt_fit))


def test_refit_finds_the_displaced_points(case):
    new, T, F = case["new"], case["arrays"]["v_template"], case["arrays"]["faces"]
    found = np.einsum("kc,kcd->kd", new["lmk_bary_coords"], T[F[new["lmk_faces_idx"]]])
    start = np.einsum("kc,kcd->kd", case["arrays"]["lmk_bary_coords"], T[F[case["arrays"]["lmk_faces_idx"]]])
    err = np.linalg.norm(found - case["moved"], axis=1)
    assert np.linalg.norm(start - case["moved"], axis=1).mean() > 0.0025
    assert err.mean() < 0.001, err  # within a millimetre of where the 'annotators' put them


def test_refit_helps_faces_it_did_not_see(case):
    px, rows, gt = case["test"]
    before = nme68(landmarks68_px(px, rows, case["arrays"]), gt)
    after = nme68(landmarks68_px(px, rows, case["new"]), gt)
    assert case["report"]["nme68_after"] < case["report"]["nme68_before"] / 3
    assert after < before / 3, (before, after)


def test_refit_keeps_a_correct_contour(case):
    px, rows, gt = case["test"]
    before = landmarks68_px(px, rows, case["arrays"])[:, :17]
    after = landmarks68_px(px, rows, case["new"])[:, :17]
    scale = np.sqrt(np.prod(gt.max(1) - gt.min(1), axis=1))
    e0 = (np.linalg.norm(before - gt[:, :17], axis=-1) / scale[:, None]).mean()
    e1 = (np.linalg.norm(after - gt[:, :17], axis=-1) / scale[:, None]).mean()
    assert e0 < 1e-6 and e1 < 0.004  # smoothing along the rows costs little where the table was right


def test_refit_writes_a_face_model_that_loads(case, tmp_path):
    new = case["new"]
    assert np.array_equal(new["full_lmk_faces_idx"][:17], new["dynamic_lmk_faces_idx"][0])
    assert np.array_equal(new["full_lmk_faces_idx"][17:], new["lmk_faces_idx"])
    path = fmt.save(tmp_path / "m.npz", new, model_id="refit-test")
    m = FaceModel.load(path)
    assert m.model_id == "refit-test"
    g = m.decode()
    assert np.isfinite(g.landmarks68).all()


def test_refit_rejects_mismatched_inputs(case):
    px, rows, gt = case["fit"]
    with pytest.raises(ValueError, match="gt68"):
        refit_embedding(case["arrays"], px, rows, gt[:10])
