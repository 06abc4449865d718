"""SMIRK's crop policy and the one preprocessing path every engine uses.

Policy (what the encoder was trained on): take the bounding box of the face landmarks, a square of
side ``int(((w + h) / 2) * scale)`` around the box centre, and the similarity transform that maps
the square's corners (top-left, bottom-left, top-right) to (0, 0), (0, S-1), (S-1, 0) of an
``S x S`` crop (S = 224); warp bilinearly with zero borders. Scale 1.4 at demo time, 1.6 for
tests, random in [1.2, 1.8] in training.

Conventions: image pixel coordinates have their origin at the centre of the top-left pixel
(as OpenCV and skimage use). A :class:`CropTransform` maps image pixels to crop pixels and back
exactly (float64 affine algebra).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .errors import InputError

CROP_SIZE = 224
DEFAULT_SCALE = 1.4
INPUT_NAME = "image"
"""Name of the encoder's input tensor in every exported graph."""


@dataclass(frozen=True)
class CropTransform:
    """A similarity transform image -> crop. ``matrix`` is the 2x3 forward affine (float64)."""

    matrix: np.ndarray
    size: int = CROP_SIZE

    @property
    def inverse_matrix(self) -> np.ndarray:
        return cv2.invertAffineTransform(self.matrix)

    @property
    def scale(self) -> float:
        """Crop pixels per image pixel."""
        return float(np.hypot(self.matrix[0, 0], self.matrix[1, 0]))

    def to_crop(self, points: np.ndarray) -> np.ndarray:
        """Image pixels ``(..., 2)`` -> crop pixels ``(..., 2)``."""
        return _apply(self.matrix, points)

    def to_image(self, points: np.ndarray) -> np.ndarray:
        """Crop pixels ``(..., 2)`` -> image pixels ``(..., 2)``."""
        return _apply(self.inverse_matrix, points)

    def warp(self, image: np.ndarray, border_value: float = 0.0) -> np.ndarray:
        """Crop ``image (H, W, C)`` to ``(size, size, C)`` with bilinear sampling and zero borders."""
        return cv2.warpAffine(image, self.matrix, (self.size, self.size), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=border_value)


def _apply(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    p = np.asarray(points, dtype=np.float64)
    return p @ m[:, :2].T + m[:, 2]


def square_from_box(box: np.ndarray, scale: float = DEFAULT_SCALE) -> tuple[np.ndarray, int]:
    """SMIRK's square for a landmark box ``(x0, y0, x1, y1)``: centre ``(2,)`` and integer side."""
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (x1 > x0 and y1 > y0) or not np.all(np.isfinite([x0, y0, x1, y1])):
        raise InputError(f"face box must have x1 > x0 and y1 > y0 and be finite, got {list(box)}")
    centre = np.array([x1 - (x1 - x0) / 2.0, y1 - (y1 - y0) / 2.0])
    side = int(((x1 - x0) + (y1 - y0)) / 2.0 * scale)
    if side < 1:
        raise InputError(f"face box {list(box)} at scale {scale} gives an empty crop")
    return centre, side


def transform_from_square(centre: np.ndarray, side: float, size: int = CROP_SIZE, angle_deg: float = 0.0
                          ) -> CropTransform:
    """Similarity transform taking the square (``centre``, ``side``, rotated by ``angle_deg``
    counter-clockwise in the image) onto the ``size x size`` crop, corners to (0,0), (0,S-1), (S-1,0)."""
    k = (size - 1) / float(side)
    a = np.deg2rad(angle_deg)
    c, s = np.cos(a) * k, np.sin(a) * k
    # rotate about the square's centre, then scale and move the centre to the crop centre
    half = (size - 1) / 2.0
    m = np.array([[c, -s, 0.0], [s, c, 0.0]])
    m[:, 2] = np.array([half, half]) - m[:, :2] @ np.asarray(centre, np.float64)
    return CropTransform(m, size)


def crop_from_landmarks(landmarks: np.ndarray, scale: float = DEFAULT_SCALE, size: int = CROP_SIZE) -> CropTransform:
    """SMIRK's crop for landmarks ``(N, 2)`` image pixels (MediaPipe's 478, or our 105/68)."""
    lm = np.asarray(landmarks, np.float64)
    if lm.ndim != 2 or lm.shape[1] < 2 or len(lm) < 2:
        raise InputError(f"landmarks must be (N, 2) with N >= 2, got {lm.shape}")
    box = np.array([lm[:, 0].min(), lm[:, 1].min(), lm[:, 0].max(), lm[:, 1].max()])
    return crop_from_box(box, scale, size)


def crop_from_box(box: np.ndarray, scale: float = DEFAULT_SCALE, size: int = CROP_SIZE) -> CropTransform:
    """SMIRK's crop for a landmark bounding box ``(x0, y0, x1, y1)`` image pixels."""
    centre, side = square_from_box(box, scale)
    return transform_from_square(centre, side, size)


@dataclass(frozen=True)
class BoxMapping:
    """Maps a source box (detector box, or the box of predicted landmarks) to the box SMIRK's crop
    policy expects (the box of MediaPipe's 478 landmarks).

    With ``side`` the mean of the source box's width and height and ``u = sin(yaw)`` (head yaw in
    degrees as :func:`smirk_edge.face_model.model.yaw_degrees` defines it; 0 when unknown):
    ``centre' = centre + (dx + dx_yaw * u, dy) * side``,
    ``size' = (sx + sx_yaw * |u|, sy) * side``. Calibrated on real photos (docs/crop.md).
    """

    dx: float = 0.0
    dy: float = 0.0
    sx: float = 1.0
    sy: float = 1.0
    dx_yaw: float = 0.0
    sx_yaw: float = 0.0

    def apply(self, box: np.ndarray, yaw_deg: float = 0.0) -> np.ndarray:
        x0, y0, x1, y1 = (float(v) for v in box)
        u = float(np.sin(np.deg2rad(yaw_deg)))
        side = ((x1 - x0) + (y1 - y0)) / 2.0
        cx = (x0 + x1) / 2.0 + (self.dx + self.dx_yaw * u) * side
        cy = (y0 + y1) / 2.0 + self.dy * side
        hw, hh = (self.sx + self.sx_yaw * abs(u)) * side / 2.0, self.sy * side / 2.0
        return np.array([cx - hw, cy - hh, cx + hw, cy + hh])

    def apply_many(self, boxes: np.ndarray, yaw_deg: np.ndarray | None = None) -> np.ndarray:
        """:meth:`apply` of ``(B, 4)`` boxes (and ``(B,)`` yaws) at once: ``(B, 4)`` float64."""
        b = np.asarray(boxes, np.float64).reshape(-1, 4)
        u = np.zeros(len(b)) if yaw_deg is None else np.sin(np.deg2rad(np.asarray(yaw_deg, np.float64).reshape(-1)))
        side = ((b[:, 2] - b[:, 0]) + (b[:, 3] - b[:, 1])) / 2.0
        cx = (b[:, 0] + b[:, 2]) / 2.0 + (self.dx + self.dx_yaw * u) * side
        cy = (b[:, 1] + b[:, 3]) / 2.0 + self.dy * side
        hw, hh = (self.sx + self.sx_yaw * np.abs(u)) * side / 2.0, self.sy * side / 2.0
        return np.stack([cx - hw, cy - hh, cx + hw, cy + hh], axis=1)


# Calibrated by training/box_calibration.py on 26k MediaPipe-annotated faces, 20% held out
# (docs/crop.md): held-out crop IoU against the exact SMIRK crop 0.911 (detector box) and 0.935
# (105-landmark box with the yaw terms).
DETECTOR_TO_LANDMARK_BOX = BoxMapping(-0.0042, -0.0233, 0.8960, 1.0298)
LANDMARK105_TO_LANDMARK_BOX = BoxMapping(0.0005, 0.0175, 1.2839, 1.4830, dx_yaw=-0.3933, sx_yaw=0.0388)


def landmark_box_from_detection(box: np.ndarray) -> np.ndarray:
    """The 478-landmark box SMIRK's crop expects, estimated from a BlazeFace detection box."""
    return DETECTOR_TO_LANDMARK_BOX.apply(box)


def to_tensor(crops_bgr: np.ndarray) -> np.ndarray:
    """BGR uint8 crops ``(B, S, S, 3)`` or ``(S, S, 3)`` -> RGB float32 ``(B, 3, S, S)`` in [0, 1].

    This is the encoder's input for every engine (no mean/std normalisation).
    """
    x = np.asarray(crops_bgr)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3:
        raise InputError(f"crops must be (B, S, S, 3) BGR, got {x.shape}")
    # one pass per channel into the planar output (BGR -> RGB by the channel index): ~6x faster than
    # a transposed astype of the reversed view, and the same float32 values (u8 * float32(1/255))
    out = np.empty((x.shape[0], 3, x.shape[1], x.shape[2]), np.float32)
    scale = np.float32(1.0 / 255.0)
    integer = np.issubdtype(x.dtype, np.integer)
    for c in range(3):
        if integer:
            np.multiply(x[..., 2 - c], scale, out=out[:, c], dtype=np.float32)
        else:
            out[:, c] = x[..., 2 - c]
    return out


def preprocess(image_bgr: np.ndarray, transforms: list[CropTransform], size: int = CROP_SIZE) -> np.ndarray:
    """Warp one BGR uint8 frame once per face and return the encoder batch ``(B, 3, S, S)``.

    ``size`` is the side of the (empty) batch when there is no transform; otherwise each
    transform's own size is used."""
    if not transforms:
        return np.zeros((0, 3, size, size), np.float32)
    crops = np.stack([t.warp(image_bgr) for t in transforms])
    return to_tensor(crops)
