"""Overlays: a z-buffered, Lambert-shaded mesh and landmarks drawn onto a BGR image (numpy + OpenCV)."""

from __future__ import annotations

import sys
import types
from typing import Sequence

import cv2
import numpy as np

from .image import as_bgr_uint8
from .results import Face

MESH_COLOR = np.array([0.78, 0.72, 0.66])  # BGR albedo, light grey-blue
LIGHT_DIR = np.array([0.25, -0.35, -1.0])  # toward the viewer, from above-left (image frame, z away)


def rasterize(verts: np.ndarray, faces: np.ndarray, height: int, width: int,
              max_pixels: int = 20_000_000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Z-buffer rasterisation in image pixels.

    Args:
        verts: ``(V, 3)`` x, y pixels and depth (smaller depth = nearer the viewer).
        faces: ``(F, 3)`` triangles.
        height, width: image size.
        max_pixels: cap on candidate pixel count (guards huge meshes).

    Returns:
        ``face_id (H, W)`` int32 (-1 = background), ``bary (H, W, 3)`` float32 and
        ``depth (H, W)`` float32 (inf on background).
    """
    face_id = np.full((height, width), -1, np.int32)
    bary_img = np.zeros((height, width, 3), np.float32)
    zbuf = np.full((height, width), np.inf, np.float32)
    tri = verts[faces].astype(np.float64)  # (F, 3, 3)
    x0 = np.clip(np.floor(tri[:, :, 0].min(1)), 0, width - 1).astype(np.int64)
    x1 = np.clip(np.ceil(tri[:, :, 0].max(1)), 0, width - 1).astype(np.int64)
    y0 = np.clip(np.floor(tri[:, :, 1].min(1)), 0, height - 1).astype(np.int64)
    y1 = np.clip(np.ceil(tri[:, :, 1].max(1)), 0, height - 1).astype(np.int64)
    inside_frame = (tri[:, :, 0].max(1) >= 0) & (tri[:, :, 0].min(1) <= width - 1) & \
                   (tri[:, :, 1].max(1) >= 0) & (tri[:, :, 1].min(1) <= height - 1)
    bw, bh = x1 - x0 + 1, y1 - y0 + 1
    keep = np.nonzero(inside_frame & (bw > 0) & (bh > 0))[0]
    if len(keep) == 0:
        return face_id, bary_img, zbuf
    counts = (bw * bh)[keep]
    total = int(counts.sum())
    if total > max_pixels:
        raise ValueError(f"mesh covers {total} candidate pixels (> {max_pixels}); draw it on a smaller image")
    fid = np.repeat(keep, counts)
    local = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    px = x0[fid] + local % bw[fid]
    py = y0[fid] + local // bw[fid]
    a, b, c = tri[fid, 0], tri[fid, 1], tri[fid, 2]
    det = (b[:, 1] - c[:, 1]) * (a[:, 0] - c[:, 0]) + (c[:, 0] - b[:, 0]) * (a[:, 1] - c[:, 1])
    ok = np.abs(det) > 1e-12
    det = np.where(ok, det, 1.0)
    w0 = ((b[:, 1] - c[:, 1]) * (px - c[:, 0]) + (c[:, 0] - b[:, 0]) * (py - c[:, 1])) / det
    w1 = ((c[:, 1] - a[:, 1]) * (px - c[:, 0]) + (a[:, 0] - c[:, 0]) * (py - c[:, 1])) / det
    w2 = 1.0 - w0 - w1
    eps = -1e-7
    hit = ok & (w0 >= eps) & (w1 >= eps) & (w2 >= eps)
    fid, px, py = fid[hit], px[hit], py[hit]
    w = np.stack([w0[hit], w1[hit], w2[hit]], 1)
    z = (w * tri[fid, :, 2]).sum(1)
    # nearest per pixel: sort by (pixel, depth) and keep the first of each pixel
    pix = py * width + px
    order = np.lexsort((z, pix))
    pix_sorted = pix[order]
    first = np.ones(len(order), bool)
    first[1:] = pix_sorted[1:] != pix_sorted[:-1]
    sel = order[first]
    face_id.reshape(-1)[pix[sel]] = fid[sel]
    bary_img.reshape(-1, 3)[pix[sel]] = w[sel]
    zbuf.reshape(-1)[pix[sel]] = z[sel]
    return face_id, bary_img, zbuf


def vertex_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals ``(V, 3)`` of a mesh in any frame."""
    tri = verts[faces]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    out = np.zeros_like(verts, dtype=np.float64)
    for k in range(3):
        np.add.at(out, faces[:, k], n)
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    return (out / np.maximum(norm, 1e-12)).astype(np.float32)


def shade_mesh(image: np.ndarray, verts_image: np.ndarray, faces: np.ndarray, alpha: float = 0.75,
               color: Sequence[float] = MESH_COLOR) -> np.ndarray:
    """Blend a Lambert-shaded render of the mesh into ``image`` (in place) and return it."""
    h, w = image.shape[:2]
    v = np.asarray(verts_image, np.float64)
    fid, bary, _ = rasterize(v, faces, h, w)
    mask = fid >= 0
    if not mask.any():
        return image
    normals = vertex_normals(v, faces)
    # the image frame is left-handed for normals of front-facing triangles (y down, depth away):
    # orient normals toward the viewer (negative depth)
    if np.median(normals[:, 2]) > 0:
        normals = -normals
    n = (bary[mask][:, :, None] * normals[faces[fid[mask]]]).sum(1)
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    light = LIGHT_DIR / np.linalg.norm(LIGHT_DIR)
    lambert = np.clip(n @ light, 0.0, 1.0)
    shade = 0.25 + 0.85 * lambert
    rgb = np.clip(shade[:, None] * np.asarray(color)[None] * 255.0, 0, 255)
    region = image[mask].astype(np.float64)
    image[mask] = np.clip((1 - alpha) * region + alpha * rgb, 0, 255).astype(np.uint8)
    return image


def draw(image: np.ndarray, faces: Sequence[Face], mesh: bool = True, landmarks: bool = True,
         boxes: bool = False, copy: bool = True) -> np.ndarray:
    """Draw reconstructed faces on a BGR image: shaded mesh, 68 landmarks (green), 105 (red dots).

    Returns a new BGR uint8 image (or ``image`` itself when ``copy=False`` and it is BGR uint8).
    """
    out = as_bgr_uint8(image)
    if copy and out is image:
        out = out.copy()
    radius = max(1, int(round(max(out.shape[:2]) / 500)))
    # farthest face first so nearer faces overdraw it
    for f in sorted(faces, key=lambda f: -float(np.mean(f.vertices_image[:, 2]))):
        if mesh and f.faces is not None:
            shade_mesh(out, f.vertices_image, f.faces)
        if boxes:
            x0, y0, x1, y1 = (int(round(v)) for v in f.box)
            cv2.rectangle(out, (x0, y0), (x1, y1), (255, 200, 0), radius)
        if landmarks:
            for x, y in f.landmarks105:
                cv2.circle(out, (int(round(x)), int(round(y))), radius, (40, 40, 230), -1, cv2.LINE_AA)
            for x, y in f.landmarks68:
                cv2.circle(out, (int(round(x)), int(round(y))), radius + 1, (60, 220, 60), -1, cv2.LINE_AA)
    return out


class _DrawModule(types.ModuleType):
    """This module is also the function: ``smirk_edge.draw(frame, faces)`` calls :func:`draw`."""

    def __call__(self, image: np.ndarray, faces: Sequence[Face], **options) -> np.ndarray:
        return draw(image, faces, **options)


sys.modules[__name__].__class__ = _DrawModule
