"""The differentiable renderer: coverage, shading, z-buffer, face region, gradients, batching."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch not installed (pip install 'smirk-edge[train]')")

from factories import random_face_model_arrays, random_params  # noqa: E402

from smirk_edge.errors import InputError  # noqa: E402
from smirk_edge.training.face_model import FaceModelLayer, project_ndc  # noqa: E402
from smirk_edge.training.renderer import ALBEDO, LIGHT_INTENSITY, MeshRenderer, vertex_normals  # noqa: E402

pytestmark = pytest.mark.torch

# SMIRK's grey for a normal facing the camera: mean over the 5 lights of clamp(n.l) * 1.7 * 180/255
FRONT_SHADE = ALBEDO * LIGHT_INTENSITY * (4 / math.sqrt(3) + 1) / 5


def _cam(b=1, s=7.0, tx=0.0, ty=0.0, dtype=torch.float32):
    return torch.tensor([[s, tx, ty]], dtype=dtype).repeat(b, 1)


@pytest.fixture(scope="module")
def grid():
    arrays = random_face_model_arrays(12, 14, seed=3)
    return arrays, FaceModelLayer.from_arrays(arrays)


def _grid_ndc(layer, b=1, seed=0, scale=0.3, dtype=torch.float32):
    p = {k: torch.from_numpy(v).to(dtype) for k, v in random_params(b, seed=seed, scale=scale).items()}
    p["pose"] = p["pose"] * 0.3
    layer = layer.to(dtype)
    verts = layer(**p)["vertices"]
    return project_ndc(verts, _cam(b, dtype=dtype)).detach()


def test_flat_triangle_coverage_and_shade():
    # counter-clockwise seen from +z in the model frame (y up): faces the camera
    tri_model = torch.tensor([[[-0.05, -0.04, 0.0], [0.06, -0.03, 0.0], [0.0, 0.07, 0.0]]])
    ndc = project_ndc(tri_model, _cam(tx=0.003, ty=-0.002))
    r = MeshRenderer(torch.tensor([[0, 1, 2]]), image_size=224)
    out = r(ndc)
    covered = out.mask[0, 0].numpy() > 0

    # analytic triangle in pixel space: signed distance of every pixel centre to the three edges
    p = ((ndc[0, :, :2] + 1) * 112).double().numpy()
    jj, ii = np.meshgrid(np.arange(224) + 0.5, np.arange(224) + 0.5)
    area2 = (p[1, 0] - p[0, 0]) * (p[2, 1] - p[0, 1]) - (p[2, 0] - p[0, 0]) * (p[1, 1] - p[0, 1])
    dists = []
    for a, b in ((0, 1), (1, 2), (2, 0)):
        e = p[b] - p[a]
        cross = e[0] * (ii - p[a, 1]) - e[1] * (jj - p[a, 0])
        dists.append(np.sign(area2) * cross / np.linalg.norm(e))
    d = np.min(dists, axis=0)  # > 0 inside, distance in pixels to the nearest edge
    assert covered[d > 1.0].all(), "interior pixels missing"
    assert not covered[d < -1.0].any(), "pixels drawn outside the triangle"
    # the pixel under the centroid, and the area, match
    c = p.mean(0)
    assert covered[int(c[1]), int(c[0])]
    assert abs(covered.sum() - abs(area2) / 2) < 0.1 * abs(area2) / 2
    # shade of a +z normal, flat grey on the three channels, background 0
    img = out.image[0].numpy()
    np.testing.assert_allclose(img[:, covered], FRONT_SHADE, atol=1e-5)
    assert (img[:, ~covered] == 0).all()
    assert (out.face_index[0].numpy()[covered] == 0).all()
    assert (out.face_index[0].numpy()[~covered] == -1).all()


def test_pixel_convention_matches_ndc_to_pixels():
    """A tiny triangle around NDC point q lands on pixel floor((q + 1) * 112), x -> column, y -> row."""
    q = torch.tensor([0.31, -0.47])
    h = 0.004  # about half a pixel
    tri = torch.tensor([[[q[0] - h, q[1] + h, 0.0], [q[0] + h, q[1] + h, 0.0], [q[0], q[1] - h, 0.0]]])
    out = MeshRenderer(torch.tensor([[0, 1, 2]]))(tri)
    rows, cols = torch.nonzero(out.mask[0, 0], as_tuple=True)
    assert len(rows) >= 1
    expect = ((q + 1) * 112).floor().long()
    assert (cols == expect[0]).all() and (rows == expect[1]).all()


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_nearer_triangle_wins(order):
    # two overlapping camera-facing squares' worth of triangles; the one at larger model Z is nearer
    far = [[-0.05, -0.05, 0.0], [0.05, -0.05, 0.0], [0.0, 0.05, 0.0]]
    near = [[-0.03, -0.06, 0.01], [0.07, -0.02, 0.01], [0.01, 0.06, 0.01]]
    verts = torch.tensor([far + near])
    faces = torch.tensor([[0, 1, 2], [3, 4, 5]])
    faces = faces[list(order)]
    near_index = order.index(1)
    out = MeshRenderer(faces)(project_ndc(verts, _cam()))
    fi = out.face_index[0]
    both = (fi >= 0)
    # pixels covered by the near triangle alone
    only_near = MeshRenderer(faces[near_index:near_index + 1])(project_ndc(verts, _cam())).mask[0, 0] > 0
    assert only_near.sum() > 100
    assert (fi[only_near] == near_index).all()
    # depth of the winner is the near surface: z_ndc = -s * Z
    torch.testing.assert_close(out.depth[0][only_near], torch.full_like(out.depth[0][only_near], -0.07))
    assert both.sum() > only_near.sum()  # the far triangle still shows around the near one


def test_face_region_only(grid):
    arrays, layer = grid
    faces = torch.from_numpy(arrays["faces"]).long()
    centroid_x = torch.from_numpy(arrays["v_template"])[faces][:, :, 0].mean(1)
    region = torch.nonzero(centroid_x < 0).squeeze(1)
    ndc = _grid_ndc(layer, 1, scale=0.0)
    full = MeshRenderer(faces)(ndc)
    part = MeshRenderer(faces, region)(ndc)
    drawn = part.face_index[part.face_index >= 0]
    assert drawn.numel() > 0
    assert torch.isin(drawn, region).all()
    in_region = torch.isin(full.face_index, region)
    assert (part.face_index[in_region] == full.face_index[in_region]).all()
    assert (part.mask[:, 0][~in_region] == 0).all()
    assert (part.image.sum(1)[~in_region] == 0).all()
    # from_face_model uses the layer's face region (the factory model has none: everything)
    assert MeshRenderer.from_face_model(layer).region_faces.shape[0] == faces.shape[0]


def test_gradients_flow_to_vertices(grid):
    _, layer = grid
    ndc = _grid_ndc(layer, 2).requires_grad_(True)
    r = MeshRenderer.from_face_model(layer, image_size=96)
    w = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    out = r(ndc)
    (out.image * w).sum().backward()
    g = ndc.grad
    assert torch.isfinite(g).all()
    moved = (g.abs().sum(-1) > 0).float().mean()
    assert moved > 0.5, f"only {moved:.0%} of the vertices get a gradient"
    assert g[..., 0].abs().sum() > 0 and g[..., 1].abs().sum() > 0 and g[..., 2].abs().sum() > 0


def test_gradient_matches_finite_differences(grid):
    _, layer = grid
    ndc = _grid_ndc(layer, 1, seed=1, dtype=torch.float64)
    r = MeshRenderer.from_face_model(layer, image_size=64)
    gen = torch.Generator().manual_seed(1)
    w = torch.rand(1, 3, 64, 64, generator=gen, dtype=torch.float64)
    direction = torch.randn(ndc.shape, generator=gen, dtype=torch.float64)

    def loss(v):
        return (r(v).image * w).sum()

    v = ndc.clone().requires_grad_(True)
    loss(v).backward()
    analytic = (v.grad * direction).sum().item()
    eps = 1e-6
    with torch.no_grad():
        numeric = ((loss(ndc + eps * direction) - loss(ndc - eps * direction)) / (2 * eps)).item()
    assert abs(analytic) > 1e-3
    assert abs(analytic - numeric) <= 1e-4 * max(1.0, abs(numeric)), (analytic, numeric)


def test_batch_consistency_and_chunking(grid):
    _, layer = grid
    ndc = _grid_ndc(layer, 3, seed=2)
    r = MeshRenderer.from_face_model(layer, image_size=80)
    batched = r(ndc)
    for b in range(3):
        single = r(ndc[b:b + 1])
        torch.testing.assert_close(single.image[0], batched.image[b])
        assert torch.equal(single.face_index[0], batched.face_index[b])
    small = MeshRenderer.from_face_model(layer, image_size=80, max_pairs=500)(ndc)
    assert torch.equal(small.face_index, batched.face_index)
    torch.testing.assert_close(small.image, batched.image)


def test_offscreen_and_bad_inputs(grid):
    _, layer = grid
    r = MeshRenderer.from_face_model(layer, image_size=32)
    ndc = _grid_ndc(layer, 1) + torch.tensor([5.0, 0.0, 0.0])
    v = ndc.requires_grad_(True)
    out = r(v)
    assert out.mask.sum() == 0 and out.image.abs().sum() == 0
    out.image.sum().backward()
    assert torch.isfinite(v.grad).all()
    with pytest.raises(InputError):
        r(torch.zeros(1, 10, 2))
    with pytest.raises(InputError):
        r(torch.zeros(1, 10, 3))  # fewer vertices than the faces index
    with pytest.raises(InputError):
        MeshRenderer(torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(InputError):
        MeshRenderer(torch.tensor([[0, 1, 2]]), face_region_faces=torch.tensor([1]))


def test_vertex_normals_face_the_camera_in_ndc(grid):
    """Model +z normals become -z in NDC (diag(1, -1, -1)): the front of the grid faces the camera."""
    arrays, _ = grid
    v = torch.from_numpy(arrays["v_template"])[None]
    faces = torch.from_numpy(arrays["faces"]).long()
    n_model = vertex_normals(v, faces)
    n_ndc = vertex_normals(project_ndc(v, _cam()), faces)
    torch.testing.assert_close(n_ndc, n_model * torch.tensor([1.0, -1.0, -1.0]), atol=1e-5, rtol=1e-4)
    assert (n_model[..., 2] > 0.5).all()


def test_standin_face_model_renders():
    from pathlib import Path

    import smirk_edge.assets

    path = Path(smirk_edge.assets.__file__).parent / "standin_face_model.npz"
    if not path.is_file():
        pytest.skip("stand-in face model not generated yet (smirk_edge/assets/standin_face_model.npz)")
    layer = FaceModelLayer.from_file(path)
    z = torch.zeros(2, 1)
    out = layer(torch.zeros(2, 300), torch.zeros(2, 50), torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.4, 0.0]]),
                torch.cat([torch.tensor([[0.0], [0.2]]), z, z], 1), torch.zeros(2, 2))
    ndc = project_ndc(out["vertices"], _cam(2)).detach().requires_grad_(True)
    r = MeshRenderer.from_face_model(layer)
    res = r(ndc)
    cover = res.mask.mean((1, 2, 3))
    assert ((cover > 0.05) & (cover < 0.6)).all(), cover
    assert torch.isin(res.face_index[res.face_index >= 0], layer.face_region_faces).all()
    lit = res.image[res.mask.expand_as(res.image) > 0]
    assert lit.max() <= FRONT_SHADE + 1e-4 and lit.mean() > 0.4  # a face facing the camera is mostly bright
    res.image.sum().backward()
    assert torch.isfinite(ndc.grad).all() and ndc.grad.abs().sum() > 0
