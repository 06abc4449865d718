"""Input images: decoding files and normalising arrays to BGR uint8, with typed errors.

Accepted arrays (documented conversions):

==================  ==========================================================
``(H, W)``          greyscale -> replicated to 3 channels
``(H, W, 1)``       greyscale -> replicated to 3 channels
``(H, W, 3)``       BGR (OpenCV's order), used as is
``(H, W, 4)``       BGRA -> alpha dropped (not composited)
uint8               as is
uint16              divided by 257 (full range kept)
float16/32/64       assumed in [0, 1], clipped, scaled by 255
bool                refused (a mask, not an image)
==================  ==========================================================

Both sides must be in 1..32767 (OpenCV's warp limit); anything else raises
:class:`~smirk_edge.errors.InputError`. Non-contiguous arrays are accepted (copied once).
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from .errors import InputError

MAX_SIDE = 32767
MAX_FILE_BYTES = 512 * 1024 * 1024


def as_bgr_uint8(image: object) -> np.ndarray:
    """Return ``image`` as a C-contiguous ``(H, W, 3)`` uint8 BGR array (see the module table)."""
    if not isinstance(image, np.ndarray):
        raise InputError(f"image must be a numpy array (H, W[, C]), got {type(image).__name__}")
    a = image
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise InputError(f"image must have shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); got {a.shape}")
    h, w = a.shape[:2]
    if h == 0 or w == 0:
        raise InputError(f"image is empty (shape {a.shape})")
    if h > MAX_SIDE or w > MAX_SIDE:
        raise InputError(f"image of {w}x{h} pixels is larger than {MAX_SIDE} on a side; downscale it first")
    if a.dtype == np.uint8:
        pass
    elif a.dtype == np.uint16:
        a = (a.astype(np.uint32) // 257).astype(np.uint8)
    elif a.dtype in (np.float16, np.float32, np.float64):
        with np.errstate(over="ignore", invalid="ignore"):
            af = a.astype(np.float32)
        if not np.all(np.isfinite(af)):
            raise InputError("float image holds NaN or inf")
        a = np.clip(af * 255.0 + 0.5, 0, 255).astype(np.uint8)
    else:
        raise InputError(f"image dtype {a.dtype} is not supported; use uint8 (or uint16, or float in [0, 1])")
    if a.ndim == 2:
        a = cv2.cvtColor(np.ascontiguousarray(a), cv2.COLOR_GRAY2BGR)
    elif a.shape[2] == 4:
        a = cv2.cvtColor(np.ascontiguousarray(a), cv2.COLOR_BGRA2BGR)
    return np.ascontiguousarray(a)


def decode_image(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes (JPEG, PNG, ...) to BGR uint8; typed error when impossible."""
    if len(data) == 0:
        raise InputError(f"{name}: file is empty")
    buf = np.frombuffer(data, dtype=np.uint8)
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise InputError(f"{name}: cannot decode image ({exc})") from exc
    if img is None:
        raise InputError(f"{name}: not a readable image (corrupt, truncated or unsupported format)")
    return as_bgr_uint8(img)


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file to BGR uint8. Raises InputError for missing, empty, huge or corrupt files."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such file")
    size = p.stat().st_size
    if size > MAX_FILE_BYTES:
        raise InputError(f"{p}: {size} bytes is more than the {MAX_FILE_BYTES}-byte limit for one image")
    return decode_image(p.read_bytes(), str(p))
