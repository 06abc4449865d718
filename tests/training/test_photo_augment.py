"""Photo augmentation for camera footage: 3D profiling, occluders, light, blur, low resolution;
the human 68-point annotations (300-W) and their path into items, shards and the loss."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("scipy")

from smirk_edge.face_model import FaceModel, rodrigues  # noqa: E402
from smirk_edge.training import photo_augment as pa  # noqa: E402
from smirk_edge.training.config import CropAugmentConfig  # noqa: E402
from smirk_edge.training.data import (FaceCropDataset, FaceTable, ndc_to_crop_px, pack_shards,  # noqa: E402
                                      read_landmarks68_file, table_from_shards)


def _standin_face(yaw_deg=0.0, size=224):
    """MediaPipe-like points (478, 3) of the stand-in in crop pixels (x right, y down, depth away
    from the camera) at ``yaw_deg``, the face filling about half the crop, and its 68 landmarks."""
    fm = FaceModel.standin()
    pose = np.array([0.0, np.radians(yaw_deg), 0.0], np.float32)
    g = fm.decode(pose=pose)
    v = g.vertices[0].astype(np.float64)  # model frame, metres
    k = 0.5 * size / np.ptp(v[:, 1])
    c = v.mean(0)
    pts = np.stack([(v[:, 0] - c[0]) * k + size / 2, -(v[:, 1] - c[1]) * k + size / 2, -(v[:, 2] - c[2]) * k], 1)
    iris = pts[[33, 133, 159, 145, 468 - 1, 263, 362, 386, 374, 1]]  # 10 stand-ins for the iris points
    lm68 = g.landmarks68[0].astype(np.float64)
    l68 = np.stack([(lm68[:, 0] - c[0]) * k + size / 2, -(lm68[:, 1] - c[1]) * k + size / 2], 1)
    return np.concatenate([pts, iris]), l68, fm


def _coordinate_image(size):
    """Float image whose pixel (x, y) holds (x / S, y / S, 0.5): a warp's source coordinates are readable."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return np.stack([xx / size, yy / size, np.full_like(xx, 0.5)], 2)


def test_profiling_moves_landmarks_exactly_with_the_pixels():
    S = 224
    P, _, fm = _standin_face(0.0, S)
    src = _coordinate_image(S)
    out = pa.profile(src, P, 40.0, 10.0)
    Q = out.landmarks478
    # visible (near-side) mesh points: the pixel at the turned point shows the photo at the original point
    near = Q[:468, 2] < np.percentile(Q[:468, 2], 30)  # the points nearest the camera after the turn
    good = checked = 0
    for k in np.flatnonzero(near):
        x, y = Q[k, :2]
        if not (2 <= x < S - 2 and 2 <= y < S - 2):
            continue
        val = out.image[int(round(y)), int(round(x)), :2] * S
        good += np.abs(val - P[k, :2]).max() < 2.5
        checked += 1
    assert checked > 50 and good / checked > 0.9, (good, checked)
    # carry() is the same piecewise-affine map: a mesh vertex goes exactly to its turned position
    idx = np.array([1, 4, 33, 152, 263])
    np.testing.assert_allclose(out.carry(P[idx, :2]), Q[idx, :2], atol=1e-6)
    assert np.isnan(out.carry(np.array([[-500.0, -500.0]]))).all()


@pytest.mark.parametrize("delta", [-50.0, -25.0, 30.0, 55.0])
def test_profiling_turns_the_head_by_the_asked_yaw(delta):
    P, _, _ = _standin_face(0.0)
    out = pa.profile(_coordinate_image(224), P, delta, 0.0)
    assert pa.source_yaw(out.landmarks478) == pytest.approx(pa.source_yaw(P) + delta, abs=2.0)


def test_profile_angles_turn_away_from_frontal_and_stay_in_range():
    rng = np.random.default_rng(0)
    for yaw in (-70.0, -30.0, -3.0, 0.0, 12.0, 45.0, 75.0):
        for _ in range(30):
            dy, dp = pa.sample_profile_angles(yaw, rng, max_yaw=80.0, min_step=15.0, max_pitch=20.0)
            assert abs(yaw + dy) <= 80.0 + 1e-9 and abs(dp) <= 20.0
            if abs(yaw) >= 5 and dy != 0:
                assert np.sign(dy) == np.sign(yaw)  # never back toward the unseen side
            if abs(yaw) > 65.0:
                assert dy == 0.0


def test_occluders_and_degradations_change_pixels_not_shapes():
    P, _, _ = _standin_face(0.0)
    rng = np.random.default_rng(3)
    img = np.random.default_rng(1).uniform(0.2, 0.8, (224, 224, 3)).astype(np.float32)
    for kind in pa.OCCLUDERS:
        out = pa.occlude(img, P, rng, kind)
        assert out.shape == img.shape and out.dtype == np.float32
        changed = np.abs(out - img).max(2) > 0.05
        assert 0.002 < changed.mean() < 0.6, kind  # something is drawn, the face is not erased
    on = CropAugmentConfig(occlusion=1.0, side_light=1.0, blur=1.0, low_res=1.0)
    off = CropAugmentConfig()
    out = pa.occlude_and_degrade(img, P, rng, on)
    assert out.shape == img.shape and 0.0 <= out.min() and out.max() <= 1.0 and np.abs(out - img).mean() > 0.02
    np.testing.assert_array_equal(pa.occlude_and_degrade(img, P, rng, off), img)


def _face_table(n=2, real=True):
    S = 300
    P, l68, _ = _standin_face(0.0, S)
    rng = np.random.default_rng(0)
    img = (rng.uniform(0, 255, (S, S, 3))).astype(np.uint8)
    lm = np.stack([P[:, :2]] * n).astype(np.float32)
    return FaceTable(np.array([f"f{i}.jpg" for i in range(n)]), lm, np.stack([l68] * n).astype(np.float32),
                     lambda i: img, "faces", np.stack([P[:, 2]] * n).astype(np.float32),
                     np.ones((n, 68), bool) if real else None)


def test_profiled_items_keep_annotated_inner_points_and_drop_the_contour():
    table = _face_table()
    cfg = CropAugmentConfig(profile=1.0, rotation=0.0, shift=0.0)
    ds = FaceCropDataset(table, cfg, size=224, views=2)
    item = ds[(0, (5, 6, 7))]
    real = item["real68"].numpy()
    assert item["image"].shape == (2, 3, 224, 224)
    assert (real[:, :17] == 0).all() and (real[:, 17:] == 1).mean() > 0.9  # contour re-derived, inner carried
    px = ndc_to_crop_px(item["landmarks478"].numpy(), 224)
    assert ((px > 0) & (px < 224)).mean() > 0.95  # re-cropped around the turned face
    plain = FaceCropDataset(table, CropAugmentConfig(), size=224)[0]
    assert (plain["real68"].numpy() == 1).all()


def test_annotated_68_points_are_read_zero_based(tmp_path):
    pts = np.random.default_rng(0).uniform(10, 300, (68, 2))
    (tmp_path / "a.json").write_text(json.dumps({"landmarks68": pts.tolist(), "scale": 0.5}))
    np.testing.assert_allclose(read_landmarks68_file(tmp_path / "a.json"), pts - 0.5, atol=1e-4)
    (tmp_path / "b.json").write_text(json.dumps({"landmarks68": pts[:60].tolist()}))
    from smirk_edge.training.data import DataError

    with pytest.raises(DataError, match="68"):
        read_landmarks68_file(tmp_path / "b.json")


def test_shards_carry_depth_and_annotated_points(tmp_path):
    table = _face_table(3)
    table.real68[1, :17] = False
    pack_shards(table, tmp_path / "sh", size=160, margin=2.8, progress=False)
    back = table_from_shards(tmp_path / "sh")
    assert back.depth478 is not None and back.real68 is not None
    np.testing.assert_array_equal(back.real68, table.real68)
    scale = 159.0 / int(((np.ptp(table.landmarks478[0, :, 0]) + np.ptp(table.landmarks478[0, :, 1])) / 2 * 2.8))
    np.testing.assert_allclose(back.depth478[0], table.depth478[0] * scale, rtol=2e-3, atol=0.05)


def test_real68_loss_replaces_the_derived_contour_where_points_are_annotated():
    from smirk_edge.training import losses as L

    B = 2
    pred = torch.zeros(B, 68, 2)
    target = torch.zeros(B, 68, 2)
    target[0, :17] = 0.5  # face 0 has a wrong contour target, but it is annotated: no contour term
    real = torch.zeros(B, 68)
    real[0] = 1
    valid = torch.ones(B)
    contour = L.contour_landmark_loss(pred, target, valid[:, None] * (1 - real))
    assert float(contour) == 0.0
    assert float(L.landmark_loss(pred, target, valid[:, None] * real)) > 0.0


def test_fitted_yaw_of_annotations_and_per_bin_report():
    from smirk_edge.training.evaluate import YAW_BINS, fit_yaw_to_68

    fm = FaceModel.standin()
    X = fm.decode().landmarks68[0].astype(np.float64)
    gts = []
    for yaw in (0.0, 20.0, -45.0, 70.0):
        R = rodrigues(np.array([[0.0, np.radians(yaw), 0.0]]))[0]
        P = X @ R.T
        gts.append(np.stack([P[:, 0] * 900 + 250, -P[:, 1] * 900 + 250], 1))
    np.testing.assert_allclose(fit_yaw_to_68(np.stack(gts), fm), [0, 20, -45, 70], atol=0.5)
    assert YAW_BINS[0] == (0.0, 30.0) and YAW_BINS[-1][1] == 90.0
