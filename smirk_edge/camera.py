"""SMIRK's orthographic camera.

``cam = (s, tx, ty)``: ``x = s * (X + tx)``, ``y = -s * (Y + ty)``, ``z = -s * Z`` in normalised
device coordinates of the crop (NDC, -1..1), then ``pixel = (ndc + 1) * size / 2`` (112 at 224).
Image y points down, so the model's y-up becomes image rows; ``z`` grows away from the camera.
A frontal neutral face filling the crop has ``cam ~ (7, 0, 0)``.
"""

from __future__ import annotations

import numpy as np

CROP_SIZE = 224


def project_ndc(points: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """Model-frame points ``(B, N, 3)`` metres -> NDC ``(B, N, 3)`` with ``cam (B, 3)``."""
    p = np.asarray(points, np.float32)
    c = np.asarray(cam, np.float32).reshape(-1, 1, 3)
    s, t = c[..., 0:1], c[..., 1:3]
    xy = s * (p[..., :2] + t)
    out = np.concatenate([xy, s * p[..., 2:3]], axis=-1)
    out[..., 1:] *= -1.0
    return out


def ndc_to_pixels(ndc: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """NDC -> crop pixels: ``(ndc + 1) * size / 2`` on x and y; z is scaled the same way."""
    return (np.asarray(ndc, np.float32) + 1.0) * (size / 2.0)


def pixels_to_ndc(px: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """Inverse of :func:`ndc_to_pixels`."""
    return np.asarray(px, np.float32) / (size / 2.0) - 1.0


def project(points: np.ndarray, cam: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """Model-frame points ``(B, N, 3)`` -> crop pixels ``(B, N, 3)`` (x, y, depth in pixel units)."""
    return ndc_to_pixels(project_ndc(points, cam), size)


def model_to_crop_affine(cam: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """The x, y part of :func:`project` as a ``(2, 3)`` affine: model-frame (X, Y) metres -> crop pixels.

    ``px = (s(X + tx) + 1) * size/2``, ``py = (1 - s(Y + ty)) * size/2`` for ``cam = (s, tx, ty)``.
    Composed with an inverse crop transform it maps the model frame to image pixels
    (:func:`smirk_edge.pipeline.image_affines`).
    """
    s, tx, ty = (float(v) for v in np.asarray(cam).reshape(3))
    h = size / 2.0
    return np.array([[h * s, 0.0, h * (s * tx + 1.0)], [0.0, -h * s, h * (1.0 - s * ty)]])
