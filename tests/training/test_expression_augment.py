"""The four-group expression augmentation of the cycle pass."""

import pytest

torch = pytest.importorskip("torch", reason="torch not installed (pip install 'smirk-edge[train]')")

from smirk_edge.errors import InputError  # noqa: E402
from smirk_edge.training.augment import (AugmentConfig, ExpressionTemplates, augment_expressions,  # noqa: E402
                                         split_groups)

pytestmark = pytest.mark.torch
QUIET = AugmentConfig(extra_noise=0.0)  # no extra noise: group properties become exact


def _batch(n=18, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(n, 50, generator=g) * scale
    jaw = torch.cat([torch.rand(n, 1, generator=g) * 0.4, (torch.rand(n, 2, generator=g) - 0.5) * 0.4], 1)
    lid = torch.rand(n, 2, generator=g)
    return e, jaw, lid


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_group_sizes_partition():
    for n in (1, 4, 10, 18, 32):
        groups = split_groups(n, _gen())
        sizes = [len(g) for g in groups]
        assert sizes == [n // 4, n // 4, n // 4, n - 3 * (n // 4)]
        assert sorted(torch.cat(groups).tolist()) == list(range(n))
    out = augment_expressions(*_batch(10), generator=_gen())
    assert [len(g) for g in out.groups] == [2, 2, 2, 4]


def test_clamps_and_ranges():
    e, jaw, lid = _batch(64, scale=10.0)  # far outside the clamp
    out = augment_expressions(e, jaw, lid, generator=_gen(1), config=QUIET)
    g1 = out.groups[0]
    assert out.expression[g1].abs().max() <= 4.0
    assert (out.jaw[:, 0] >= 0).all() and (out.jaw[:, 0] <= 0.5).all()
    assert (out.eyelid >= 0).all() and (out.eyelid <= 1).all()
    # eyelids move by at most 0.25 before clamping (groups 1-3)
    rest = torch.cat(out.groups[:3])
    assert ((out.eyelid[rest] - lid[rest]).abs() <= 0.25 + 1e-6).all()
    # jaw side rotations move by N(0, 0.02) at most a few sigma, opening is clamped
    assert ((out.jaw[rest, 1:] - jaw[rest, 1:]).abs() < 0.2).all()


def test_noise_group_masks_about_half():
    e, jaw, lid = _batch(400)
    out = augment_expressions(e, jaw, lid, generator=_gen(2), config=QUIET)
    g1 = out.groups[0]
    changed = (out.expression[g1] != e[g1]).float().mean().item()
    assert 0.45 < changed < 0.55  # Bernoulli(0.5) mask per coefficient


def test_permutation_group():
    e, jaw, lid = _batch(40)
    out = augment_expressions(e, jaw, lid, generator=_gen(3), config=QUIET)
    g2 = out.groups[1]
    src = e[g2]
    for row in out.expression[g2]:
        # each row is one of the group's original rows scaled by 0.25 + 1.25 U
        ratios = row[None] / src
        match = (ratios - ratios[:, :1]).abs().amax(1) < 1e-4
        assert match.sum() >= 1
        s = ratios[match][0, 0].item()
        assert 0.25 - 1e-5 <= s <= 1.5 + 1e-5


def test_template_group():
    e, jaw, lid = _batch(40)
    tmpl = ExpressionTemplates(torch.randn(3, 50, generator=_gen(9)), jaw=torch.full((3, 3), 0.1),
                               eyelid=torch.full((3, 2), 0.5))
    out = augment_expressions(e, jaw, lid, generator=_gen(4), templates=tmpl, config=QUIET)
    g3 = out.groups[2]
    for row in out.expression[g3]:
        ratios = row[None] / tmpl.expression
        match = (ratios - ratios[:, :1]).abs().amax(1) < 1e-4
        assert match.sum() == 1
        assert 0.25 - 1e-5 <= ratios[match][0, 0].item() <= 1.5 + 1e-5
    # template eyelids (0.5) then moved by at most 0.25
    assert ((out.eyelid[g3] - 0.5).abs() <= 0.25 + 1e-6).all()
    with pytest.raises(InputError):
        augment_expressions(e[:, :10], jaw, lid, templates=tmpl)
    with pytest.raises(InputError):
        ExpressionTemplates(torch.zeros(3, 50), jaw=torch.zeros(2, 3))


def test_zero_group():
    e, jaw, lid = _batch(40)
    quiet = augment_expressions(e, jaw, lid, generator=_gen(5), config=QUIET)
    g4 = quiet.groups[3]
    assert (quiet.expression[g4] == 0).all()
    noisy = augment_expressions(e, jaw, lid, generator=_gen(5))
    g4 = noisy.groups[3]
    assert (noisy.jaw[g4] == 0).all()
    assert noisy.expression[g4].abs().max() < 1.5  # only 0.2 U N noise around zero
    assert noisy.expression[g4].abs().sum() > 0
    assert (noisy.eyelid[g4] >= 0).all() and (noisy.eyelid[g4] <= 1).all()
    # eyelids are redrawn, not taken from the input
    assert not torch.allclose(noisy.eyelid[g4], lid[g4], atol=0.25)


def test_deterministic_and_pure():
    e, jaw, lid = _batch(24)
    e0, jaw0, lid0 = e.clone(), jaw.clone(), lid.clone()
    a = augment_expressions(e, jaw, lid, generator=_gen(7))
    b = augment_expressions(e, jaw, lid, generator=_gen(7))
    c = augment_expressions(e, jaw, lid, generator=_gen(8))
    for k in ("expression", "jaw", "eyelid"):
        assert torch.equal(getattr(a, k), getattr(b, k))
        assert not torch.equal(getattr(a, k), getattr(c, k))
    assert all(torch.equal(x, y) for x, y in zip(a.groups, b.groups))
    assert torch.equal(e, e0) and torch.equal(jaw, jaw0) and torch.equal(lid, lid0)
    # detached from any graph
    ee = e.clone().requires_grad_(True)
    assert not augment_expressions(ee, jaw, lid, generator=_gen(7)).expression.requires_grad


def test_bad_shapes():
    e, jaw, lid = _batch(8)
    with pytest.raises(InputError):
        augment_expressions(e, jaw[:, :2], lid)
    with pytest.raises(InputError):
        augment_expressions(e, jaw, lid[:4])
    with pytest.raises(InputError):
        augment_expressions(e[0], jaw, lid)
    with pytest.raises(InputError):
        augment_expressions(e.long(), jaw, lid)
