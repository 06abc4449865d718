"""The numpy decoder (SDK) and the torch decoder (training/export) agree to 1e-5."""

import numpy as np
import pytest

from factories import random_face_model_arrays, random_params
from smirk_edge.face_model import FaceModel
from smirk_edge.face_model import model as np_model

torch = pytest.importorskip("torch", reason="torch not installed (pip install 'smirk-edge[torch]')")
from smirk_edge.training.face_model import FaceModelLayer, batch_rodrigues, project_ndc, yaw_bin  # noqa: E402
from smirk_edge.camera import project_ndc as np_project_ndc  # noqa: E402

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def models():
    arrays = random_face_model_arrays(seed=3)
    return FaceModel(arrays), FaceModelLayer(arrays)


def _torch_decode(layer, p):
    t = {k: torch.from_numpy(v) for k, v in p.items()}
    with torch.no_grad():
        return {k: v.numpy() for k, v in layer(t["shape"], t["expression"], t["pose"], t["jaw"], t["eyelid"]).items()}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_numpy_and_torch_agree(models, seed):
    npm, layer = models
    p = random_params(16, seed=seed)
    g = npm.decode(**p)
    out = _torch_decode(layer, p)
    np.testing.assert_allclose(g.vertices, out["vertices"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(g.landmarks68, out["landmarks68"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(g.landmarks105, out["landmarks105"], atol=1e-5, rtol=0)


def test_dynamic_contour_follows_yaw_in_both(models):
    """Head yaw from -60 to +60 degrees walks through the contour table; both decoders pick the same rows."""
    npm, layer = models
    yaws = np.deg2rad(np.arange(-60, 61, 3)).astype(np.float32)
    B = len(yaws)
    pose = np.zeros((B, 3), np.float32)
    pose[:, 1] = yaws + 0.004  # stay off the .5 rounding boundaries
    rot_np = np_model.rodrigues(pose)
    rows_np = np_model.yaw_bin(rot_np)
    rows_t = yaw_bin(batch_rodrigues(torch.from_numpy(pose))).numpy()
    np.testing.assert_array_equal(rows_np, rows_t)
    assert len(set(rows_np.tolist())) >= 27, "contour rows should change with yaw"
    assert rows_np[yaws.argmin()] == 78 and rows_np[yaws.argmax()] == 39  # clamped at -39 / +39
    p = {"shape": np.zeros((B, 300), np.float32), "expression": np.zeros((B, 50), np.float32),
         "pose": pose, "jaw": np.zeros((B, 3), np.float32), "eyelid": np.zeros((B, 2), np.float32)}
    g = npm.decode(**p)
    out = _torch_decode(layer, p)
    np.testing.assert_allclose(g.landmarks68, out["landmarks68"], atol=1e-5, rtol=0)
    # the contour (first 17) differs between the extremes; the static 51 are posed the same way
    assert np.abs(g.landmarks68[0, :17] - g.landmarks68[-1, :17]).max() > 1e-4


def test_zero_parameters_give_template(models):
    npm, layer = models
    g = npm.decode(shape=np.zeros(300), expression=np.zeros(50), pose=np.zeros(3), jaw=np.zeros(3))
    np.testing.assert_allclose(g.vertices[0], npm.v_template, atol=1e-6)


def test_eyelids_are_added_after_skinning(models):
    npm, _ = models
    p = random_params(2, seed=5)
    p["eyelid"] = np.zeros((2, 2), np.float32)
    base = npm.decode(**p).vertices
    p["eyelid"][:, 0] = 1.0  # left only
    left = npm.decode(**p).vertices
    np.testing.assert_allclose(left - base, np.broadcast_to(npm.l_eyelid, base.shape), atol=1e-6)


def test_projection_matches(models):
    rng = np.random.default_rng(0)
    pts = rng.standard_normal((4, 10, 3)).astype(np.float32) * 0.1
    cam = np.array([[7, 0, 0], [8, 0.01, -0.02], [6.5, -0.03, 0.0], [9, 0, 0.05]], np.float32)
    a = np_project_ndc(pts, cam)
    b = project_ndc(torch.from_numpy(pts), torch.from_numpy(cam)).numpy()
    np.testing.assert_allclose(a, b, atol=1e-6)
    # x = s(X + tx), y = -s(Y + ty), z = -sZ
    np.testing.assert_allclose(a[1, 0], [8 * (pts[1, 0, 0] + 0.01), -8 * (pts[1, 0, 1] - 0.02), -8 * pts[1, 0, 2]],
                               rtol=1e-5)
