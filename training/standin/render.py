"""A small z-buffered Lambert renderer (numpy + OpenCV) for looking at the stand-in model.

Orthographic view along -z of the model frame (x right, y up), smooth vertex normals,
grey albedo, two directional lights plus ambient. Good enough to check that a mesh looks
like a face; not used at run time.
"""

from __future__ import annotations

import numpy as np

from .mesh import vertex_normals


def render(verts: np.ndarray, faces: np.ndarray, size: int = 320, extent: float = 0.22,
           points: np.ndarray | None = None, point_color=(0, 0, 255)) -> np.ndarray:
    """Render one mesh to a BGR image.

    Args:
        verts: ``(V, 3)`` metres, model frame.
        faces: ``(F, 3)`` triangles, counter-clockwise seen from +z.
        size: output side in pixels.
        extent: metres covered by the image side (centred on the origin).
        points: optional ``(L, 3)`` landmarks drawn as dots where they are not hidden.
    Returns:
        ``(size, size, 3)`` uint8 BGR image.
    """
    s = size / extent
    px = np.stack([size / 2 + s * verts[:, 0], size / 2 - s * verts[:, 1]], 1)
    depth = verts[:, 2]
    normals = vertex_normals(verts, faces)
    lights = np.array([[0.0, 0.0, 1.0], [-0.5, 0.6, 0.8], [0.6, 0.2, 0.6]])
    lights /= np.linalg.norm(lights, axis=1, keepdims=True)
    inten = np.array([0.55, 0.35, 0.2])
    zbuf = np.full((size, size), -np.inf)
    img = np.full((size, size, 3), 40.0)
    albedo = np.array([185.0, 195.0, 215.0])  # BGR, slightly warm grey
    for tri in faces:
        p = px[tri]
        x0, y0 = np.floor(p.min(0)).astype(int)
        x1, y1 = np.ceil(p.max(0)).astype(int)
        x0, y0 = max(x0, 0), max(y0, 0)
        x1, y1 = min(x1, size - 1), min(y1, size - 1)
        if x1 < x0 or y1 < y0:
            continue
        xs, ys = np.meshgrid(np.arange(x0, x1 + 1) + 0.5, np.arange(y0, y1 + 1) + 0.5)
        a, b, c = p
        det = (b[0] - a[0]) * (c[1] - a[1]) - (c[0] - a[0]) * (b[1] - a[1])
        if abs(det) < 1e-9:
            continue
        l1 = ((xs - a[0]) * (c[1] - a[1]) - (c[0] - a[0]) * (ys - a[1])) / det
        l2 = ((b[0] - a[0]) * (ys - a[1]) - (xs - a[0]) * (b[1] - a[1])) / det
        l0 = 1 - l1 - l2
        inside = (l0 >= 0) & (l1 >= 0) & (l2 >= 0)
        if not inside.any():
            continue
        z = l0 * depth[tri[0]] + l1 * depth[tri[1]] + l2 * depth[tri[2]]
        sub = zbuf[y0:y1 + 1, x0:x1 + 1]
        upd = inside & (z > sub)
        if not upd.any():
            continue
        n = (l0[..., None] * normals[tri[0]] + l1[..., None] * normals[tri[1]]
             + l2[..., None] * normals[tri[2]])
        n /= np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-9)
        shade = 0.15 + np.clip(n @ lights.T, 0, None) @ inten
        sub[upd] = z[upd]
        img[y0:y1 + 1, x0:x1 + 1][upd] = shade[upd][:, None] * albedo
    out = np.clip(img, 0, 255).astype(np.uint8)
    if points is not None:
        import cv2

        for q in points:
            u, v = size / 2 + s * q[0], size / 2 - s * q[1]
            iu, iv = int(round(u)), int(round(v))
            visible = 0 <= iu < size and 0 <= iv < size and q[2] >= zbuf[iv, iu] - 0.004
            cv2.circle(out, (iu, iv), 2, point_color if visible else (0, 200, 255), -1, cv2.LINE_AA)
    return out


def label(img: np.ndarray, text: str) -> np.ndarray:
    """Write a caption at the top of an image (in place) and return it."""
    import cv2

    cv2.putText(img, text, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return img


def sheet(images: list[np.ndarray], cols: int) -> np.ndarray:
    """Tile equally sized images into a grid ``(rows*h, cols*w, 3)``."""
    h, w = images[0].shape[:2]
    rows = (len(images) + cols - 1) // cols
    out = np.zeros((rows * h, cols * w, 3), np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        out[r * h:(r + 1) * h, c * w:(c + 1) * w] = im
    return out
