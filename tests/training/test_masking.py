"""The generator's masked input: hull context, sparse hints on the mesh, noise, holes, cycle transfer."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch not installed (pip install 'smirk-edge[train]')")

from factories import random_face_model_arrays  # noqa: E402

from smirk_edge.errors import InputError  # noqa: E402
from smirk_edge.training import masking as M  # noqa: E402
from smirk_edge.training.face_model import project_ndc  # noqa: E402
from smirk_edge.training.renderer import MeshRenderer  # noqa: E402

pytestmark = pytest.mark.torch
S = 224


@pytest.fixture(scope="module")
def scene():
    """Two grid meshes (one shifted), their renders, a photo-like image and a landmark hull."""
    arrays = random_face_model_arrays(16, 18, seed=5)
    faces = torch.from_numpy(arrays["faces"]).long()
    v = torch.from_numpy(arrays["v_template"])[None].repeat(2, 1, 1)
    cam = torch.tensor([[7.0, 0.0, 0.0], [6.0, 0.01, -0.01]])
    ndc = project_ndc(v, cam)
    r = MeshRenderer(faces, image_size=S)
    render = r(ndc)
    image = 0.05 + 0.9 * torch.rand(2, 3, S, S, generator=torch.Generator().manual_seed(0))
    px = (ndc[..., :2] + 1) * (S / 2)
    hull = M.hull_mask(px, S)
    return dict(faces=faces, ndc=ndc, render=render, image=image, hull=hull, renderer=r)


def test_hull_mask_fills_convex_hull():
    pts = np.array([[[50, 60], [150, 60], [150, 170], [50, 170], [100, 100]]], np.float32)
    m = M.hull_mask(pts, S)
    assert m.shape == (1, 1, S, S) and m.dtype == torch.float32
    assert m[0, 0, 60:171, 50:151].min() == 1
    assert m.sum() == 101 * 111
    assert M.hull_mask(torch.from_numpy(pts[0]), S).shape == (1, 1, S, S)  # (L, 2) accepted
    with pytest.raises(InputError):
        M.hull_mask(np.zeros((1, 2, 2)), S)
    with pytest.raises(InputError):
        M.hull_mask(np.full((1, 5, 2), np.nan), S)


def test_context_outside_dilated_hull_only(scene):
    image, hull = scene["image"], scene["hull"]
    none = torch.zeros(2, 1, S, S, dtype=torch.bool)
    out = M.mask_image(image, hull, torch.zeros_like(image), none, dilation=10, hole_rate=0, noise_std=0)
    grown = torch.nn.functional.max_pool2d(hull, 21, stride=1, padding=10) > 0
    # far outside the hull: the photo is kept unchanged; inside the dilated hull: zero
    assert torch.equal(out.image.expand_as(image)[~grown.expand_as(image)], image[~grown.expand_as(image)])
    assert (out.image[grown.expand_as(image)] == 0).all()
    # the dilation ring (outside the hull, within 10 px of it) is removed too
    ring = grown & (hull == 0)
    assert ring.sum() > 0 and (out.image[ring.expand_as(image)] == 0).all()
    assert not out.image.requires_grad


def test_rendered_face_removed(scene):
    image = scene["image"]
    hull = torch.zeros(2, 1, S, S)  # no hull: only the render removes pixels
    none = torch.zeros(2, 1, S, S, dtype=torch.bool)
    rmask = scene["render"].mask
    out = M.mask_image(image, hull, torch.zeros_like(image), none, rendered_mask=rmask, hole_rate=0, noise_std=0)
    inside = (rmask > 0).expand_as(image)
    assert (out.image[inside] == 0).all()
    assert torch.equal(out.image[~inside], image[~inside])


def test_sparse_hint_fraction_and_location(scene):
    g = torch.Generator().manual_seed(1)
    out = M.masked_generator_input(scene["image"], scene["hull"], scene["ndc"], scene["faces"], scene["render"].mask,
                                   ratio=M.TRAIN_RATIO, hole_rate=0.0, noise_std=0.0, generator=g)
    n = int(M.TRAIN_RATIO * S * S)  # 501 samples per image (SMIRK: a fraction of the IMAGE area)
    kept = out.hints.flatten(1).sum(1)
    # with replacement, a few samples share a pixel
    assert ((kept >= 0.9 * n) & (kept <= n)).all(), kept
    # hints are exact photo pixels, on the rendered surface (1-pixel tolerance at the border)
    hints = out.hints.expand_as(scene["image"])
    assert torch.equal(out.image[hints], scene["image"][hints])
    near_render = torch.nn.functional.max_pool2d(scene["render"].mask, 3, stride=1, padding=1) > 0
    assert (~near_render & out.hints).sum() == 0
    # everything that is neither context nor a hint is zero
    rest = (out.context == 0) & ~out.hints
    assert (out.image[rest.expand_as(scene["image"])] == 0).all()


def test_demo_ratio_samples_more():
    ndc = torch.tensor([[[-0.5, -0.5, 0.0], [0.5, -0.5, 0.0], [0.0, 0.5, 0.0]]])
    faces = torch.tensor([[0, 2, 1]])  # facing the camera in NDC (normal -z)
    s = M.sample_surface(ndc, faces, M.DEMO_RATIO, S, generator=torch.Generator().manual_seed(0))
    assert s.face_index.shape == (1, int(0.05 * S * S)) and s.valid.all()
    assert torch.allclose(s.bary.sum(-1), torch.ones(1, s.bary.shape[1])) and (s.bary >= 0).all()
    # a triangle facing away gets no samples: flagged invalid instead of failing
    back = M.sample_surface(ndc, torch.tensor([[0, 1, 2]]), 0.01, S)
    assert not back.valid.any()


def test_multiplicative_noise(scene):
    g = torch.Generator().manual_seed(2)
    out = M.masked_generator_input(scene["image"], scene["hull"], scene["ndc"], scene["faces"], scene["render"].mask,
                                   ratio=0.05, hole_rate=0.0, noise_std=0.05, generator=g)
    hints = out.hints.expand_as(scene["image"])
    ratio = out.image[hints] / scene["image"][hints]
    assert abs(ratio.mean().item() - 1.0) < 0.01
    assert 0.04 < ratio.std().item() < 0.06


def test_random_holes(scene):
    image = scene["image"]
    g = torch.Generator().manual_seed(3)
    full = torch.ones(2, 1, S, S, dtype=torch.bool)
    out = M.mask_image(image, torch.zeros(2, 1, S, S), image, full, hole_rate=M.TRAIN_HOLE_RATE, noise_std=0,
                       generator=g)
    assert out.holes.any()
    assert not (out.hints & out.holes).any()
    # holes are 11x11 squares around centres drawn at 1% per pixel: ~1 - 0.99**121 = 70% covered
    frac = out.holes.float().mean().item()
    assert 0.6 < frac < 0.8, frac
    # the holes are a union of 11x11 squares: a morphological opening with an 11x11 square keeps
    # them exactly, one with 13x13 does not
    def opening(m, k):
        eroded = -torch.nn.functional.max_pool2d(-m.float(), k, stride=1, padding=k // 2)
        return torch.nn.functional.max_pool2d(eroded, k, stride=1, padding=k // 2) > 0
    sparse = M.mask_image(image, torch.zeros(2, 1, S, S), image, full, hole_rate=0.0005, noise_std=0,
                          generator=torch.Generator().manual_seed(5))
    assert sparse.holes.any()
    assert torch.equal(opening(sparse.holes, 11), sparse.holes)
    assert not torch.equal(opening(sparse.holes, 13), sparse.holes)


def test_cycle_transfer_moves_hints(scene):
    """Cycle pass: pixels read where the samples lie on the original mesh, written where they lie on the target."""
    image, faces, ndc = scene["image"][:1], scene["faces"], scene["ndc"][:1]
    shift = torch.tensor([10 / 112, 6 / 112, 0.0])  # 10 px right, 6 px down
    g = torch.Generator().manual_seed(4)
    samples = M.sample_surface(ndc, faces, 0.01, S, generator=g)
    src = M.samples_to_pixels(ndc, faces, samples, S)
    dst = M.samples_to_pixels(ndc + shift, faces, samples, S)
    d = (dst - src).float()
    assert ((d[..., 0] - 10).abs() <= 1).all() and ((d[..., 1] - 6).abs() <= 1).all()
    hints, mask = M.transfer_pixels(image, src, dst, samples.valid)
    ys, xs = dst[0, :, 1], dst[0, :, 0]
    assert mask[0, 0, ys, xs].all()
    # every written pixel holds the photo value of one of the sources that landed there
    for k in range(0, 50):
        val = hints[0, :, ys[k], xs[k]]
        same = (dst[0] == dst[0, k]).all(-1)
        sources = image[0, :, src[0, same, 1], src[0, same, 0]].T
        assert any(torch.equal(val, s) for s in sources)
    # and the whole pipeline accepts a repeated batch (Ke = 2)
    out = M.masked_generator_input(image.repeat(2, 1, 1, 1), scene["hull"][:1].repeat(2, 1, 1, 1),
                                   ndc.repeat(2, 1, 1), faces, None, target_ndc_vertices=(ndc + shift).repeat(2, 1, 1),
                                   samples=samples.repeat(2), hole_rate=0.0, noise_std=0.0)
    assert torch.equal(out.hints[0], out.hints[1])


def test_deterministic_with_generator(scene):
    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return M.masked_generator_input(scene["image"], scene["hull"], scene["ndc"], scene["faces"],
                                        scene["render"].mask, generator=g).image
    assert torch.equal(run(7), run(7))
    assert not torch.equal(run(7), run(8))


def test_bad_shapes(scene):
    image = scene["image"]
    with pytest.raises(InputError):
        M.mask_image(image, torch.zeros(2, 1, S, S - 1), image, torch.zeros(2, 1, S, S, dtype=torch.bool))
    with pytest.raises(InputError):
        M.mask_image(image[0], torch.zeros(2, 1, S, S), image, torch.zeros(2, 1, S, S, dtype=torch.bool))
    with pytest.raises(InputError):
        M.transfer_pixels(image, torch.zeros(2, 5, 2, dtype=torch.long), torch.zeros(2, 4, 2, dtype=torch.long))
    with pytest.raises(InputError):
        M.sample_surface(torch.zeros(2, 5), scene["faces"])
    with pytest.raises(InputError):
        M.sample_surface(scene["ndc"], scene["faces"], ratio=2.0)
