"""Head rotation in the image's orientation: the encoder's pose (relative to its crop) composed
with the crop's own roll. Shared by :func:`smirk_edge.results.head_pose_degrees` and the glTF export."""

from __future__ import annotations

import numpy as np

__all__ = ["crop_roll_degrees", "head_rotation_matrix"]


def crop_roll_degrees(crop_matrix: np.ndarray) -> float:
    """Counter-clockwise rotation (degrees, as seen in the image) of the square that a 2x3
    image -> crop affine cuts out: 0 for an upright crop."""
    m = np.asarray(crop_matrix, np.float64)
    return float(np.degrees(np.arctan2(m[1, 0], m[0, 0])))


def head_rotation_matrix(pose: np.ndarray, crop_roll_deg: float = 0.0) -> np.ndarray:
    """``(3, 3)`` float64 rotation of the head in the image's orientation: the axis-angle ``pose``
    (relative to the crop) composed with the crop's own counter-clockwise roll about the camera axis."""
    from .face_model.model import rodrigues

    R = rodrigues(np.asarray(pose, np.float32)[None])[0].astype(np.float64)
    if crop_roll_deg:
        a = np.radians(crop_roll_deg)
        Rz = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
        R = Rz @ R
    return R
