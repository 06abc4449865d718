"""Restricted, torch-free readers for the pickled files smirk-edge has to consume.

FLAME's ``generic_model.pkl`` (a Python-2 pickle holding chumpy objects and a SciPy sparse
matrix), DECA's ``landmark_embedding.npy`` (a numpy object array whose dict holds torch
tensors), ``FLAME_masks.pkl`` and torch checkpoints are all pickles: loading them with
:func:`pickle.load`, ``np.load(allow_pickle=True)`` or ``torch.load(weights_only=False)`` runs
whatever callables the file names. The readers here never do. They run a
:class:`RestrictedUnpickler` whose :meth:`~RestrictedUnpickler.find_class` resolves an
explicit allow-list (:data:`ALLOWED_GLOBALS`) to smirk-edge's own constructors:

* numpy arrays, dtypes and scalars (numpy 1.x ``numpy.core.*`` and 2.x ``numpy._core.*``
  paths), rebuilt from the raw bytes with :func:`numpy.frombuffer`;
* chumpy ``Ch`` objects -> the ``x`` array they wrap (chumpy is never imported);
* SciPy ``csc``/``csr``/``coo`` matrices -> dense ``float64`` arrays (SciPy is never imported);
* torch tensors (``torch._utils._rebuild_tensor_v2`` and friends, storages from
  ``torch.storage._load_from_bytes`` or the checkpoint's storage records) -> numpy arrays
  (torch is never imported);
* ``collections.OrderedDict``, ``set``, ``frozenset``, ``bytes``/``bytearray`` (from a list of
  ints only), ``_codecs.encode`` (latin-1 only) and
  ``copyreg._reconstructor`` for the stub classes above only.

Any other global raises :class:`~smirk_edge.errors.UnsafeFileError` naming it, before
anything in the file is called. Files that are truncated or malformed raise
:class:`CorruptFileError` (a subclass). Declared array sizes are checked against
``max_array_bytes`` before anything is allocated, and tensor views are bounds-checked
against their storage.

Public functions: :func:`load_pickle`, :func:`load_npy_object`, :func:`load_torch_file`.
numpy is the only dependency.
"""

from __future__ import annotations

import ast
import contextlib
import io
import os
import pickle
import pickletools
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Iterator, Union

import numpy as np

from .errors import UnsafeFileError

__all__ = [
    "CorruptFileError", "RestrictedUnpickler", "ALLOWED_GLOBALS", "DEFAULT_MAX_ARRAY_BYTES",
    "load_pickle", "load_npy_object", "load_torch_file", "is_torch_zip",
]

Source = Union[str, os.PathLike, bytes, bytearray, memoryview]

#: Largest single array (bytes) a file may declare; the SMIRK checkpoint's largest tensor is
#: a few MB and FLAME's ``shapedirs`` is 48 MB, so 2 GiB only stops absurd declarations.
DEFAULT_MAX_ARRAY_BYTES = 2 << 30

TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
TORCH_LEGACY_PROTOCOL = 1001


class CorruptFileError(UnsafeFileError):
    """A file that is truncated, garbled or internally inconsistent (not a well-formed pickle,
    ``.npy`` or torch file). A subclass of :class:`UnsafeFileError`: such files are refused."""


# ----------------------------------------------------------------------------- helpers
def _read_source(source: Source, what: str) -> tuple[bytes, str]:
    """Bytes of ``source`` (a path or bytes) and a name for messages."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), what
    path = Path(os.fspath(source))
    try:
        return path.read_bytes(), str(path)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{what} not found: {path}") from exc
    except IsADirectoryError as exc:
        raise CorruptFileError(f"{path} is a directory, not a {what}") from exc


def _check_nbytes(nbytes: int, limit: int, what: str) -> None:
    if nbytes > limit:
        raise UnsafeFileError(
            f"{what} declares {nbytes} bytes, more than the limit of {limit} bytes "
            f"(pass a larger max_array_bytes if the file is trusted and really this large)")


def _as_shape(shape: Any, what: str) -> tuple[int, ...]:
    if isinstance(shape, int):
        shape = (shape,)
    if not isinstance(shape, (tuple, list)) or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
        raise CorruptFileError(f"{what} has an invalid shape {shape!r}")
    if len(shape) > 32:
        raise CorruptFileError(f"{what} has {len(shape)} dimensions")
    return tuple(int(s) for s in shape)


def _prod(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _raw_bytes(raw: Any, what: str) -> bytes:
    """Array payloads: bytes, or a latin-1 ``str`` when a Python-2 pickle is read with
    ``encoding='latin1'`` (numpy does the same)."""
    if isinstance(raw, (bytes, bytearray)):
        return bytes(raw)
    if isinstance(raw, memoryview):
        return raw.tobytes()
    if isinstance(raw, pickle.PickleBuffer):
        return raw.raw().tobytes()
    if isinstance(raw, str):
        try:
            return raw.encode("latin-1")
        except UnicodeEncodeError as exc:
            raise CorruptFileError(f"{what}: text payload is not latin-1 ({exc})") from exc
    raise CorruptFileError(f"{what}: expected raw bytes, got {type(raw).__name__}")


class _Sealed:
    """Base of every object the restricted unpickler creates on its own behalf.

    ``BUILD`` on such an object (a pickle trying to overwrite validated fields) is refused;
    :func:`_resolve` turns each into plain numpy data once the whole file is read.
    """

    __slots__ = ()

    def __setstate__(self, state):  # noqa: D105
        raise UnsafeFileError(f"refused: the file tries to set the state of {type(self).__name__}")

    def __reduce__(self):  # never re-pickled
        raise TypeError(f"{type(self).__name__} cannot be pickled")

    def resolve(self, ctx: "_Context") -> Any:  # pragma: no cover - overridden
        raise NotImplementedError


class _Context:
    """Per-load settings and the storages of a torch file."""

    def __init__(self, max_array_bytes: int, encoding: str):
        self.max_array_bytes = int(max_array_bytes)
        self.encoding = encoding
        self.persistent_load: Callable[[Any], Any] | None = None


# ----------------------------------------------------------------------------- numpy
class _NDArrayType(_Sealed):
    """Stands for ``numpy.ndarray`` in a pickle: accepted only as ``_reconstruct``'s subtype."""

    __slots__ = ()

    def __call__(self, *args, **kwargs):
        raise UnsafeFileError("refused: the file calls numpy.ndarray(...) directly")


_NDARRAY = _NDArrayType()


def _safe_dtype(obj, align=False, copy=False):
    """``numpy.dtype`` for a type string only (``'f8'``, ``'O8'``, ``'V16'``, ``'<U5'`` ...)."""
    if isinstance(obj, bytes):
        obj = obj.decode("latin-1")
    if not isinstance(obj, str) or len(obj) > 64:
        raise UnsafeFileError(f"refused: numpy.dtype({type(obj).__name__}) in a pickle")
    try:
        return np.dtype(obj, align=bool(align), copy=bool(copy))
    except TypeError as exc:
        raise CorruptFileError(f"invalid numpy dtype {obj!r} in a pickle: {exc}") from exc


class _ArrayBuilder(_Sealed):
    """``numpy.core.multiarray._reconstruct(ndarray, shape, typecode)`` + ``BUILD(state)``."""

    __slots__ = ("state", "ctx")

    def __init__(self, ctx: _Context):
        self.state = None
        self.ctx = ctx

    def __setstate__(self, state):
        if self.state is not None:
            raise UnsafeFileError("refused: the file sets the state of one numpy array twice")
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise CorruptFileError(f"invalid numpy array state of type {type(state).__name__}")
        if len(state) == 4:  # pre-versioned layout
            state = (0,) + state
        self.state = state

    def resolve(self, ctx: _Context) -> np.ndarray:
        if self.state is None:
            raise CorruptFileError("numpy array in a pickle without its data")
        _, shape, dtype, fortran, raw = self.state
        shape = _as_shape(shape, "numpy array")
        if not isinstance(dtype, np.dtype):
            raise CorruptFileError(f"numpy array with dtype of type {type(dtype).__name__}")
        n = _prod(shape)
        order = "F" if fortran else "C"
        if dtype.hasobject:
            if dtype != np.dtype(object):
                raise UnsafeFileError(f"refused: structured dtype with objects {dtype}")
            _check_nbytes(n * 8, ctx.max_array_bytes, "object array")
            if not isinstance(raw, list) or len(raw) != n:
                raise CorruptFileError(f"object array of shape {shape} without {n} items")
            out = np.empty(n, dtype=object)
            for i, item in enumerate(raw):
                out[i] = _resolve(item, ctx)
            return out.reshape(shape, order=order)
        _check_nbytes(n * dtype.itemsize, ctx.max_array_bytes, f"numpy array {shape} {dtype}")
        data = _raw_bytes(raw, "numpy array")
        if len(data) != n * dtype.itemsize:
            raise CorruptFileError(
                f"numpy array {shape} {dtype} needs {n * dtype.itemsize} bytes, the file holds {len(data)}")
        return np.frombuffer(data, dtype=dtype).reshape(shape, order=order).copy(order="K")


class _Value(_Sealed):
    """A value computed while unpickling (numpy scalar, buffer-backed array)."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def resolve(self, ctx: _Context):
        return self.value


def _make_np_functions(ctx: _Context) -> dict[str, Callable]:
    def _reconstruct(subtype, shape, typecode):
        if subtype is not _NDARRAY:
            raise UnsafeFileError(
                f"refused: numpy _reconstruct of {getattr(subtype, '__name__', type(subtype).__name__)} "
                "(only numpy.ndarray is allowed)")
        return _ArrayBuilder(ctx)

    def scalar(dtype, data=None):
        if not isinstance(dtype, np.dtype):
            raise CorruptFileError("numpy scalar without a dtype")
        if dtype.hasobject:
            return _Value(data)
        raw = _raw_bytes(data, "numpy scalar")
        if len(raw) != dtype.itemsize:
            raise CorruptFileError(f"numpy scalar {dtype} with {len(raw)} bytes")
        return _Value(np.frombuffer(raw, dtype=dtype)[0])

    def _frombuffer(buf, dtype, shape, order):
        if not isinstance(dtype, np.dtype) or dtype.hasobject:
            raise UnsafeFileError("refused: numpy _frombuffer without a plain dtype")
        shape = _as_shape(shape, "numpy array")
        n = _prod(shape)
        _check_nbytes(n * dtype.itemsize, ctx.max_array_bytes, f"numpy array {shape} {dtype}")
        data = _raw_bytes(buf, "numpy array")
        if len(data) != n * dtype.itemsize:
            raise CorruptFileError(f"numpy array {shape} {dtype} with {len(data)} bytes")
        order = "F" if order == "F" else "C"
        return _Value(np.frombuffer(data, dtype=dtype).reshape(shape, order=order).copy(order="K"))

    return {"_reconstruct": _reconstruct, "scalar": scalar, "_frombuffer": _frombuffer}


# ----------------------------------------------------------------------------- nested lists
_MAX_LIST_DEPTH = 32


def _nested_shape(obj: Any, memo: dict[int, tuple[int, ...]], depth: int, what: str) -> tuple[int, ...]:
    if isinstance(obj, (list, tuple)):
        key = id(obj)
        if key in memo:
            return memo[key]
        if depth > _MAX_LIST_DEPTH:
            raise CorruptFileError(f"{what}: lists nested more than {_MAX_LIST_DEPTH} deep")
        memo[key] = (-1,)  # a list that contains itself is caught as ragged
        shapes = {_nested_shape(v, memo, depth + 1, what) for v in obj} if obj else {()}
        if len(shapes) != 1 or (-1,) in shapes:
            raise CorruptFileError(f"{what}: ragged nested lists (rows of different lengths), not an array")
        inner = shapes.pop() if obj else ()
        shape = (len(obj),) + inner
        memo[key] = shape
        return shape
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise CorruptFileError(f"{what}: an object array inside a list, not a numeric array")
        return obj.shape
    if isinstance(obj, (bool, int, float, np.generic)):
        return ()
    raise CorruptFileError(f"{what}: a {type(obj).__name__} where numbers were expected")


def as_array(obj: Any, what: str = "array", max_bytes: int = DEFAULT_MAX_ARRAY_BYTES) -> np.ndarray:
    """``np.asarray(obj)`` for numbers from a file, with the size known before allocating.

    Nested lists are measured first (each distinct list once, so lists that share references cost
    what the file holds, not what they expand to); ragged lists raise :class:`CorruptFileError`,
    more than ``max_bytes`` of float64 raises :class:`UnsafeFileError`.
    """
    if isinstance(obj, np.ndarray):
        return obj
    shape = _nested_shape(obj, {}, 0, what)
    n = _prod(shape)
    _check_nbytes(n * 8, max_bytes, f"{what} (nested lists of shape {shape})")
    try:
        return np.asarray(obj)
    except (ValueError, TypeError, OverflowError) as exc:
        raise CorruptFileError(f"{what}: not a numeric array ({type(exc).__name__})") from None


class _DictState(_Sealed):
    """A stand-in that a pickle makes without arguments and then gives exactly one dict state
    (``BUILD``); ``what`` names it in errors. Base of :class:`_ChumpyCh` and :class:`_SparseMatrix`."""

    __slots__ = ("state",)
    what = "object"

    def __new__(cls, *args, **kwargs):
        if args or kwargs:
            raise UnsafeFileError(f"refused: {cls.what} constructed with arguments in a pickle")
        obj = object.__new__(cls)
        obj.state = None
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        if self.state is not None or not isinstance(state, dict):
            raise CorruptFileError(f"invalid {self.what} state (expected one dict)")
        self.state = state


# ----------------------------------------------------------------------------- chumpy
class _ChumpyCh(_DictState):
    """Stands for ``chumpy.ch.Ch``: chumpy pickles ``__dict__`` without ``_parents`` and
    ``_cache``; the value lives under ``'x'``. Resolves to that array."""

    __slots__ = ()
    what = "chumpy Ch"

    def resolve(self, ctx: _Context) -> np.ndarray:
        if self.state is None or "x" not in self.state:
            raise CorruptFileError(
                "chumpy object without an 'x' array (a computed chumpy expression, not a plain "
                "array): not supported")
        x = as_array(_resolve(self.state["x"], ctx), "chumpy array 'x'", ctx.max_array_bytes)
        if x.dtype.hasobject:
            raise CorruptFileError("chumpy object whose 'x' is not a numeric array")
        return x


# ----------------------------------------------------------------------------- scipy
class _SparseMatrix(_DictState):
    """Stands for a SciPy sparse matrix; resolves to a dense ``float64`` (or the data's
    dtype) array. Reads ``data``/``indices``/``indptr`` (csc, csr) or ``row``/``col``
    (``coords`` in SciPy >= 1.13) (coo), and ``_shape`` (``shape`` in very old SciPy)."""

    __slots__ = ()
    what = "SciPy sparse matrix"
    layout = ""

    def resolve(self, ctx: _Context) -> np.ndarray:
        st = {k: _resolve(v, ctx) for k, v in (self.state or {}).items()}
        shape = st.get("_shape", st.get("shape"))
        if shape is None:
            raise CorruptFileError(f"SciPy {self.layout} matrix without a shape")
        shape = _as_shape(tuple(shape), f"SciPy {self.layout} matrix")
        if len(shape) != 2:
            raise CorruptFileError(f"SciPy {self.layout} matrix of shape {shape}")
        m, n = shape
        data = np.asarray(st.get("data"))
        if data.ndim != 1 or data.dtype.hasobject:
            raise CorruptFileError(f"SciPy {self.layout} matrix without a 1-D data array")
        out_dtype = np.result_type(data.dtype, np.float64) if data.dtype.kind in "biuf" else data.dtype
        _check_nbytes(m * n * np.dtype(out_dtype).itemsize, ctx.max_array_bytes,
                      f"dense form of SciPy matrix {shape}")
        if self.layout == "coo":
            if "coords" in st:
                row, col = (np.asarray(c) for c in st["coords"])
            else:
                row, col = np.asarray(st.get("row")), np.asarray(st.get("col"))
        else:
            indices = np.asarray(st.get("indices"))
            indptr = np.asarray(st.get("indptr"))
            major = n if self.layout == "csc" else m
            if (indptr.ndim != 1 or indices.ndim != 1 or indptr.dtype.kind not in "iu"
                    or indices.dtype.kind not in "iu" or len(indptr) != major + 1):
                raise CorruptFileError(f"SciPy {self.layout} matrix {shape} with inconsistent indptr/indices")
            indptr = indptr.astype(np.int64)
            if indptr[0] != 0 or np.any(np.diff(indptr) < 0) or indptr[-1] != len(indices) \
                    or len(indices) != len(data):
                raise CorruptFileError(f"SciPy {self.layout} matrix {shape} with inconsistent indptr/indices")
            outer = np.repeat(np.arange(major), np.diff(indptr))
            row, col = (indices, outer) if self.layout == "csc" else (outer, indices)
        row, col = np.asarray(row), np.asarray(col)
        if row.shape != data.shape or col.shape != data.shape or row.dtype.kind not in "iu" \
                or col.dtype.kind not in "iu":
            raise CorruptFileError(f"SciPy {self.layout} matrix {shape} with inconsistent indices")
        if len(data) and (row.min() < 0 or row.max() >= m or col.min() < 0 or col.max() >= n):
            raise CorruptFileError(f"SciPy {self.layout} matrix {shape} with indices out of range")
        dense = np.zeros((m, n), dtype=out_dtype)
        np.add.at(dense, (row.astype(np.int64), col.astype(np.int64)), data)  # duplicates sum, as todense()
        return dense


class _CscMatrix(_SparseMatrix):
    __slots__ = ()
    layout = "csc"


class _CsrMatrix(_SparseMatrix):
    __slots__ = ()
    layout = "csr"


class _CooMatrix(_SparseMatrix):
    __slots__ = ()
    layout = "coo"


# ----------------------------------------------------------------------------- torch
class _TorchStorageType(_Sealed):
    """Stands for ``torch.FloatStorage`` etc. in a storage's persistent id."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str, dtype: str):
        self.name = name
        self.dtype = np.dtype(dtype)

    def __call__(self, *args, **kwargs):
        raise UnsafeFileError(f"refused: the file calls torch.{self.name}(...)")

    def __repr__(self):
        return f"torch.{self.name}"


_BFLOAT16 = "bfloat16"  # stored as uint16, widened to float32 on resolve
_TORCH_STORAGES = {
    "DoubleStorage": "<f8", "FloatStorage": "<f4", "HalfStorage": "<f2", "BFloat16Storage": "<u2",
    "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1",
    "ByteStorage": "u1", "BoolStorage": "?", "ComplexFloatStorage": "<c8",
    "ComplexDoubleStorage": "<c16", "UntypedStorage": "u1",
}
_STORAGE_TYPES = {name: _TorchStorageType(name, dt) for name, dt in _TORCH_STORAGES.items()}


class _Storage(_Sealed):
    """A torch storage: a flat array of ``numel`` elements, filled from the file."""

    __slots__ = ("stype", "numel", "key", "data")

    def __init__(self, stype: _TorchStorageType, numel: int, key: str):
        self.stype, self.numel, self.key, self.data = stype, numel, key, None

    def array(self) -> np.ndarray:
        if self.data is None:
            raise CorruptFileError(f"torch storage {self.key!r} has no data record in the file")
        return self.data


class _StorageView(_Sealed):
    """A slice of a storage (legacy format ``view_metadata``), offsets in elements."""

    __slots__ = ("root", "offset", "size")

    def __init__(self, root: _Storage, offset: int, size: int):
        self.root, self.offset, self.size = root, offset, size

    @property
    def stype(self):
        return self.root.stype

    def array(self) -> np.ndarray:
        data = self.root.array()
        if self.offset < 0 or self.size < 0 or self.offset + self.size > len(data):
            raise CorruptFileError(f"torch storage view [{self.offset}:+{self.size}] outside its storage")
        return data[self.offset:self.offset + self.size]


class _LoadedStorage(_Sealed):
    """A storage unpickled from ``torch.storage._load_from_bytes`` (already complete)."""

    __slots__ = ("stype", "data")

    def __init__(self, stype, data):
        self.stype, self.data = stype, data

    def array(self) -> np.ndarray:
        return self.data


_STORAGE_CLASSES = (_Storage, _StorageView, _LoadedStorage)


class _Tensor(_Sealed):
    """``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)``; bounds are
    checked at resolve time, when the storage bytes are known."""

    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage, offset, size, stride):
        if not isinstance(storage, _STORAGE_CLASSES):
            raise UnsafeFileError(f"refused: torch tensor rebuilt from a {type(storage).__name__}")
        self.storage = storage
        self.offset = offset
        self.size = size
        self.stride = stride

    def resolve(self, ctx: _Context) -> np.ndarray:
        data = self.storage.array()
        size = _as_shape(tuple(self.size) if isinstance(self.size, (list, tuple)) else self.size, "torch tensor")
        stride = _as_shape(tuple(self.stride) if isinstance(self.stride, (list, tuple)) else self.stride,
                           "torch tensor stride")
        off = self.offset
        if not isinstance(off, int) or off < 0 or len(stride) != len(size):
            raise CorruptFileError(f"torch tensor with offset {off!r}, size {size}, stride {stride}")
        n = _prod(size)
        _check_nbytes(n * data.dtype.itemsize, ctx.max_array_bytes, f"torch tensor {size}")
        if n == 0:
            out = np.empty(size, dtype=data.dtype)
        else:
            last = off + sum((s - 1) * st for s, st in zip(size, stride))
            if last >= len(data):
                raise CorruptFileError(
                    f"torch tensor (offset {off}, size {size}, stride {stride}) reads past its "
                    f"storage of {len(data)} elements")
            base = data[off:]
            out = np.lib.stride_tricks.as_strided(
                base, shape=size, strides=tuple(st * data.dtype.itemsize for st in stride),
                writeable=False).copy()
        if self.storage.stype.name == "BFloat16Storage":
            out = (out.astype(np.uint32) << 16).view(np.float32)
        return out


def _check_hooks(hooks) -> None:
    if hooks is None:
        return
    if not isinstance(hooks, dict) or len(hooks):
        raise UnsafeFileError("refused: torch tensor with backward hooks")


def _make_torch_functions(ctx: _Context) -> dict[tuple[str, str], Callable]:
    def _rebuild_tensor(storage, storage_offset, size, stride):
        return _Tensor(storage, storage_offset, size, stride)

    def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                           backward_hooks=None, metadata=None):
        _check_hooks(backward_hooks)
        return _Tensor(storage, storage_offset, size, stride)

    def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
        _check_hooks(backward_hooks)
        if not isinstance(data, _Tensor):
            raise UnsafeFileError(f"refused: torch Parameter wrapping a {type(data).__name__}")
        return data

    def _load_from_bytes(b):
        blob = _raw_bytes(b, "torch storage blob")
        obj = _load_torch_legacy(io.BytesIO(blob), ctx, "torch storage blob", storage_only=True)
        return _LoadedStorage(obj.stype, obj.array())

    return {
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch.storage", "_load_from_bytes"): _load_from_bytes,
    }


# ----------------------------------------------------------------------------- builtins
def _codecs_encode(obj, encoding="utf-8", errors="strict"):
    """How Python 3 pickles ``bytes`` at protocol < 3: ``_codecs.encode(str, 'latin1')``."""
    if not isinstance(obj, str) or str(encoding).lower().replace("_", "-") not in (
            "latin1", "latin-1", "iso-8859-1", "l1"):
        raise UnsafeFileError(f"refused: _codecs.encode with codec {encoding!r}")
    try:
        return obj.encode("latin-1")
    except UnicodeEncodeError as exc:
        raise CorruptFileError(f"bytes payload is not latin-1: {exc}") from exc


def _make_bytes_like(kind: type) -> Callable:
    """``bytes``/``bytearray`` as protocols 0-4 pickle them: from a list of ints (or bytes).
    Never from an int, which would allocate that many zero bytes."""

    def build(*args):
        if not args:
            return kind()
        if len(args) == 1 and isinstance(args[0], (bytes, bytearray)):
            return kind(args[0])
        if len(args) == 1 and isinstance(args[0], (list, tuple)) and all(
                isinstance(b, int) and 0 <= b < 256 for b in args[0]):
            return kind(args[0])
        if kind is bytearray and len(args) == 2 and isinstance(args[0], str):
            return bytearray(_codecs_encode(args[0], args[1]))
        raise UnsafeFileError(f"refused: {kind.__name__}() with arguments of type "
                              f"{[type(a).__name__ for a in args]}")

    build.__name__ = kind.__name__
    return build


_RECONSTRUCTIBLE = (_ChumpyCh, _CscMatrix, _CsrMatrix, _CooMatrix)


def _copyreg_reconstructor(cls, base, state):
    """``copyreg._reconstructor`` (protocol 0/1 objects) for the stub classes only."""
    if cls not in _RECONSTRUCTIBLE:
        raise UnsafeFileError(
            f"refused: copyreg._reconstructor of {getattr(cls, '__name__', type(cls).__name__)} "
            "(not an allow-listed class)")
    if base is not object or state is not None:
        raise UnsafeFileError("refused: copyreg._reconstructor with a base other than object")
    return cls.__new__(cls)


def _build_allow_list(ctx: _Context) -> dict[tuple[str, str], Any]:
    table: dict[tuple[str, str], Any] = {}
    np_funcs = _make_np_functions(ctx)
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        table[(mod, "_reconstruct")] = np_funcs["_reconstruct"]
        table[(mod, "scalar")] = np_funcs["scalar"]
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):
        table[(mod, "_frombuffer")] = np_funcs["_frombuffer"]
    table[("numpy", "ndarray")] = _NDARRAY
    table[("numpy", "dtype")] = _safe_dtype
    for b in ("builtins", "__builtin__"):
        table[(b, "set")] = set
        table[(b, "frozenset")] = frozenset
        table[(b, "object")] = object
        table[(b, "bytes")] = _make_bytes_like(bytes)
        table[(b, "bytearray")] = _make_bytes_like(bytearray)
    table[("collections", "OrderedDict")] = OrderedDict
    table[("_codecs", "encode")] = _codecs_encode
    for m in ("copyreg", "copy_reg"):
        table[(m, "_reconstructor")] = _copyreg_reconstructor
    table[("chumpy.ch", "Ch")] = _ChumpyCh
    table[("chumpy", "Ch")] = _ChumpyCh
    for layout, cls in (("csc", _CscMatrix), ("csr", _CsrMatrix), ("coo", _CooMatrix)):
        for mod in (f"scipy.sparse.{layout}", f"scipy.sparse._{layout}"):
            table[(mod, f"{layout}_matrix")] = cls
            table[(mod, f"{layout}_array")] = cls
    table.update(_make_torch_functions(ctx))
    for name, stype in _STORAGE_TYPES.items():
        table[("torch", name)] = stype
    return table


#: ``"module.name"`` of every global a file may name (for documentation and tests).
ALLOWED_GLOBALS: tuple[str, ...] = tuple(sorted(
    f"{m}.{n}" for (m, n) in _build_allow_list(_Context(0, "latin1"))))


# ----------------------------------------------------------------------------- unpickler
class RestrictedUnpickler(pickle.Unpickler):
    """A :class:`pickle.Unpickler` that resolves only :data:`ALLOWED_GLOBALS`.

    The result may contain placeholder objects; :func:`load_pickle` and friends pass it
    through :func:`_resolve` to get plain Python/numpy data. Use those functions rather than
    this class directly.
    """

    def __init__(self, file, *, encoding: str = "latin1",
                 max_array_bytes: int = DEFAULT_MAX_ARRAY_BYTES, _ctx: _Context | None = None):
        super().__init__(file, encoding=encoding, errors="strict")
        self._ctx = _ctx or _Context(max_array_bytes, encoding)
        self._allowed = _build_allow_list(self._ctx)

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except (KeyError, TypeError):
            raise _refuse_global(module, name, "this file") from None

    def persistent_load(self, pid: Any) -> Any:
        if self._ctx.persistent_load is None:
            raise UnsafeFileError("refused: persistent id in a plain pickle (only torch files use them)")
        return self._ctx.persistent_load(pid)


_STRING_OPS = frozenset({"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE",
                         "SHORT_BINUNICODE", "BINUNICODE8"})


def _refuse_global(module: Any, name: Any, what: str) -> UnsafeFileError:
    return UnsafeFileError(
        f"refused to load global {module}.{name} in {what}: this file asks to import or call "
        "something other than the array types smirk-edge accepts")


def _prescan(f: io.BytesIO, what: str, allowed: dict) -> None:
    """Walk the opcodes of the pickle at ``f``'s position without executing anything:
    truncation and garbage are reported before any callable runs, and globals outside the
    allow-list are refused up front (``GLOBAL``/``INST`` names, and ``STACK_GLOBAL`` when the
    two strings feeding it can be followed through the memo, as the pickler writes them;
    :meth:`RestrictedUnpickler.find_class` remains the guard for anything else).
    Restores the position."""
    start = f.tell()
    memo: dict[int, Any] = {}
    recent: list[Any] = [None, None]  # last two values pushed, None when not a known string
    try:
        for op, arg, _pos in pickletools.genops(f):
            name = op.name
            if name in ("GLOBAL", "INST"):
                module, _, gname = str(arg).partition(" ")
                if (module, gname) not in allowed:
                    raise _refuse_global(module, gname, what)
                recent.append(None)
            elif name in _STRING_OPS:
                recent.append(arg)
            elif name == "MEMOIZE":
                memo[len(memo)] = recent[-1]
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = recent[-1]
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                recent.append(memo.get(arg))
            elif name == "STACK_GLOBAL":
                module, gname = recent[-2], recent[-1]
                if isinstance(module, str) and isinstance(gname, str) and (module, gname) not in allowed:
                    raise _refuse_global(module, gname, what)
                recent.append(None)
            else:
                recent.append(None)
            del recent[:-2]
    except UnsafeFileError:
        raise
    except Exception as exc:  # ValueError from genops: truncated data, unknown opcode
        raise CorruptFileError(f"{what} is not a complete pickle (truncated or corrupt): {exc}") from exc
    finally:
        f.seek(start)


@contextlib.contextmanager
def _typed_errors(what: str, failing: str) -> Iterator[None]:
    """Every error of the block as an :class:`UnsafeFileError`: too deep or too large ``what`` as
    such, anything else as a :class:`CorruptFileError` saying ``failing`` (what was being done)."""
    try:
        yield
    except UnsafeFileError:
        raise
    except RecursionError as exc:
        raise UnsafeFileError(f"{what} nests objects too deeply") from exc
    except MemoryError as exc:
        raise UnsafeFileError(f"{what} needs more memory than is available") from exc
    except Exception as exc:
        raise CorruptFileError(f"{failing}: {type(exc).__name__}: {exc}") from exc


def _unpickle_one(f: io.BytesIO, ctx: _Context, what: str, persistent_load=None) -> Any:
    """Prescan and unpickle one pickle at ``f``'s position; leave ``f`` just after it."""
    up = RestrictedUnpickler(f, encoding=ctx.encoding, _ctx=ctx)
    _prescan(f, what, up._allowed)
    old = ctx.persistent_load
    ctx.persistent_load = persistent_load
    try:
        with _typed_errors(what, f"cannot unpickle {what}"):
            return up.load()
    finally:
        ctx.persistent_load = old


def _resolve(obj: Any, ctx: _Context, _memo: dict | None = None) -> Any:
    """Replace every placeholder in ``obj`` by plain numpy data (dicts/lists in place)."""
    memo = {} if _memo is None else _memo
    key = id(obj)
    if key in memo:
        return memo[key]
    if isinstance(obj, _Sealed):
        if isinstance(obj, _STORAGE_CLASSES):
            raise UnsafeFileError("refused: a bare torch storage where an array was expected")
        if isinstance(obj, (_TorchStorageType, _NDArrayType)):
            raise UnsafeFileError(f"refused: a bare {obj!r} object in the file")
        out = obj.resolve(ctx)
        out = _resolve(out, ctx, memo) if not isinstance(out, np.ndarray) or out.dtype.hasobject else out
        memo[key] = out
        return out
    if isinstance(obj, dict):
        memo[key] = obj
        for k in list(obj.keys()):
            obj[k] = _resolve(obj[k], ctx, memo)
        return obj
    if isinstance(obj, list):
        memo[key] = obj
        for i, v in enumerate(obj):
            obj[i] = _resolve(v, ctx, memo)
        return obj
    if isinstance(obj, tuple):
        out = tuple(_resolve(v, ctx, memo) for v in obj)
        memo[key] = out
        return out
    if isinstance(obj, np.ndarray) and obj.dtype.hasobject:
        memo[key] = obj
        flat = obj.reshape(-1)
        for i in range(flat.size):
            flat[i] = _resolve(flat[i], ctx, memo)
        return obj
    return obj


def _finish(obj: Any, ctx: _Context, what: str) -> Any:
    with _typed_errors(what, f"cannot rebuild arrays of {what}"):
        return _resolve(obj, ctx)


# ----------------------------------------------------------------------------- public: pickle
def load_pickle(source: Source, *, encoding: str = "latin1",
                max_array_bytes: int = DEFAULT_MAX_ARRAY_BYTES) -> Any:
    """Unpickle a file (path) or bytes with the allow-list; never runs code from the file.

    Args:
        source: path of a pickle, or its bytes.
        encoding: how Python-2 ``str`` objects are decoded; ``'latin1'`` (default) keeps
            Python-2 numpy payloads intact (FLAME's ``generic_model.pkl``, ``FLAME_masks.pkl``).
        max_array_bytes: largest array the file may declare.

    Returns:
        The unpickled object with numpy arrays in place of numpy/chumpy/SciPy/torch objects
        (SciPy sparse matrices become dense arrays).

    Raises:
        UnsafeFileError: the file names a global outside :data:`ALLOWED_GLOBALS` (nothing from
            the file is executed), or declares an array above ``max_array_bytes``.
        CorruptFileError: truncated or malformed file.
        FileNotFoundError: no such file.
    """
    data, what = _read_source(source, "pickle")
    if not data:
        raise CorruptFileError(f"{what} is empty")
    ctx = _Context(max_array_bytes, encoding)
    f = io.BytesIO(data)
    obj = _unpickle_one(f, ctx, what)
    return _finish(obj, ctx, what)


# ----------------------------------------------------------------------------- public: .npy
_NPY_MAGIC = b"\x93NUMPY"


def _parse_npy_header(f: io.BytesIO, what: str) -> tuple[np.dtype, bool, tuple[int, ...]]:
    magic = f.read(6)
    if magic != _NPY_MAGIC:
        raise CorruptFileError(f"{what} is not a .npy file (bad magic {magic[:6]!r})")
    ver = f.read(2)
    if len(ver) != 2 or ver[0] not in (1, 2, 3):
        raise CorruptFileError(f"{what}: unsupported .npy version {tuple(ver)}")
    hlen_bytes = f.read(2 if ver[0] == 1 else 4)
    if len(hlen_bytes) not in (2, 4) or len(hlen_bytes) != (2 if ver[0] == 1 else 4):
        raise CorruptFileError(f"{what}: truncated .npy header")
    hlen = int.from_bytes(hlen_bytes, "little")
    if hlen > 1 << 20:
        raise CorruptFileError(f"{what}: .npy header of {hlen} bytes")
    raw = f.read(hlen)
    if len(raw) != hlen:
        raise CorruptFileError(f"{what}: truncated .npy header")
    try:
        header = ast.literal_eval(raw.decode("utf-8" if ver[0] == 3 else "latin-1"))
    except (ValueError, SyntaxError, UnicodeDecodeError) as exc:
        raise CorruptFileError(f"{what}: unreadable .npy header {raw[:80]!r}") from exc
    if not isinstance(header, dict) or not {"descr", "fortran_order", "shape"} <= set(header):
        raise CorruptFileError(f"{what}: .npy header without descr/fortran_order/shape")
    try:
        descr = header["descr"]
        dtype = np.dtype(descr if isinstance(descr, str) else [tuple(d) for d in descr])
    except (TypeError, ValueError) as exc:
        raise CorruptFileError(f"{what}: invalid .npy dtype {header['descr']!r}") from exc
    shape = _as_shape(header["shape"], what)
    return dtype, bool(header["fortran_order"]), shape


def load_npy_object(source: Source, *, encoding: str = "latin1",
                    max_array_bytes: int = DEFAULT_MAX_ARRAY_BYTES) -> Any:
    """Read a ``.npy`` file, including object arrays, without ``np.load(allow_pickle=True)``.

    The header is parsed here; an object array's payload (a pickle of the array) goes
    through the restricted unpickler, so torch tensors inside (DECA's
    ``landmark_embedding.npy``) come back as numpy arrays without importing torch.

    Returns:
        For a 0-d object array (what ``np.save(path, some_dict)`` writes): the item, e.g.
        the dict. Otherwise the array (object arrays keep ``dtype=object``).

    Raises:
        UnsafeFileError, CorruptFileError: as :func:`load_pickle`.
    """
    data, what = _read_source(source, ".npy file")
    f = io.BytesIO(data)
    dtype, fortran, shape = _parse_npy_header(f, what)
    if dtype.hasobject:
        ctx = _Context(max_array_bytes, encoding)
        obj = _finish(_unpickle_one(f, ctx, what), ctx, what)
        if not isinstance(obj, np.ndarray):
            raise CorruptFileError(f"{what}: object payload is a {type(obj).__name__}, not an array")
        if obj.shape != shape:
            raise CorruptFileError(f"{what}: header shape {shape} but payload shape {obj.shape}")
        return obj.item() if obj.shape == () else obj
    n = _prod(shape)
    _check_nbytes(n * dtype.itemsize, max_array_bytes, f"{what} array {shape}")
    payload = f.read()
    if len(payload) < n * dtype.itemsize:
        raise CorruptFileError(
            f"{what} is truncated: array {shape} {dtype} needs {n * dtype.itemsize} bytes, "
            f"{len(payload)} present")
    arr = np.frombuffer(payload[:n * dtype.itemsize], dtype=dtype)
    return arr.reshape(shape, order="F" if fortran else "C").copy(order="K")


# ----------------------------------------------------------------------------- public: torch
def _storage_from_pid(pid: Any, what: str) -> tuple[_TorchStorageType, str, int, Any]:
    if not isinstance(pid, tuple) or not pid:
        raise UnsafeFileError(f"refused: persistent id {pid!r} in {what}")
    kind = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
    if kind != "storage":
        raise UnsafeFileError(f"refused: persistent id of kind {kind!r} in {what} (only storages)")
    if len(pid) not in (5, 6):
        raise CorruptFileError(f"storage persistent id of length {len(pid)} in {what}")
    stype, key, _location, numel = pid[1:5]
    view = pid[5] if len(pid) == 6 else None
    if not isinstance(stype, _TorchStorageType):
        raise UnsafeFileError(f"refused: storage of type {type(stype).__name__} in {what}")
    if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
        raise CorruptFileError(f"invalid storage record {pid!r} in {what}")
    return stype, key, numel, view


def _load_torch_legacy(f: io.BytesIO, ctx: _Context, what: str, storage_only: bool = False) -> Any:
    """The pre-1.6 ``torch.save`` layout (also inside ``_load_from_bytes`` blobs): magic
    number, protocol 1001, sys info, the object pickle with storage persistent ids, the
    list of storage keys, then per key an int64 element count and the raw bytes.

    With ``storage_only`` the saved object must be one storage, returned filled (not resolved).
    """
    head = f.read(262)
    f.seek(0)
    if len(head) >= 262 and head[257:262] == b"ustar":
        raise CorruptFileError(f"{what} is a tar-format torch file (PyTorch < 0.4): not supported")
    magic = _finish(_unpickle_one(f, ctx, what), ctx, what)
    if magic != TORCH_LEGACY_MAGIC:
        raise CorruptFileError(f"{what} is not a torch file (bad magic number)")
    proto = _finish(_unpickle_one(f, ctx, what), ctx, what)
    if proto != TORCH_LEGACY_PROTOCOL:
        raise CorruptFileError(f"{what}: unsupported torch serialization protocol {proto!r}")
    sys_info = _finish(_unpickle_one(f, ctx, what), ctx, what)
    little = sys_info.get("little_endian", True) if isinstance(sys_info, dict) else True
    storages: dict[str, _Storage] = {}

    def persistent_load(pid):
        stype, key, numel, view = _storage_from_pid(pid, what)
        _check_nbytes(numel * stype.dtype.itemsize, ctx.max_array_bytes, f"torch storage {key!r}")
        root = storages.get(key)
        if root is None:
            root = storages[key] = _Storage(stype, numel, key)
        elif root.stype is not stype or root.numel != numel:
            raise CorruptFileError(f"{what}: storage {key!r} declared twice differently")
        if view is not None:
            if not (isinstance(view, tuple) and len(view) == 3 and isinstance(view[1], int)
                    and isinstance(view[2], int)):
                raise CorruptFileError(f"{what}: invalid storage view {view!r}")
            return _StorageView(root, view[1], view[2])
        return root

    obj = _unpickle_one(f, ctx, what, persistent_load)
    keys = _finish(_unpickle_one(f, ctx, what), ctx, what)
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise CorruptFileError(f"{what}: invalid storage key list")
    for key in keys:
        st = storages.get(key)
        if st is None:
            raise CorruptFileError(f"{what}: storage record {key!r} not referenced by the object")
        hdr = f.read(8)
        if len(hdr) != 8:
            raise CorruptFileError(f"{what} is truncated (storage {key!r} header missing)")
        n = int.from_bytes(hdr, "little" if little else "big", signed=True)
        if n != st.numel:
            raise CorruptFileError(f"{what}: storage {key!r} declares {st.numel} elements, record has {n}")
        dt = st.stype.dtype.newbyteorder("<" if little else ">") if st.stype.dtype.itemsize > 1 \
            else st.stype.dtype
        raw = f.read(n * dt.itemsize)
        if len(raw) != n * dt.itemsize:
            raise CorruptFileError(f"{what} is truncated (storage {key!r} has {len(raw)} of "
                                   f"{n * dt.itemsize} bytes)")
        st.data = np.frombuffer(raw, dtype=dt).astype(dt.newbyteorder("="), copy=True)
    if storage_only:
        if not isinstance(obj, (_Storage, _StorageView)):
            raise UnsafeFileError(f"refused: {what} holds a {type(obj).__name__}, not a torch storage")
        return obj
    return _finish(obj, ctx, what)


def is_torch_zip(source: Source) -> bool:
    """True when ``source`` is a zip archive (``torch.save`` >= 1.6 layout)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return zipfile.is_zipfile(io.BytesIO(bytes(source)))
    return zipfile.is_zipfile(os.fspath(source))


def _load_torch_zip(zf: zipfile.ZipFile, ctx: _Context, what: str) -> Any:
    names = zf.namelist()
    pkl = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
    pkl = [n for n in pkl if n.count("/") <= 1]
    if len(pkl) != 1:
        raise CorruptFileError(f"{what} is a zip but not a torch checkpoint (found {len(pkl)} data.pkl)")
    prefix = pkl[0][: -len("data.pkl")]
    byteorder = "little"
    if prefix + "byteorder" in names:
        byteorder = zf.read(prefix + "byteorder").decode("ascii", "replace").strip()
        if byteorder not in ("little", "big"):
            raise CorruptFileError(f"{what}: byteorder {byteorder!r}")
    loaded: dict[str, _LoadedStorage] = {}

    def read_member(name: str, limit: int) -> bytes:
        try:
            info = zf.getinfo(name)
        except KeyError:
            raise CorruptFileError(f"{what} has no record {name!r}") from None
        _check_nbytes(info.file_size, limit, f"{what} record {name!r}")
        return zf.read(name)

    def persistent_load(pid):
        stype, key, numel, _view = _storage_from_pid(pid, what)
        if key in loaded:
            if loaded[key].stype is not stype:
                raise CorruptFileError(f"{what}: storage {key!r} used with two types")
            return loaded[key]
        nbytes = numel * stype.dtype.itemsize
        _check_nbytes(nbytes, ctx.max_array_bytes, f"torch storage {key!r}")
        raw = read_member(f"{prefix}data/{key}", ctx.max_array_bytes)
        if len(raw) != nbytes:
            raise CorruptFileError(f"{what}: storage {key!r} declares {nbytes} bytes, record has {len(raw)}")
        dt = stype.dtype.newbyteorder("<" if byteorder == "little" else ">") if stype.dtype.itemsize > 1 \
            else stype.dtype
        arr = np.frombuffer(raw, dtype=dt).astype(dt.newbyteorder("="), copy=True)
        loaded[key] = _LoadedStorage(stype, arr)
        return loaded[key]

    data = read_member(pkl[0], 1 << 30)
    obj = _unpickle_one(io.BytesIO(data), ctx, f"{what} ({pkl[0]})", persistent_load)
    return _finish(obj, ctx, what)


def load_torch_file(source: Source, *, max_array_bytes: int = DEFAULT_MAX_ARRAY_BYTES,
                    encoding: str = "latin1") -> Any:
    """Read a ``torch.save`` file without torch: tensors come back as numpy arrays.

    Handles the zip layout (PyTorch >= 1.6: ``<name>/data.pkl`` + ``<name>/data/<key>``
    storage records, e.g. ``SMIRK_em1.pt``, a flat state dict) and the legacy layout.
    ``float16`` stays ``float16``; ``bfloat16`` (no numpy dtype) is widened to ``float32``.
    Parameters become plain arrays; ``requires_grad`` is dropped.

    Returns:
        The saved object (e.g. an ``OrderedDict`` of name -> array).

    Raises:
        UnsafeFileError: anything but tensors, storages and plain containers (e.g. a pickled
            ``nn.Module``); CorruptFileError: truncated or malformed file.
    """
    data, what = _read_source(source, "torch file")
    if not data:
        raise CorruptFileError(f"{what} is empty")
    ctx = _Context(max_array_bytes, encoding)
    buf = io.BytesIO(data)
    if zipfile.is_zipfile(buf):
        buf.seek(0)
        try:
            zf = zipfile.ZipFile(buf)
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise CorruptFileError(f"{what} is a damaged zip archive: {exc}") from exc
        with zf:
            try:
                return _load_torch_zip(zf, ctx, what)
            except (UnsafeFileError, FileNotFoundError):
                raise
            except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as exc:
                raise CorruptFileError(f"{what} is a damaged zip archive: {exc}") from exc
    buf.seek(0)
    return _load_torch_legacy(buf, ctx, what)
