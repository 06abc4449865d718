"""Training losses: landmark MSE with masks, L1, perceptual losses, regularisers, cycle, stage weights."""

import pytest

torch = pytest.importorskip("torch", reason="torch not installed (pip install 'smirk-edge[train]')")
F = torch.nn.functional

from smirk_edge.errors import CheckpointError, InputError  # noqa: E402
from smirk_edge.training import losses as L  # noqa: E402

pytestmark = pytest.mark.torch


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


def test_landmark_loss_masks():
    pred = torch.randn(4, 105, 2, generator=_g(0), requires_grad=True)
    tgt = torch.randn(4, 105, 2, generator=_g(1))
    torch.testing.assert_close(L.landmark_loss(pred, tgt), F.mse_loss(pred, tgt))
    torch.testing.assert_close(L.mediapipe_landmark_loss(pred, tgt), F.mse_loss(pred, tgt))
    valid = torch.tensor([True, False, True, False])
    torch.testing.assert_close(L.landmark_loss(pred, tgt, valid), F.mse_loss(pred[valid], tgt[valid]))
    per_point = torch.zeros(4, 105, dtype=torch.bool)
    per_point[:, :10] = True
    torch.testing.assert_close(L.landmark_loss(pred, tgt, per_point), F.mse_loss(pred[:, :10], tgt[:, :10]))
    zero = L.landmark_loss(pred, tgt, torch.zeros(4, dtype=torch.bool))
    assert zero.item() == 0.0 and zero.requires_grad
    # 3D predictions: only x, y count
    pred3 = torch.cat([pred, torch.randn(4, 105, 1)], -1)
    torch.testing.assert_close(L.landmark_loss(pred3, tgt), F.mse_loss(pred, tgt))
    with pytest.raises(InputError):
        L.landmark_loss(pred, tgt[:, :50])
    with pytest.raises(InputError):
        L.landmark_loss(pred, tgt, torch.ones(3))


def test_landmark_distance_error_is_the_mean_point_distance():
    pred = torch.randn(4, 105, 2, generator=_g(4), requires_grad=True)
    tgt = torch.randn(4, 105, 2, generator=_g(5))
    dist = (pred - tgt).norm(dim=-1)  # (B, L)
    eps = 1e-3
    torch.testing.assert_close(L.landmark_loss(pred, tgt, error="distance"),
                               (torch.sqrt(dist ** 2 + eps ** 2) - eps).mean())
    valid = torch.tensor([True, False, True, False])
    torch.testing.assert_close(L.landmark_loss(pred, tgt, valid, error="distance"),
                               (torch.sqrt(dist[valid] ** 2 + eps ** 2) - eps).mean())
    # contour and MediaPipe wrappers pass it through
    p68, t68 = pred[:, :68], tgt[:, :68]
    torch.testing.assert_close(L.contour_landmark_loss(p68, t68, error="distance"),
                               L.landmark_loss(p68[:, :17], t68[:, :17], error="distance"))
    torch.testing.assert_close(L.mediapipe_landmark_loss(pred, tgt, error="distance"),
                               L.landmark_loss(pred, tgt, error="distance"))
    # the pull on a point is bounded (unit length) instead of growing with its error
    far = torch.zeros(1, 2, 2, requires_grad=True)
    target = torch.tensor([[[0.0, 0.0], [10.0, 0.0]]])
    L.landmark_loss(far, target, error="distance").backward()
    torch.testing.assert_close(far.grad[0, 1], torch.tensor([-0.5, 0.0]), atol=1e-6, rtol=0)
    # finite gradient at zero error
    same = torch.zeros(1, 3, 2, requires_grad=True)
    L.landmark_loss(same, torch.zeros(1, 3, 2), error="distance").backward()
    assert torch.isfinite(same.grad).all() and same.grad.abs().max() == 0
    with pytest.raises(InputError, match="landmark error must be one of squared, distance"):
        L.landmark_loss(pred, tgt, error="l1")


def test_config_rejects_an_unknown_landmark_error():
    from smirk_edge.training.config import ConfigError, TrainConfig

    cfg = TrainConfig()
    cfg.loss.landmark_error = "huber"
    with pytest.raises(ConfigError, match="loss.landmark_error"):
        cfg.validate(require_sources=False)


def test_contour_uses_first_17_points():
    pred = torch.randn(2, 68, 2, generator=_g(2))
    tgt = torch.randn(2, 68, 2, generator=_g(3))
    a = L.contour_landmark_loss(pred, tgt)
    pred2 = pred.clone()
    pred2[:, 17:] += 5.0
    torch.testing.assert_close(L.contour_landmark_loss(pred2, tgt), a)
    torch.testing.assert_close(a, F.mse_loss(pred[:, :17], tgt[:, :17]))
    torch.testing.assert_close(L.contour_landmark_loss(pred, tgt, torch.ones(2, 68)), a)
    with pytest.raises(InputError):
        L.contour_landmark_loss(pred[:, :17], tgt[:, :17])


def test_reconstruction_l1():
    a = torch.rand(2, 3, 8, 8, generator=_g(4))
    b = torch.rand(2, 3, 8, 8, generator=_g(5))
    torch.testing.assert_close(L.reconstruction_l1(a, b), F.l1_loss(a, b))
    m = torch.zeros(2, 1, 8, 8)
    m[:, :, :4] = 1
    torch.testing.assert_close(L.reconstruction_l1(a, b, m), F.l1_loss(a[..., :4, :], b[..., :4, :]))
    with pytest.raises(InputError):
        L.reconstruction_l1(a, b, torch.ones(2, 3, 8, 8))


def test_structural_perceptual_loss():
    loss = L.StructuralPerceptualLoss()
    x = torch.rand(2, 3, 96, 96, generator=_g(6))
    assert loss(x, x).abs().item() < 1e-5
    noise = torch.randn(2, 3, 96, 96, generator=_g(7))
    small = loss((x + 0.02 * noise).clamp(0, 1), x)
    big = loss((x + 0.2 * noise).clamp(0, 1), x)
    assert 0 < small < big
    y = torch.rand(2, 3, 96, 96, generator=_g(8), requires_grad=True)
    loss(y, x).backward()
    assert torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0
    # a blurred image loses structure: the loss sees it although the mean colour is unchanged
    blurred = F.avg_pool2d(x, 5, stride=1, padding=2, count_include_pad=False)
    assert loss(blurred, x) > small
    with pytest.raises(InputError):
        loss(torch.rand(1, 3, 40, 40), torch.rand(1, 3, 40, 40))  # too small for 4 SSIM scales
    assert isinstance(L.make_perceptual_loss(None), L.StructuralPerceptualLoss)


class _NotATensor:
    pass


def test_vgg_loss_with_user_weights(tmp_path):
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    feats = L._vgg_features(tv, "vgg16")[:23]  # the layers SMIRK taps (relu4_3 and before)
    path = tmp_path / "vgg16.pth"
    torch.save({"features." + k: v for k, v in feats.state_dict().items()}, path)
    assert isinstance(L.make_perceptual_loss(path), L.VGGPerceptualLoss)
    vgg = L.VGGPerceptualLoss(path, resize=None)  # 224 in training; small here for speed
    assert not any(p.requires_grad for p in vgg.parameters())
    vgg.train()
    assert not vgg.training
    x = torch.rand(1, 3, 64, 64, generator=_g(9))
    y = torch.rand(1, 3, 64, 64, generator=_g(10), requires_grad=True)
    assert vgg(x, x).item() == 0.0
    d = vgg(y, x)
    assert d > 0
    d.backward()
    assert torch.isfinite(y.grad).all()
    # unsafe pickles and wrong files are refused
    bad = tmp_path / "bad.pth"
    torch.save({"features.0.weight": _NotATensor()}, bad)
    with pytest.raises(CheckpointError, match="weights_only"):
        L.VGGPerceptualLoss(bad)
    wrong = tmp_path / "wrong.pth"
    torch.save({"features.0.weight": torch.zeros(3)}, wrong)
    with pytest.raises(CheckpointError, match="torchvision vgg16"):
        L.VGGPerceptualLoss(wrong)
    with pytest.raises(CheckpointError, match="not found"):
        L.VGGPerceptualLoss(tmp_path / "missing.pth")


def test_regularisers_and_shape_supervision():
    e = torch.randn(3, 50, generator=_g(11))
    torch.testing.assert_close(L.expression_regularizer(e), (e ** 2).mean())
    torch.testing.assert_close(L.jaw_regularizer(e, e), torch.tensor(0.0))
    s = torch.randn(3, 300, generator=_g(12))
    w = L.ShapeSupervisionWeights(prior=0.5, consistency=2.0)
    torch.testing.assert_close(L.shape_supervision_loss(s, weights=w), 0.5 * (s ** 2).mean())
    torch.testing.assert_close(L.shape_supervision_loss(s, s + 1.0, weights=w), 0.5 * (s ** 2).mean() + 2.0)
    with pytest.raises(InputError):
        L.shape_supervision_loss(s, s[:, :10])


def test_cycle_loss_inner_weights():
    keys = {"expression": 50, "jaw": 3, "eyelid": 2, "shape": 300}
    tgt = {k: torch.randn(4, n, generator=_g(i)) for i, (k, n) in enumerate(keys.items())}
    expected = {"expression": 1.0, "jaw": 10.0, "eyelid": 10.0, "shape": 1.0}
    for k in keys:
        rec = {kk: v.clone() for kk, v in tgt.items()}
        rec[k] = rec[k] + 1.0  # MSE of exactly 1 in one group
        assert L.cycle_loss(rec, tgt).item() == pytest.approx(expected[k])
    rec = {k: v + 1.0 for k, v in tgt.items()}
    assert L.cycle_loss(rec, tgt, use_shape=False).item() == pytest.approx(21.0)
    assert L.cycle_loss(rec, tgt, use_eyelids=False).item() == pytest.approx(12.0)
    with pytest.raises(InputError):
        L.cycle_loss({"expression": tgt["expression"]}, tgt)


def test_stage_weights():
    s1, s2 = L.LossWeights.stage1(), L.LossWeights.stage2()
    assert (s1.landmark, s1.expression_reg, s1.shape_prior) == (100.0, 1e-2, 10.0)
    assert s1.reconstruction == s1.perceptual == s1.cycle == 0
    assert (s2.landmark, s2.reconstruction, s2.perceptual, s2.jaw_reg, s2.expression_reg, s2.cycle) == \
        (100.0, 10.0, 10.0, 1e-2, 1e-3, 1.0)
    assert s2.emotion == 0 and s2.shape_prior == 0
    cfg = L.LossWeights.from_mapping({"perceptual": 2.5}, stage=2)
    assert cfg.perceptual == 2.5 and cfg.cycle == 1.0
    with pytest.raises(InputError, match="did you mean 'perceptual'"):
        L.LossWeights.from_mapping({"perceptal": 1.0})
    with pytest.raises(InputError, match="emotion"):
        L.LossWeights.from_mapping({"emotion": 1.0})
    with pytest.raises(InputError):
        L.LossWeights.from_mapping({"cycle": -1})
    with pytest.raises(InputError):
        L.LossWeights.from_mapping({}, stage=3)
    assert L.CycleWeights.from_mapping({"jaw": 5}).jaw == 5.0

    a = torch.tensor(0.5, requires_grad=True)
    total, log = s1.combine({"landmark_contour": a, "landmark_mediapipe": a * 2, "expression_reg": a,
                             "reconstruction": a})
    assert total.item() == pytest.approx(100 * 0.5 + 100 * 1.0 + 1e-2 * 0.5)
    assert log == {"landmark_contour": 0.5, "landmark_mediapipe": 1.0, "expression_reg": 0.5, "reconstruction": 0.5}
    total.backward()
    with pytest.raises(InputError):
        s1.combine({"mica": a})
