"""The masked image the SMIRK generator sees next to the render.

What the official training code does (read from its public source for the facts; this is our own
implementation), and therefore what this module does:

1. **Context.** ``hull``: the convex hull of the (478 MediaPipe) landmarks in crop pixels. The hull
   is DILATED by ``dilation`` pixels (a square ``2r+1`` max-pool, r = 10 in SMIRK's config) and the
   image is kept only OUTSIDE it; pixels covered by the render of the face region are removed too.
   So the generator gets the hair/background/neck context and must paint the face itself.
   (SMIRK_FACTS's "the image inside the convex hull" reads the other way; the official code, the
   demo and the paper ("the face is masked out except a few sampled pixels") keep the outside.)
2. **Sparse hints.** ``n = int(ratio * H * W)`` points are sampled on the mesh surface (with
   replacement): a triangle with probability proportional to its projected area times an optional
   per-triangle region weight, restricted to triangles facing the camera (mean vertex-normal
   ``z_ndc < 0.05``), then a uniform point in it. ``ratio`` is 0.01 in training and 0.05 in the
   official demo (:data:`TRAIN_RATIO`, :data:`DEMO_RATIO`), i.e. a fraction of the IMAGE area, not
   of the face. The image pixel under each point (``floor((ndc + 1) * size / 2)``) is copied into the
   masked image; in the cycle pass the same surface points are read at their position on the
   original mesh and written at their position on the augmented mesh (:func:`transfer_pixels`).
3. **Noise.** The copied values are multiplied by ``N(1, 0.05)`` noise, independently per value.
4. **Holes.** Hole centres are drawn with probability ``hole_rate`` per pixel and dilated to
   ``11 x 11`` squares; sparse hints inside a hole are dropped (holes act on the hints, not on the
   context, as in the official code). ``hole_rate`` is 0.01 in the reconstruction pass
   (:data:`TRAIN_HOLE_RATE`, ~70% of hints dropped) and 0.005 in the cycle pass (:data:`CYCLE_HOLE_RATE`).

Everything is batched torch and runs on CPU or GPU, except :func:`hull_mask`, which fills each
convex hull with OpenCV on the CPU, one image at a time (it belongs in the data loader, as in
SMIRK; ~50 us per image with 478 landmarks, measured on a loaded 2-core CPU). Randomness comes
from an optional ``torch.Generator``, which must live on the same device as the tensors (a torch
rule). The masked image is returned detached.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from smirk_edge.errors import InputError

from .renderer import vertex_normals

#: Fraction of the image area sampled as hints in training (SMIRK ``mask_ratio``).
TRAIN_RATIO = 0.01
#: Fraction sampled by the official demo (``mask_ratio * mask_ratio_mul``).
DEMO_RATIO = 0.05
#: Hole-centre probability per pixel in the reconstruction pass.
TRAIN_HOLE_RATE = 0.01
#: Hole-centre probability per pixel in the cycle pass.
CYCLE_HOLE_RATE = 0.005
#: Dilation radius of the landmark hull in pixels (SMIRK ``mask_dilation_radius``).
DILATION_RADIUS = 10
#: Side of the square holes in pixels.
HOLE_SIZE = 11
#: Standard deviation of the multiplicative noise on the hints.
NOISE_STD = 0.05


@dataclass
class SurfaceSamples:
    """Points on a mesh: ``face_index (B, N)`` int64 into the faces used, ``bary (B, N, 3)``.

    ``valid (B, N)`` bool is False for every point of an image with no camera-facing triangle.
    """

    face_index: torch.Tensor
    bary: torch.Tensor
    valid: torch.Tensor

    def repeat(self, k: int) -> "SurfaceSamples":
        """The same samples for a batch repeated ``k`` times (``torch.cat(k * [x])`` order)."""
        return SurfaceSamples(self.face_index.repeat(k, 1), self.bary.repeat(k, 1, 1), self.valid.repeat(k, 1))


@dataclass
class MaskedImage:
    """Output of :func:`mask_image`.

    Attributes:
        image: ``(B, C, H, W)`` the generator's masked input (detached).
        context: ``(B, 1, H, W)`` float, 1 where the original image is kept (outside the dilated
            hull and outside the render).
        hints: ``(B, 1, H, W)`` bool, pixels holding a (noisy) sparse hint.
        holes: ``(B, 1, H, W)`` bool, pixels inside a random hole.
    """

    image: torch.Tensor
    context: torch.Tensor
    hints: torch.Tensor
    holes: torch.Tensor


def _check_image(image: torch.Tensor, name: str = "image") -> None:
    if not isinstance(image, torch.Tensor) or image.dim() != 4:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise InputError(f"{name} must be a (B, C, H, W) tensor, got {shape}")


def _check_map(m: torch.Tensor, image: torch.Tensor, name: str) -> None:
    if not isinstance(m, torch.Tensor) or m.dim() != 4 or m.shape[1] != 1 or m.shape[0] != image.shape[0] \
            or m.shape[2:] != image.shape[2:]:
        shape = tuple(m.shape) if isinstance(m, torch.Tensor) else type(m).__name__
        raise InputError(f"{name} must have shape ({image.shape[0]}, 1, {image.shape[2]}, {image.shape[3]}), got {shape}")


def hull_mask(landmarks_px, image_size: int = 224) -> torch.Tensor:
    """Filled convex hull of landmarks, 1 inside (OpenCV, CPU, one image at a time).

    Args:
        landmarks_px: ``(B, L, 2)`` (or ``(L, 2)``) crop pixels (x, y), numpy or torch; truncated to
            integers as the official code does (``astype(int32)``).
        image_size: side of the square crop.
    Returns:
        ``(B, 1, H, W)`` float32 CPU tensor, 1 inside the hull (border included), 0 outside.
    """
    import cv2

    pts = landmarks_px.detach().cpu().numpy() if isinstance(landmarks_px, torch.Tensor) else np.asarray(landmarks_px)
    if pts.ndim == 2:
        pts = pts[None]
    if pts.ndim != 3 or pts.shape[-1] < 2 or pts.shape[1] < 3:
        raise InputError(f"landmarks must have shape (B, L>=3, 2), got {pts.shape}")
    if not np.isfinite(pts[..., :2]).all():
        raise InputError("landmarks contain NaN or infinity")
    out = np.zeros((pts.shape[0], 1, image_size, image_size), np.float32)
    for b in range(pts.shape[0]):
        hull = cv2.convexHull(pts[b, :, :2].astype(np.int32))
        m = np.zeros((image_size, image_size), np.uint8)
        cv2.fillConvexPoly(m, hull, 1)
        out[b, 0] = m
    return torch.from_numpy(out)


def triangle_weights(ndc_vertices: torch.Tensor, faces: torch.Tensor, region_weights: torch.Tensor | None = None,
                     facing_threshold: float = 0.05) -> torch.Tensor:
    """Sampling weight of each triangle: projected area x region weight, 0 unless it faces the camera.

    Args:
        ndc_vertices: ``(B, V, 3)`` SMIRK NDC (camera looks along +z_ndc; facing normals have z < 0).
        faces: ``(F, 3)`` int64 triangles eligible for sampling (e.g. the face region).
        region_weights: optional ``(F,)`` non-negative weights (SMIRK weights lips and nose 0.5).
        facing_threshold: a triangle counts as facing when the mean z of its vertex normals is below this.
    Returns:
        ``(B, F)`` non-negative weights (not normalised).
    """
    with torch.no_grad():
        v = ndc_vertices.detach()
        normals = vertex_normals(v, faces)  # NDC frame
        nz = normals[:, faces, 2].mean(-1)  # (B, F)
        tri = v[:, faces, :2]  # (B, F, 3, 2)
        e1 = tri[:, :, 1] - tri[:, :, 0]
        e2 = tri[:, :, 2] - tri[:, :, 0]
        area = 0.5 * (e1[..., 0] * e2[..., 1] - e1[..., 1] * e2[..., 0]).abs()
        w = torch.where(nz < facing_threshold, area, torch.zeros_like(area))
        if region_weights is not None:
            rw = torch.as_tensor(region_weights, dtype=w.dtype, device=w.device).reshape(-1)
            if rw.shape[0] != faces.shape[0]:
                raise InputError(f"region_weights must have shape ({faces.shape[0]},), got {tuple(rw.shape)}")
            w = w * rw
        return torch.nan_to_num(w, nan=0.0, posinf=0.0).clamp(min=0)


def sample_surface(ndc_vertices: torch.Tensor, faces: torch.Tensor, ratio: float = TRAIN_RATIO,
                   image_size: int = 224, region_weights: torch.Tensor | None = None,
                   generator: torch.Generator | None = None) -> SurfaceSamples:
    """Sample ``int(ratio * image_size**2)`` points per image on the camera-facing surface.

    Args:
        ndc_vertices: ``(B, V, 3)`` SMIRK NDC.
        faces: ``(F, 3)`` int64 triangles to sample from.
        ratio: number of points as a fraction of the image area.
        image_size: crop side in pixels.
        region_weights: optional ``(F,)`` per-triangle weights, see :func:`triangle_weights`.
        generator: optional ``torch.Generator`` on the vertices' device.
    Returns:
        :class:`SurfaceSamples` with ``N = int(ratio * image_size**2)`` points per image.
    """
    if ndc_vertices.dim() != 3 or ndc_vertices.shape[-1] != 3:
        raise InputError(f"ndc_vertices must have shape (B, V, 3), got {tuple(ndc_vertices.shape)}")
    if not 0.0 <= ratio <= 1.0:
        raise InputError(f"ratio must be in [0, 1], got {ratio}")
    faces = torch.as_tensor(faces, device=ndc_vertices.device).to(torch.int64)
    B = ndc_vertices.shape[0]
    n = int(ratio * image_size * image_size)
    dev = ndc_vertices.device
    if n == 0 or faces.shape[0] == 0:
        return SurfaceSamples(torch.zeros(B, 0, dtype=torch.int64, device=dev),
                              torch.zeros(B, 0, 3, dtype=ndc_vertices.dtype, device=dev),
                              torch.zeros(B, 0, dtype=torch.bool, device=dev))
    w = triangle_weights(ndc_vertices, faces, region_weights).to(torch.float32)
    ok = w.sum(1) > 0
    w = torch.where(ok[:, None], w, torch.ones_like(w))
    idx = torch.multinomial(w, n, replacement=True, generator=generator)
    u = torch.rand(B, n, device=dev, generator=generator)
    v = torch.rand(B, n, device=dev, generator=generator)
    flip = (u + v) > 1
    u = torch.where(flip, 1 - u, u)
    v = torch.where(flip, 1 - v, v)
    bary = torch.stack([1 - u - v, u, v], dim=-1).to(ndc_vertices.dtype)
    return SurfaceSamples(idx, bary, ok[:, None].expand(B, n).clone())


def samples_to_pixels(ndc_vertices: torch.Tensor, faces: torch.Tensor, samples: SurfaceSamples,
                      image_size: int = 224) -> torch.Tensor:
    """Pixel (column, row) ``(B, N, 2)`` int64 of surface samples: ``floor((ndc + 1) * size / 2)``, clamped."""
    faces = torch.as_tensor(faces, device=ndc_vertices.device).to(torch.int64)
    B, N = samples.face_index.shape
    if ndc_vertices.shape[0] != B:
        raise InputError(f"vertices have batch {ndc_vertices.shape[0]} but the samples have batch {B}")
    with torch.no_grad():
        vid = faces[samples.face_index.reshape(-1)].reshape(B, N * 3)
        pts = torch.gather(ndc_vertices.detach()[..., :2], 1, vid[..., None].expand(-1, -1, 2)).reshape(B, N, 3, 2)
        xy = (samples.bary[..., None] * pts).sum(2)
        px = torch.floor((xy + 1.0) * (image_size / 2.0)).to(torch.int64)
        return px.clamp(0, image_size - 1)


def transfer_pixels(image: torch.Tensor, src_px: torch.Tensor, dst_px: torch.Tensor,
                    valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Copy ``image`` pixels at ``src_px`` to ``dst_px`` on an empty canvas.

    Args:
        image: ``(B, C, H, W)``.
        src_px, dst_px: ``(B, N, 2)`` int64 (column, row) inside the image.
        valid: optional ``(B, N)`` bool; invalid points are not copied.
    Returns:
        ``hints (B, C, H, W)`` (zeros elsewhere) and ``mask (B, 1, H, W)`` bool of written pixels.
    """
    _check_image(image)
    B, C, H, W = image.shape
    if src_px.shape != dst_px.shape or src_px.dim() != 3 or src_px.shape[0] != B or src_px.shape[-1] != 2:
        raise InputError(f"src_px and dst_px must both have shape ({B}, N, 2), got {tuple(src_px.shape)} "
                         f"and {tuple(dst_px.shape)}")
    N = src_px.shape[1]
    src = (src_px[..., 1] * W + src_px[..., 0]).clamp(0, H * W - 1)
    dst = (dst_px[..., 1] * W + dst_px[..., 0]).clamp(0, H * W - 1)
    if valid is None:
        valid = torch.ones(B, N, dtype=torch.bool, device=image.device)
    flat = image.reshape(B, C, H * W)
    vals = torch.gather(flat, 2, src[:, None, :].expand(B, C, N))  # (B, C, N)
    # invalid points write to a spare slot that is dropped afterwards
    dst = torch.where(valid, dst, torch.full_like(dst, H * W))
    canvas = image.new_zeros(B, C, H * W + 1).scatter(2, dst[:, None, :].expand(B, C, N), vals)
    mask = torch.zeros(B, H * W + 1, dtype=torch.bool, device=image.device).scatter(
        1, dst, torch.ones_like(dst, dtype=torch.bool))
    return canvas[..., :-1].reshape(B, C, H, W), mask[:, :-1].reshape(B, 1, H, W)


def mask_image(image: torch.Tensor, hull: torch.Tensor, hints: torch.Tensor, hint_mask: torch.Tensor,
               rendered_mask: torch.Tensor | None = None, dilation: int = DILATION_RADIUS,
               noise_std: float = NOISE_STD, hole_rate: float = TRAIN_HOLE_RATE, hole_size: int = HOLE_SIZE,
               generator: torch.Generator | None = None) -> MaskedImage:
    """Assemble the masked image (steps 1, 3, 4 of the module docstring).

    Args:
        image: ``(B, C, H, W)`` in [0, 1].
        hull: ``(B, 1, H, W)`` 1 inside the landmark hull (:func:`hull_mask`).
        hints: ``(B, C, H, W)`` sparse pixel values (:func:`transfer_pixels`).
        hint_mask: ``(B, 1, H, W)`` bool, where ``hints`` holds a value.
        rendered_mask: optional ``(B, 1, H, W)``, 1 where the face region is rendered (removed).
        dilation: hull dilation radius in pixels.
        noise_std: std of the multiplicative ``N(1, std)`` noise on the hints (0 disables).
        hole_rate: per-pixel probability of a hole centre (0 disables holes).
        hole_size: side of the square holes (odd).
        generator: optional ``torch.Generator`` on the image's device.
    Returns:
        :class:`MaskedImage`.
    """
    _check_image(image)
    _check_map(hull, image, "hull")
    _check_map(hint_mask, image, "hint_mask")
    if hints.shape != image.shape:
        raise InputError(f"hints must have the image's shape {tuple(image.shape)}, got {tuple(hints.shape)}")
    if rendered_mask is not None:
        _check_map(rendered_mask, image, "rendered_mask")
    if dilation < 0 or hole_size < 1 or hole_size % 2 == 0:
        raise InputError(f"dilation must be >= 0 and hole_size odd and positive, got {dilation}, {hole_size}")
    B, C, H, W = image.shape
    with torch.no_grad():
        hull = hull.to(image.dtype)
        grown = F.max_pool2d(hull, 2 * dilation + 1, stride=1, padding=dilation) if dilation > 0 else hull
        context = 1.0 - grown
        if rendered_mask is not None:
            context = context * (1.0 - (rendered_mask > 0).to(image.dtype))
        out = image.detach() * context
        vals = hints.detach()
        if noise_std > 0:
            noise = torch.randn(vals.shape, device=vals.device, dtype=vals.dtype, generator=generator)
            vals = vals * (1.0 + noise_std * noise)
        if hole_rate > 0:
            centres = torch.rand(B, 1, H, W, device=image.device, generator=generator) < hole_rate
            holes = F.max_pool2d(centres.to(image.dtype), hole_size, stride=1, padding=hole_size // 2) > 0
        else:
            holes = torch.zeros(B, 1, H, W, dtype=torch.bool, device=image.device)
        keep = hint_mask.bool() & ~holes
        out = torch.where(keep, vals, out)
    return MaskedImage(image=out, context=context, hints=keep, holes=holes)


def masked_generator_input(image: torch.Tensor, hull: torch.Tensor, ndc_vertices: torch.Tensor, faces: torch.Tensor,
                           rendered_mask: torch.Tensor | None, ratio: float = TRAIN_RATIO,
                           hole_rate: float = TRAIN_HOLE_RATE, target_ndc_vertices: torch.Tensor | None = None,
                           samples: SurfaceSamples | None = None, region_weights: torch.Tensor | None = None,
                           dilation: int = DILATION_RADIUS, noise_std: float = NOISE_STD,
                           generator: torch.Generator | None = None) -> MaskedImage:
    """The whole masked input in one call, for either pass.

    Reconstruction pass: ``target_ndc_vertices=None``; hints are sampled on ``ndc_vertices`` and
    copied in place. Cycle pass: pass the augmented mesh as ``target_ndc_vertices`` (same faces,
    same batch as ``image``); the pixel under each surface point of the ORIGINAL mesh is written at
    that point's position on the augmented mesh. ``samples`` (e.g. ``SurfaceSamples.repeat``) reuses
    a draw. ``faces`` are the triangles to sample on (the face region); ``rendered_mask`` is the
    render mask of the mesh being drawn (the augmented one in the cycle pass).
    """
    _check_image(image)
    size = image.shape[-1]
    if image.shape[-2] != size:
        raise InputError(f"image must be square, got {tuple(image.shape[-2:])}")
    faces = torch.as_tensor(faces, device=image.device).to(torch.int64)
    if samples is None:
        samples = sample_surface(ndc_vertices, faces, ratio, size, region_weights, generator)
    src = samples_to_pixels(ndc_vertices, faces, samples, size)
    dst = src if target_ndc_vertices is None else samples_to_pixels(target_ndc_vertices, faces, samples, size)
    hints, hint_mask = transfer_pixels(image, src, dst, samples.valid)
    return mask_image(image, hull, hints, hint_mask, rendered_mask, dilation=dilation, noise_std=noise_std,
                      hole_rate=hole_rate, generator=generator)
