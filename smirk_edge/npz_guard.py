"""Read ``.npy`` / ``.npz`` files without trusting their headers (no pickles, bounded memory).

``np.load`` allocates whatever shape a header declares: an 8 MB archive whose member claims a
(100000, 100000) array asks for 80 GB before any check can run. Here every header is parsed first
and checked against a budget and against the bytes the file (or the zip entry) actually holds;
only then is the array allocated, once, and filled in blocks. Object arrays are refused.
"""

from __future__ import annotations

import io
import os
import zipfile
from typing import BinaryIO

import numpy as np

MAX_ARRAY_BYTES = 128 << 20
MAX_TOTAL_BYTES = 384 << 20
MAX_MEMBERS = 256
_BLOCK = 1 << 20


class ArrayFileError(ValueError):
    """A ``.npy`` / ``.npz`` file that is malformed, lies about its size or is over the budget.
    Callers re-raise it as their own typed error (e.g. FaceModelError)."""


class _Counting:
    def __init__(self, f: BinaryIO):
        self.f, self.n = f, 0

    def read(self, n: int = -1) -> bytes:
        b = self.f.read(n)
        self.n += len(b)
        return b


def _header(f: _Counting, what: str) -> tuple[np.dtype, bool, tuple[int, ...]]:
    from .errors import UnsafeFileError
    from .safe_pickle import _parse_npy_header

    try:
        dtype, fortran, shape = _parse_npy_header(f, what)
    except UnsafeFileError as exc:
        raise ArrayFileError(str(exc)) from None
    if dtype.hasobject:
        raise ArrayFileError(f"{what} holds pickled objects where plain arrays were expected (refused)")
    return dtype, fortran, shape


def _nbytes(dtype: np.dtype, shape: tuple[int, ...]) -> int:
    n = dtype.itemsize
    for s in shape:
        n *= s
    return n


def _fill(f: BinaryIO, dtype: np.dtype, fortran: bool, shape: tuple[int, ...], what: str) -> np.ndarray:
    arr = np.empty(shape, dtype=dtype, order="F" if fortran else "C")
    flat = arr.ravel(order="K").view(np.uint8) if arr.size else np.empty(0, np.uint8)
    pos, total = 0, flat.size
    while pos < total:
        piece = f.read(min(_BLOCK, total - pos))
        if not piece:
            raise ArrayFileError(f"{what} is truncated: {pos} of {total} bytes")
        flat[pos:pos + len(piece)] = np.frombuffer(piece, np.uint8)
        pos += len(piece)
    return arr


def _check(what: str, nbytes: int, holds: int, max_array_bytes: int) -> None:
    if nbytes > max_array_bytes:
        raise ArrayFileError(f"{what} declares an array of {nbytes} bytes, more than the limit of "
                             f"{max_array_bytes} bytes (refused before allocating it)")
    if nbytes > holds:
        raise ArrayFileError(f"{what} declares an array of {nbytes} bytes but holds only {holds} (truncated "
                             "or a header that lies; refused before allocating it)")


def load_npy(source: str | os.PathLike | bytes, what: str = ".npy file",
             max_array_bytes: int | None = None) -> np.ndarray:
    """One plain array from a ``.npy`` path or bytes; header checked before allocating."""
    max_array_bytes = MAX_ARRAY_BYTES if max_array_bytes is None else max_array_bytes
    if isinstance(source, (bytes, bytearray, memoryview)):
        fh: BinaryIO = io.BytesIO(bytes(source))
        size = len(source)
    else:
        fh = open(source, "rb")  # noqa: SIM115 - closed below
        size = os.fstat(fh.fileno()).st_size
    with fh:
        c = _Counting(fh)
        dtype, fortran, shape = _header(c, what)
        nbytes = _nbytes(dtype, shape)
        _check(what, nbytes, size - c.n, max_array_bytes)
        return _fill(fh, dtype, fortran, shape, what)


def load_npz(source: str | os.PathLike | bytes, what: str = ".npz archive",
             max_array_bytes: int | None = None, max_total_bytes: int | None = None) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` (path or bytes) as a dict; each zip entry's declared sizes are
    checked against the budget (:data:`MAX_ARRAY_BYTES` each, :data:`MAX_TOTAL_BYTES` in all by
    default) and against each other before anything is allocated."""
    max_array_bytes = MAX_ARRAY_BYTES if max_array_bytes is None else max_array_bytes
    max_total_bytes = MAX_TOTAL_BYTES if max_total_bytes is None else max_total_bytes
    src = io.BytesIO(bytes(source)) if isinstance(source, (bytes, bytearray, memoryview)) else source
    try:
        zf = zipfile.ZipFile(src)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise ArrayFileError(f"{what} is not a readable .npz archive ({type(exc).__name__}: {exc})") from None
    out: dict[str, np.ndarray] = {}
    total = 0
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_MEMBERS:
            raise ArrayFileError(f"{what} holds {len(infos)} entries, more than {MAX_MEMBERS}")
        if len({i.filename for i in infos}) != len(infos):
            raise ArrayFileError(f"{what} holds two entries of the same name (refused)")
        for info in infos:
            name = info.filename
            key = name[:-4] if name.endswith(".npy") else name
            where = f"{what} entry {name[:60]!r}"
            if info.file_size > max_array_bytes + (1 << 16):
                raise ArrayFileError(f"{where} declares {info.file_size} uncompressed bytes, more than the "
                                     f"limit of {max_array_bytes} (refused before reading it)")
            total += info.file_size
            if total > max_total_bytes + len(infos) * (1 << 16):
                raise ArrayFileError(f"{what} declares more than {max_total_bytes} bytes in all (refused)")
            try:
                with zf.open(info) as fh:
                    c = _Counting(fh)
                    dtype, fortran, shape = _header(c, where)
                    nbytes = _nbytes(dtype, shape)
                    _check(where, nbytes, info.file_size - c.n, max_array_bytes)
                    out[key] = _fill(fh, dtype, fortran, shape, where)
                    fh.read(1)  # to the end: the zip CRC is checked here
            except ArrayFileError:
                raise
            except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError, RuntimeError) as exc:
                raise ArrayFileError(f"{where} cannot be read ({type(exc).__name__}: {exc})") from None
            except Exception as exc:  # zlib.error and the like from a damaged entry
                raise ArrayFileError(f"{where} cannot be read ({type(exc).__name__}: {exc})") from None
    return out


def is_zip(source: str | os.PathLike | bytes) -> bool:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source[:4]) == b"PK\x03\x04"
    with open(source, "rb") as f:
        return f.read(4) == b"PK\x03\x04"
