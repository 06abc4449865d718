"""Evaluation: metrics, probe, synthetic recovery and the landmark report with its baseline."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_nme_and_constant_camera():
    from smirk_edge.training.evaluate import fit_constant_camera, landmark_nme

    gt = np.array([[[0, 0], [10, 0], [0, 40], [10, 40]]], float)  # box 10 x 40 -> size 20
    assert landmark_nme(gt + [3, 4], gt)[0] == pytest.approx(5 / 20)
    model = np.random.default_rng(0).normal(size=(30, 2)) * 0.05
    cam = np.array([7.5, 0.01, -0.02])
    tgt = np.stack([cam[0] * (model[:, 0] + cam[1]), -cam[0] * (model[:, 1] + cam[2])], 1)[None].repeat(3, 0)
    np.testing.assert_allclose(fit_constant_camera(model, tgt), cam, atol=1e-9)


def test_linear_probe_on_separable_features():
    from smirk_edge.training.evaluate import linear_probe

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    X = np.eye(3)[y] * 3 + rng.normal(size=(300, 3)) * 0.3
    labels = np.array(["a", "b", "c"])[y]
    groups = [f"s{i // 3}" for i in range(300)]
    r = linear_probe(X, labels, groups, folds=5)
    assert r["accuracy"] > 0.95 and r["n"] == 300
    assert 0.2 < r["majority_rate"] < 0.5


def _predictor(tmp_path):
    from smirk_edge.training.checkpoint import save_checkpoint
    from smirk_edge.training.encoder import EncoderConfig, SmirkEncoder
    from smirk_edge.training.evaluate import TorchPredictor

    torch.manual_seed(0)
    enc = SmirkEncoder(EncoderConfig.tiny())
    enc.init_weights()
    path = save_checkpoint(tmp_path / "tiny.pt", enc)
    return TorchPredictor(path, batch=8), path


def _synthetic_table(n=6):
    from smirk_edge.training.data import FaceTable
    from smirk_edge.training.synthetic import SyntheticFaces

    sf = SyntheticFaces(image_size=224)
    b = sf.batch(n, torch.Generator().manual_seed(5))
    imgs = [np.ascontiguousarray((im.permute(1, 2, 0).numpy()[..., ::-1] * 255).astype(np.uint8)) for im in b["image"]]
    px = lambda t: ((t + 1) * 112).numpy().astype(np.float32)  # noqa: E731
    return FaceTable(np.array([f"syn{i}" for i in range(n)]), px(b["landmarks478"]), px(b["landmarks68"]),
                     lambda i: imgs[i], "synthetic")


def test_landmark_report_and_contact_sheet(tmp_path):
    from smirk_edge.training.evaluate import contact_sheet, evaluate_landmarks

    pred, _ = _predictor(tmp_path)
    table = _synthetic_table()
    r = evaluate_landmarks(pred, table)
    assert r["n"] == 6
    for k in ("nme105", "nme68", "err105_crop_px"):
        assert np.isfinite(r[k]) and r[k] > 0
    assert 0 < r["baseline_mean_face"]["nme105"] < 0.5
    p = contact_sheet(pred, [table.read(i) for i in range(3)], list(table.landmarks478[:3]), tmp_path / "s.png",
                      columns=2, tile=64)
    import cv2

    assert cv2.imread(str(p)).shape == (128, 256, 3)


def test_synthetic_recovery_report(tmp_path):
    from smirk_edge.training.evaluate import evaluate

    _, ck = _predictor(tmp_path)
    r = evaluate(checkpoint=str(ck), synthetic=8, out_dir=tmp_path / "ev")
    s = r["synthetic"]
    for k in ("expression_mae", "vertex_mm_unposed", "pose_deg", "landmark105_crop_px"):
        assert np.isfinite(s[k]) and s[k] >= 0
    assert 0 <= s["asymmetry"]["expression_lr_accuracy"] <= 1 and s["asymmetry"]["chance"] == 0.5
    assert json.loads((tmp_path / "ev" / "eval.json").read_text())["synthetic"]["n"] == 8
