"""A differentiable mesh renderer in pure PyTorch: SMIRK's shaded grey face for the generator.

What it draws (SMIRK's neural-renderer input, see SMIRK_FACTS.md "Neural renderer and training"):
only the face-region triangles, flat grey albedo ``180/255``, smooth vertex normals interpolated
with the barycentric coordinates of the visible triangle, Lambertian shading from five directional
lights ``[+-1, +-1, 1]`` and ``[0, 0, 1]`` (normalised, intensity 1.7 each), averaged over the lights:

    shading = mean_k( clamp(n . l_k, 0, 1) * 1.7 ),   image = clamp(albedo * shading, 0, 1)

background 0. With these lights ``albedo * shading <= 0.795``, so the final clamp never binds.

Coordinate frames (read this before feeding vertices):

* Input vertices are in SMIRK's normalised device coordinates, as
  :func:`smirk_edge.training.face_model.project_ndc` returns them:
  ``x = s(X + tx)`` (right), ``y = -s(Y + ty)`` (down: SMIRK negates y so that +y is image-down),
  ``z = -s Z``. The model faces +Z, so a LARGER model Z is closer to the camera and gives a
  SMALLER ``z_ndc``: the z-buffer keeps the minimum ``z_ndc`` (as pytorch3d, which SMIRK uses, does).
* Pixels: ``pixel = (ndc + 1) * size / 2`` (112 at 224); pixel ``(i, j)`` (row, column) covers
  ``[j, j+1] x [i, i+1]`` and is sampled at its centre ``(j + 0.5, i + 0.5)``, i.e. NDC
  ``-1 + (2j + 1) / size``: the same sample positions as SMIRK's pytorch3d call.
* Normals: SMIRK computes vertex normals in the model frame and lights them there. The map from
  model to NDC is ``s * diag(1, -1, -1)``, a rotation times a scale, so normals computed from NDC
  vertices are exactly the model normals rotated by ``diag(1, -1, -1)``; the lights are rotated the
  same way (``[+-1, +-1, -1]``, ``[0, 0, -1]`` in NDC) and every dot product is unchanged. The
  renderer therefore needs the NDC vertices only. Interpolated normals are NOT renormalised,
  matching SMIRK/DECA.

Differentiability: rasterisation (which triangle covers which pixel, the z-buffer) is discrete and
runs without gradient. The pixel colour is then recomputed with autograd from the winning
triangle's vertices: barycentric coordinates of the pixel centre (functions of the 2D vertex
positions) and interpolated vertex normals (functions of all three coordinates), so gradients reach
every vertex of every visible triangle, in the interior of the silhouette. Like SMIRK's own
rasteriser (pytorch3d, ``blur_radius=0``, one face per pixel) there is no soft-edge term: coverage
changes at the silhouette carry no gradient. The geometry is driven by the landmark losses; the
render is an input to the generator, and matching the reference keeps that input identical.

Speed: a vectorised bounding-box rasteriser. Every (image, triangle) pair is expanded into the
pixels of its bounding box (ragged, via ``repeat_interleave``), covered pixels get a packed int64
key ``(ordered depth bits << 32) | triangle`` and one ``scatter_reduce(amin)`` resolves the z-buffer
exactly (ties: lower triangle index). Work is proportional to the summed bounding-box area, not to
pixels x triangles, and is chunked to bound memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from smirk_edge.errors import InputError

#: SMIRK's albedo: flat grey 180/255.
ALBEDO = 180.0 / 255.0
#: Intensity of each of SMIRK's five directional lights.
LIGHT_INTENSITY = 1.7
#: SMIRK's light directions in the model frame (x right, y up, z toward the camera), unnormalised.
LIGHT_DIRECTIONS_MODEL = ((-1.0, 1.0, 1.0), (1.0, 1.0, 1.0), (-1.0, -1.0, 1.0), (1.0, -1.0, 1.0), (0.0, 0.0, 1.0))
#: Default bound on (triangle, pixel) candidate pairs processed at once (memory ~ 60 bytes each).
DEFAULT_MAX_PAIRS = 1 << 23


@dataclass
class RenderOutput:
    """What :class:`MeshRenderer` returns.

    Attributes:
        image: ``(B, 3, H, W)`` shaded render in [0, 1], background 0 (differentiable w.r.t. vertices).
        mask: ``(B, 1, H, W)`` float, 1 where a face-region triangle covers the pixel centre.
        face_index: ``(B, H, W)`` int64 index into the model's full ``faces`` array, -1 for background.
        bary: ``(B, H, W, 3)`` barycentric coordinates of the pixel centre in the visible triangle
            (differentiable; zeros for background).
        depth: ``(B, H, W)`` interpolated ``z_ndc`` of the visible surface (``+inf`` for background).
    """

    image: torch.Tensor
    mask: torch.Tensor
    face_index: torch.Tensor
    bary: torch.Tensor
    depth: torch.Tensor


def _check_vertices(vertices: torch.Tensor, n_vertices: int | None = None) -> None:
    if not isinstance(vertices, torch.Tensor):
        raise InputError(f"vertices must be a torch.Tensor (B, V, 3), got {type(vertices).__name__}")
    if vertices.dim() != 3 or vertices.shape[-1] != 3:
        raise InputError(f"vertices must have shape (B, V, 3), got {tuple(vertices.shape)}")
    if not vertices.is_floating_point():
        raise InputError(f"vertices must be floating point, got {vertices.dtype}")
    if n_vertices is not None and vertices.shape[1] != n_vertices:
        raise InputError(f"vertices have {vertices.shape[1]} points but the renderer's faces index "
                         f"{n_vertices} vertices")


def _check_faces(faces: torch.Tensor) -> torch.Tensor:
    faces = torch.as_tensor(faces)
    if faces.dim() != 2 or faces.shape[1] != 3:
        raise InputError(f"faces must have shape (F, 3), got {tuple(faces.shape)}")
    if faces.is_floating_point():
        raise InputError(f"faces must be integer vertex indices, got {faces.dtype}")
    if faces.numel() and int(faces.min()) < 0:
        raise InputError("faces contain negative vertex indices")
    return faces.to(torch.int64)


def vertex_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Area-weighted unit vertex normals (DECA/SMIRK formula).

    Args:
        vertices: ``(B, V, 3)`` in any frame.
        faces: ``(F, 3)`` int64; only these triangles contribute (vertices in none get a zero normal).
    Returns:
        ``(B, V, 3)`` unit normals, direction ``(v1 - v0) x (v2 - v0)`` of the incident triangles.
    """
    B, V, _ = vertices.shape
    tri = vertices[:, faces]  # (B, F, 3, 3)
    fn = torch.linalg.cross(tri[:, :, 1] - tri[:, :, 0], tri[:, :, 2] - tri[:, :, 0], dim=-1)  # 2*area*n
    normals = vertices.new_zeros(B, V, 3)
    for k in range(3):  # each corner gets the (area-weighted) face normal
        normals = normals.index_add(1, faces[:, k], fn)
    return torch.nn.functional.normalize(normals, dim=-1, eps=1e-6)


def _ordered_depth_key(z: torch.Tensor) -> torch.Tensor:
    """float32 depths -> int64 that sorts like the floats (for packing into the z-buffer key)."""
    bits = z.to(torch.float32).contiguous().view(torch.int32).to(torch.int64)
    # negative floats sort in reverse bit order: flip their magnitude bits
    ordered = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return ordered + (1 << 31)  # 0 .. 2^32-1


def rasterize(ndc: torch.Tensor, faces: torch.Tensor, size: int,
              max_pairs: int = DEFAULT_MAX_PAIRS) -> torch.Tensor:
    """Hard z-buffer rasterisation (no gradient).

    Args:
        ndc: ``(B, V, 3)`` vertices in SMIRK NDC (x right, y down, z away from the camera).
        faces: ``(F, 3)`` int64 triangles to draw.
        size: square image side in pixels.
        max_pairs: bound on (triangle, pixel) candidates evaluated at once.
    Returns:
        ``(B, size, size)`` int64 index into ``faces`` of the nearest (minimum ``z_ndc``) triangle
        covering each pixel centre, -1 where none does. A pixel centre on an edge counts as covered.
    """
    with torch.no_grad():
        B = ndc.shape[0]
        F = faces.shape[0]
        H = W = size
        device = ndc.device
        empty = torch.full((B, H, W), -1, dtype=torch.int64, device=device)
        if F == 0 or B == 0:
            return empty
        half = size / 2.0
        tri = ndc.detach().to(torch.float64)[:, faces]  # (B, F, 3, 3)
        px = (tri[..., 0] + 1.0) * half  # (B, F, 3) continuous pixel x
        py = (tri[..., 1] + 1.0) * half
        z = tri[..., 2]
        ax, bx, cx = px.unbind(-1)
        ay, by, cy = py.unbind(-1)
        area2 = (bx - ax) * (cy - ay) - (cx - ax) * (by - ay)
        finite = torch.isfinite(tri).flatten(2).all(-1)
        # pixel j is sampled at j + 0.5: columns with min <= j + 0.5 <= max
        x0 = torch.ceil(px.amin(-1) - 0.5).clamp(0, W - 1)
        x1 = torch.floor(px.amax(-1) - 0.5).clamp(-1, W - 1)
        y0 = torch.ceil(py.amin(-1) - 0.5).clamp(0, H - 1)
        y1 = torch.floor(py.amax(-1) - 0.5).clamp(-1, H - 1)
        bw = (x1 - x0 + 1).clamp(min=0)
        bh = (y1 - y0 + 1).clamp(min=0)
        valid = finite & (area2.abs() > 1e-9)  # twice the area in pixels^2
        # off-image triangles: the clamps above can leave a 1-wide box; require overlap
        valid &= (px.amax(-1) >= 0.5) & (px.amin(-1) <= W - 0.5) & (py.amax(-1) >= 0.5) & (py.amin(-1) <= H - 0.5)
        counts = torch.where(valid, bw * bh, torch.zeros_like(bw)).to(torch.int64).reshape(-1)  # (B*F,)
        x0 = x0.to(torch.int64).reshape(-1)
        y0 = y0.to(torch.int64).reshape(-1)
        bw = bw.to(torch.int64).reshape(-1)
        inv_area = torch.where(valid, 1.0 / torch.where(valid, area2, torch.ones_like(area2)),
                               torch.zeros_like(area2)).reshape(-1)
        ax, ay, bx, by, cx, cy = (t.reshape(-1) for t in (ax, ay, bx, by, cx, cy))
        z = z.reshape(-1, 3)

        zbuf = torch.full((B * H * W,), torch.iinfo(torch.int64).max, dtype=torch.int64, device=device)
        # chunk the (image, triangle) list so that each chunk expands to <= max_pairs candidates
        nz = torch.nonzero(counts).squeeze(1)
        if nz.numel() == 0:
            return empty
        c_nz = counts[nz]
        csum = torch.cumsum(c_nz, 0)
        total = int(csum[-1])
        n_chunks = max(1, math.ceil(total / max_pairs))
        bounds = [0]
        if n_chunks > 1:
            targets = torch.arange(1, n_chunks, device=device, dtype=torch.int64) * max_pairs
            bounds += torch.searchsorted(csum, targets).add(1).clamp(max=len(nz)).tolist()
        bounds.append(len(nz))
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            if hi <= lo:
                continue
            ids = nz[lo:hi]  # flat (b * F + f)
            cnt = c_nz[lo:hi]
            owner = torch.repeat_interleave(torch.arange(len(ids), device=device), cnt)
            start = torch.cumsum(cnt, 0) - cnt
            local = torch.arange(int(cnt.sum()), device=device, dtype=torch.int64) - start[owner]
            g = ids[owner]
            w = bw[g]
            pj = x0[g] + local % w
            pi = y0[g] + torch.div(local, w, rounding_mode="floor")
            sx = pj.to(torch.float64) + 0.5
            sy = pi.to(torch.float64) + 0.5
            gax, gay, gbx, gby, gcx, gcy = ax[g], ay[g], bx[g], by[g], cx[g], cy[g]
            ia = inv_area[g]
            w0 = ((gbx - sx) * (gcy - sy) - (gcx - sx) * (gby - sy)) * ia
            w1 = ((gcx - sx) * (gay - sy) - (gax - sx) * (gcy - sy)) * ia
            w2 = 1.0 - w0 - w1
            eps = -1e-9
            inside = (w0 >= eps) & (w1 >= eps) & (w2 >= eps)
            zz = z[g]
            depth = w0 * zz[:, 0] + w1 * zz[:, 1] + w2 * zz[:, 2]
            b = torch.div(g, F, rounding_mode="floor")
            f = g - b * F
            key = (_ordered_depth_key(depth) << 31) | f  # 32 depth bits + 31 face bits
            pix = (b * H + pi) * W + pj
            zbuf.scatter_reduce_(0, pix[inside], key[inside], reduce="amin")
        hit = zbuf != torch.iinfo(torch.int64).max
        face = torch.where(hit, zbuf & ((1 << 31) - 1), torch.full_like(zbuf, -1))
        return face.view(B, H, W)


class MeshRenderer(nn.Module):
    """SMIRK's shaded face-region render, differentiable w.r.t. vertex positions.

    Build with the face model's triangles and its face region; call with NDC vertices.

    Args:
        faces: ``(F, 3)`` integer triangles of the full face model (counter-clockwise seen from
            outside, FLAME convention).
        face_region_faces: optional ``(Fr,)`` indices into ``faces``: the triangles to draw
            (SMIRK draws the FLAME face region only). ``None`` draws every triangle.
        image_size: output side in pixels (SMIRK: 224).
        max_pairs: memory bound of the rasteriser, see :func:`rasterize`.

    ``forward(ndc_vertices) -> RenderOutput`` with ``ndc_vertices (B, V, 3)``.
    """

    def __init__(self, faces, face_region_faces=None, image_size: int = 224,
                 max_pairs: int = DEFAULT_MAX_PAIRS):
        super().__init__()
        faces = _check_faces(faces)
        if int(image_size) < 1:
            raise InputError(f"image_size must be positive, got {image_size}")
        if face_region_faces is None:
            region = torch.arange(faces.shape[0], dtype=torch.int64)
        else:
            region = torch.as_tensor(face_region_faces).to(torch.int64).reshape(-1)
            if region.numel() and (int(region.min()) < 0 or int(region.max()) >= faces.shape[0]):
                raise InputError(f"face_region_faces must index 0..{faces.shape[0] - 1}")
        self.image_size = int(image_size)
        self.max_pairs = int(max_pairs)
        self.n_vertices = int(faces.max()) + 1 if faces.numel() else 0
        self.register_buffer("faces", faces, persistent=False)
        self.register_buffer("region", region, persistent=False)
        self.register_buffer("region_faces", faces[region], persistent=False)
        light = torch.tensor(LIGHT_DIRECTIONS_MODEL, dtype=torch.float32)
        light = torch.nn.functional.normalize(light, dim=-1) * torch.tensor([1.0, -1.0, -1.0])  # model -> NDC
        self.register_buffer("lights_ndc", light, persistent=False)

    @classmethod
    def from_face_model(cls, layer, image_size: int = 224, **kwargs) -> "MeshRenderer":
        """From a :class:`~smirk_edge.training.face_model.FaceModelLayer` (its faces and face region)."""
        return cls(layer.faces.cpu(), layer.face_region_faces.cpu(), image_size=image_size, **kwargs)

    def shade(self, normals: torch.Tensor) -> torch.Tensor:
        """SMIRK shading of NDC-frame normals ``(..., 3)`` -> grey level ``(...)`` before clamping."""
        lights = self.lights_ndc.to(normals.dtype)
        ndotl = torch.clamp(normals @ lights.T, 0.0, 1.0)  # (..., 5)
        return ALBEDO * LIGHT_INTENSITY * ndotl.mean(-1)

    def forward(self, ndc_vertices: torch.Tensor) -> RenderOutput:
        _check_vertices(ndc_vertices)
        if ndc_vertices.shape[1] < self.n_vertices:
            raise InputError(f"vertices have {ndc_vertices.shape[1]} points but the faces index "
                             f"{self.n_vertices} vertices")
        B = ndc_vertices.shape[0]
        H = W = self.image_size
        faces_r = self.region_faces
        local = rasterize(ndc_vertices, faces_r, self.image_size, self.max_pairs)  # (B, H, W)
        hit = local >= 0
        normals = vertex_normals(ndc_vertices, faces_r)  # (B, V, 3) NDC frame

        dtype = ndc_vertices.dtype
        flat_hit = hit.reshape(-1)
        idx = torch.nonzero(flat_hit).squeeze(1)  # flat pixel ids (b*H + i)*W + j
        b = torch.div(idx, H * W, rounding_mode="floor")
        rem = idx - b * H * W
        i = torch.div(rem, W, rounding_mode="floor")
        j = rem - i * W
        f = local.reshape(-1)[idx]
        vid = faces_r[f]  # (P, 3)
        P = vid.shape[0]
        tri = ndc_vertices[b[:, None].expand(P, 3), vid]  # (P, 3, 3), differentiable
        # barycentrics in float64, like the coverage test, so thin triangles stay consistent with it
        t64 = tri[..., :2].to(torch.float64)
        half = self.image_size / 2.0
        sx = (j.to(torch.float64) + 0.5) / half - 1.0  # pixel centre in NDC
        sy = (i.to(torch.float64) + 0.5) / half - 1.0
        a, bb, c = t64[:, 0], t64[:, 1], t64[:, 2]
        area2 = (bb[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (c[:, 0] - a[:, 0]) * (bb[:, 1] - a[:, 1])
        area2 = torch.where(area2 == 0, torch.full_like(area2, 1e-30), area2)
        w0 = ((bb[:, 0] - sx) * (c[:, 1] - sy) - (c[:, 0] - sx) * (bb[:, 1] - sy)) / area2
        w1 = ((c[:, 0] - sx) * (a[:, 1] - sy) - (a[:, 0] - sx) * (c[:, 1] - sy)) / area2
        w2 = 1.0 - w0 - w1
        bary_p = torch.stack([w0, w1, w2], dim=-1).to(dtype)  # (P, 3)
        n = (bary_p[..., None] * normals[b[:, None].expand(P, 3), vid]).sum(1)  # (P, 3), not renormalised
        grey = torch.clamp(self.shade(n), 0.0, 1.0)
        depth_p = (bary_p * tri[..., 2]).sum(-1)

        img = ndc_vertices.new_zeros(B * H * W).index_put((idx,), grey)
        image = img.view(B, 1, H, W).repeat(1, 3, 1, 1)
        bary = ndc_vertices.new_zeros(B * H * W, 3).index_put((idx,), bary_p).view(B, H, W, 3)
        depth = torch.full((B * H * W,), float("inf"), dtype=dtype, device=ndc_vertices.device)
        depth = depth.index_put((idx,), depth_p.detach()).view(B, H, W)
        face_index = torch.where(hit, self.region[local.clamp(min=0)], torch.full_like(local, -1))
        return RenderOutput(image=image, mask=hit[:, None].to(dtype), face_index=face_index,
                            bary=bary, depth=depth)
