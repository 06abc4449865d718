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
:class:`~smirk_edge.errors.InputError`. Non-contiguous arrays are accepted. Conversions work in
blocks of rows, so converting a frame needs the output plus a few MB, not several full-size
temporaries.

Image files (JPEG, PNG, BMP, WebP, TIFF, PNM/PFM) are decoded from bytes that Python read, never
from a path handed to OpenCV. Before decoding, the header is read here and the decoded size is
checked against a budget (:data:`MAX_PIXELS`, :data:`MAX_DECODED_BYTES`): a small file that
declares a huge image (a decompression bomb) is refused without allocating it. The EXIF
orientation (JPEG, PNG ``eXIf``, WebP ``EXIF``, TIFF) is applied, so a phone photo stored rotated
comes back upright; :func:`decode_image` is the one place that does this.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .errors import InputError, OutputError

MAX_SIDE = 32767
MAX_FILE_BYTES = 512 * 1024 * 1024
MAX_PIXELS = 80_000_000          # 80 megapixels (a 10,000 x 8,000 photo)
MAX_DECODED_BYTES = 320 << 20    # what the decoder may allocate for the pixels (channels x depth)
_BLOCK_ELEMENTS = 1 << 20        # conversion works in blocks of about this many input values
_UNREADABLE = "not a readable image (corrupt, truncated or unsupported format)"


# ----------------------------------------------------------------------------- array conversion
def _convert_blocks(a: np.ndarray, kind: str) -> np.ndarray:
    """uint16 or float ``a`` (H, W) or (H, W, C) -> uint8 of the same shape (C=4 -> 3), in blocks."""
    src = a[:, :, :3] if a.ndim == 3 and a.shape[2] == 4 else a
    out = np.empty(src.shape, np.uint8)
    per_row = max(1, int(np.prod(a.shape[1:])))
    step = max(1, _BLOCK_ELEMENTS // per_row)
    for i in range(0, a.shape[0], step):
        if kind == "u16":
            out[i:i + step] = np.floor_divide(src[i:i + step], 257)
        else:
            with np.errstate(over="ignore", invalid="ignore"):
                full = a[i:i + step].astype(np.float32)
            if not np.isfinite(full).all():
                raise InputError("float image holds NaN or inf")
            block = full[:, :, :3] if full is not src and a.ndim == 3 and a.shape[2] == 4 else full
            np.multiply(block, 255.0, out=block)
            np.add(block, 0.5, out=block)
            np.clip(block, 0, 255, out=block)
            out[i:i + step] = block
    return out


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
        a = _convert_blocks(a, "u16")
    elif a.dtype in (np.float16, np.float32, np.float64):
        a = _convert_blocks(a, "float")
    else:
        raise InputError(f"image dtype {a.dtype} is not supported; use uint8 (or uint16, or float in [0, 1])")
    if a.ndim == 2:
        a = cv2.cvtColor(np.ascontiguousarray(a), cv2.COLOR_GRAY2BGR)
    elif a.shape[2] == 4:
        a = cv2.cvtColor(np.ascontiguousarray(a), cv2.COLOR_BGRA2BGR)
    return np.ascontiguousarray(a)


# ----------------------------------------------------------------------------- headers
@dataclass(frozen=True)
class ImageInfo:
    """What an image file's header declares: the decoder allocates ``decoded_bytes`` for it."""

    format: str
    width: int
    height: int
    channels: int          # upper bound of what OpenCV returns with IMREAD_UNCHANGED
    bytes_per_sample: int
    orientation: int = 1   # EXIF orientation 1..8

    @property
    def decoded_bytes(self) -> int:
        return self.width * self.height * self.channels * self.bytes_per_sample


class _Truncated(Exception):
    pass


def _u(fmt: str, data, pos: int):
    size = struct.calcsize(fmt)
    if pos < 0 or pos + size > len(data):
        raise _Truncated
    return struct.unpack_from(fmt, data, pos)


def _tiff_ifd0(data, base: int = 0) -> dict[int, list[int]]:
    """Tags of the first IFD of a (classic) TIFF structure starting at ``base``: SHORT/LONG values."""
    order = bytes(data[base:base + 2])
    if order not in (b"II", b"MM"):
        raise _Truncated
    e = "<" if order == b"II" else ">"
    magic, = _u(e + "H", data, base + 2)
    if magic != 42:
        raise _Truncated
    ifd, = _u(e + "I", data, base + 4)
    n, = _u(e + "H", data, base + ifd)
    tags: dict[int, list[int]] = {}
    for k in range(min(n, 512)):
        tag, typ, count, = _u(e + "HHI", data, base + ifd + 2 + 12 * k)
        if typ not in (3, 4) or count == 0:
            continue
        size = 2 if typ == 3 else 4
        count = min(count, 16)
        at = base + ifd + 2 + 12 * k + 8
        if size * count > 4:
            at = base + _u(e + "I", data, at)[0]
        tags[tag] = list(_u(e + ("H" if typ == 3 else "I") * count, data, at))
    return tags


def _exif_orientation(tiff_bytes) -> int:
    try:
        value = _tiff_ifd0(tiff_bytes).get(0x0112, [1])[0]
    except (_Truncated, struct.error):
        return 1
    return value if 1 <= value <= 8 else 1


def _chunks(data, pos: int, riff: bool):
    """``(type, body)`` of each chunk from ``pos`` on: PNG chunks (big-endian length, type, body,
    4-byte CRC) or, with ``riff``, RIFF chunks as in WebP (type, little-endian length, body padded
    to an even size). Stops where fewer than 8 bytes are left."""
    while pos + 8 <= len(data):
        if riff:
            ctype, length = _u("<4sI", data, pos)
        else:
            length, ctype = _u(">I4s", data, pos)
        yield ctype, data[pos + 8:pos + 8 + length]
        pos += 8 + length + ((length & 1) if riff else 4)


def _png(data) -> ImageInfo:
    info, orientation = None, 1
    for ctype, body in _chunks(data, 8, riff=False):
        if ctype == b"IHDR":
            w, h, depth, color = _u(">IIBB", body, 0)
            info = (w, h, depth, color)
        elif ctype == b"eXIf":
            orientation = _exif_orientation(body)
        elif ctype in (b"IDAT", b"IEND"):
            break
    if info is None:
        raise _Truncated
    w, h, depth, color = info
    channels = {0: 1, 2: 3, 3: 4, 4: 4, 6: 4}.get(color, 4)
    return ImageInfo("png", w, h, channels, 2 if depth == 16 else 1, orientation)


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg(data) -> ImageInfo:
    pos, orientation = 2, 1
    while pos < len(data):
        if data[pos] != 0xFF:
            raise _Truncated
        while pos < len(data) and data[pos] == 0xFF:
            pos += 1
        if pos >= len(data):
            break
        marker = data[pos]
        pos += 1
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
            continue
        length, = _u(">H", data, pos)
        if length < 2:
            raise _Truncated
        body = data[pos + 2:pos + length]
        if marker == 0xE1 and bytes(body[:6]) == b"Exif\x00\x00":
            orientation = _exif_orientation(body[6:])
        elif marker in _SOF:
            precision, h, w, comps = _u(">BHHB", body, 0)
            if h == 0 or w == 0:
                raise _Truncated  # height defined later by DNL: not supported by the decoder
            return ImageInfo("jpeg", w, h, 3 if comps >= 3 else 1, 2 if precision > 8 else 1, orientation)
        elif marker in (0xDA, 0xD9):
            break
        pos += length
    raise _Truncated


def _bmp(data) -> ImageInfo:
    dib, = _u("<I", data, 14)
    if dib == 12:
        w, h, _, bpp = _u("<HHHH", data, 18)
    else:
        w, h, _, bpp = _u("<iiHH", data, 18)
    return ImageInfo("bmp", abs(w), abs(h), 4 if bpp == 32 else 3, 1)


def _webp(data) -> ImageInfo:
    size, orientation = None, 1
    for ctype, body in _chunks(data, 12, riff=True):
        if ctype == b"VP8X":
            w = int.from_bytes(bytes(body[4:7]), "little") + 1
            h = int.from_bytes(bytes(body[7:10]), "little") + 1
            if len(body) < 10:
                raise _Truncated
            size = size or (w, h)
        elif ctype == b"VP8 " and size is None:
            w, h = _u("<HH", body, 6)
            size = (w & 0x3FFF, h & 0x3FFF)
        elif ctype == b"VP8L" and size is None:
            bits, = _u("<I", body, 1)
            size = ((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
        elif ctype == b"EXIF":
            orientation = _exif_orientation(body[6:] if bytes(body[:6]) == b"Exif\x00\x00" else body)
    if size is None:
        raise _Truncated
    return ImageInfo("webp", size[0], size[1], 4, 1, orientation)


def _tiff(data) -> ImageInfo:
    tags = _tiff_ifd0(data)
    if 256 not in tags or 257 not in tags:
        raise _Truncated
    spp = tags.get(277, [1])[0]
    bits = max(tags.get(258, [8]))
    orientation = tags.get(274, [1])[0]
    return ImageInfo("tiff", tags[256][0], tags[257][0], max(1, spp), max(1, -(-bits // 8)),
                     orientation if 1 <= orientation <= 8 else 1)


def _pnm(data) -> ImageInfo:
    head = bytes(data[:512])
    magic = head[:2]
    tokens: list[bytes] = []
    need = 3 if magic in (b"P1", b"P4") else 4  # magic, width, height[, maxval / scale]
    for line in head.split(b"\n"):
        line = line.split(b"#", 1)[0]
        tokens.extend(line.split())
        if len(tokens) >= need:
            break
    if len(tokens) < need:
        raise _Truncated
    try:
        w, h = int(tokens[1]), int(tokens[2])
    except ValueError:
        raise _Truncated from None
    if magic in (b"PF", b"Pf"):
        return ImageInfo("pfm", w, h, 3 if magic == b"PF" else 1, 4)
    maxval = int(tokens[3]) if need == 4 and tokens[3].isdigit() else 1
    return ImageInfo("pnm", w, h, 3 if magic in (b"P3", b"P6") else 1, 2 if maxval > 255 else 1)


def image_info(data: bytes | bytearray | memoryview) -> ImageInfo:
    """Read the size, channels, depth and EXIF orientation that an image file declares.

    Raises:
        InputError: the format is not one of JPEG, PNG, BMP, WebP, TIFF, PNM/PFM, or its header is
            truncated or malformed.
    """
    buf = memoryview(data).cast("B")
    head = bytes(buf[:16])
    try:
        if head.startswith(b"\x89PNG\r\n\x1a\n"):
            return _png(buf)
        if head.startswith(b"\xff\xd8"):
            return _jpeg(buf)
        if head.startswith(b"BM"):
            return _bmp(buf)
        if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
            return _webp(buf)
        if head[:4] in (b"II*\x00", b"MM\x00*"):
            return _tiff(buf)
        if head[:1] == b"P" and head[1:2] in b"123456Ff" and head[1:2]:
            return _pnm(buf)
    except (_Truncated, struct.error):
        raise InputError(_UNREADABLE) from None
    raise InputError(_UNREADABLE + "; smirk-edge reads JPEG, PNG, BMP, WebP, TIFF and PNM files")


def check_budget(info: ImageInfo, name: str = "<bytes>") -> None:
    """Refuse an image whose declared decoded size is over :data:`MAX_PIXELS` / :data:`MAX_DECODED_BYTES`."""
    w, h = info.width, info.height
    if w == 0 or h == 0:
        raise InputError(f"{name}: {_UNREADABLE} (header declares {w}x{h} pixels)")
    if w > MAX_SIDE or h > MAX_SIDE:
        raise InputError(f"{name}: image of {w}x{h} pixels is larger than {MAX_SIDE} on a side; downscale it first")
    if w * h > MAX_PIXELS or info.decoded_bytes > MAX_DECODED_BYTES:
        raise InputError(
            f"{name}: the {info.format.upper()} header declares {w}x{h} pixels x {info.channels} channels x "
            f"{8 * info.bytes_per_sample} bits ({info.decoded_bytes / 2**20:.0f} MiB decoded), over the limit of "
            f"{MAX_PIXELS / 1e6:.0f} megapixels / {MAX_DECODED_BYTES >> 20} MiB; downscale it first (refused "
            "before decoding)")


def apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """Turn an image stored with EXIF ``orientation`` (1..8) upright."""
    if orientation == 2:
        return cv2.flip(image, 1)
    if orientation == 3:
        return cv2.rotate(image, cv2.ROTATE_180)
    if orientation == 4:
        return cv2.flip(image, 0)
    if orientation == 5:
        return cv2.transpose(image)
    if orientation == 6:
        return cv2.rotate(image, cv2.ROTATE_90_CLOCKWISE)
    if orientation == 7:
        return cv2.flip(cv2.transpose(image), -1)
    if orientation == 8:
        return cv2.rotate(image, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return image


# ----------------------------------------------------------------------------- files
def decode_image(data: bytes | bytearray | memoryview, name: str = "<bytes>", orient: bool = True) -> np.ndarray:
    """Decode encoded image bytes to upright BGR uint8; typed error when impossible or too large.

    The header's declared size is checked against the budget before the decoder runs; the EXIF
    orientation is applied unless ``orient`` is False.
    """
    if len(data) == 0:
        raise InputError(f"{name}: file is empty")
    try:
        info = image_info(data)
    except InputError as exc:
        raise InputError(f"{name}: {exc}") from None
    check_budget(info, name)
    buf = np.frombuffer(data, dtype=np.uint8)
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise InputError(f"{name}: cannot decode image ({str(exc).strip()[:200]})") from exc
    if img is None:
        raise InputError(f"{name}: {_UNREADABLE}")
    if img.shape[0] * img.shape[1] > info.width * info.height:
        raise InputError(f"{name}: decoded {img.shape[1]}x{img.shape[0]} pixels, more than the header's "
                         f"{info.width}x{info.height} (refused)")
    out = as_bgr_uint8(img)
    del img
    return np.ascontiguousarray(apply_orientation(out, info.orientation)) if orient else out


def load_image(path: str | os.PathLike, orient: bool = True) -> np.ndarray:
    """Read an image file to upright BGR uint8. Raises InputError for missing, empty, huge or corrupt files.

    Python reads the bytes (any file name works, UTF-8 or not); OpenCV only decodes them.
    """
    from .fileio import display_path

    p = Path(path)
    name = display_path(p)
    try:
        if not p.is_file():
            raise InputError(f"{name}: no such file")
        size = p.stat().st_size
        if size > MAX_FILE_BYTES:
            raise InputError(f"{name}: {size} bytes is more than the {MAX_FILE_BYTES}-byte limit for one image")
        with open(p, "rb") as f:
            head = f.read(1 << 16)
            if head:
                try:
                    check_budget(image_info(head), name)
                except InputError as exc:
                    if "over the limit" in str(exc) or "on a side" in str(exc):
                        raise
            data = head + f.read()
    except OSError as exc:
        raise InputError(f"{name}: cannot read ({exc.strerror or exc})") from exc
    return decode_image(data, name, orient)


def encode_image(image: np.ndarray, suffix: str = ".jpg", quality: int = 92) -> bytes:
    """Encode a BGR image to ``suffix``'s format in memory; OutputError when OpenCV refuses."""
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if suffix.lower() in (".jpg", ".jpeg") else []
    try:
        ok, buf = cv2.imencode(suffix, image, params)
    except cv2.error as exc:
        raise OutputError(f"cannot encode a {suffix} image: {str(exc).strip()[:200]}") from exc
    if not ok:
        raise OutputError(f"cannot encode a {suffix} image (OpenCV returned False)")
    return buf


def save_image(path: str | os.PathLike, image: np.ndarray, quality: int = 92) -> Path:
    """Write ``image`` to ``path`` (format from the suffix) atomically, every step checked.

    The bytes are encoded by OpenCV and written by Python, so any file name works.
    """
    from .fileio import atomic_write

    path = Path(path)
    return atomic_write(path, encode_image(image, path.suffix or ".jpg", quality))
