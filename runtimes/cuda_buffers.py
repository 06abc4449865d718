"""Device buffers and a CUDA stream for the TensorRT runner: cuda-python first, torch as fallback.

:class:`DeviceAllocator` is the small interface :class:`~smirk_edge.runtimes.trt.TrtRunner` needs
(malloc/free, async host<->device copies on one stream, optional page-locked host arrays).
:class:`CudaPythonAllocator` uses ``cuda.bindings.runtime`` (cudaMalloc, cudaMemcpyAsync, streams;
present on Jetson); :class:`TorchAllocator` uses torch CUDA tensors. Neither library is imported
until an allocator is made; :func:`choose_allocator` and the size helpers are pure.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from .._lazy import available, require
from ..errors import EngineUnavailable
from .base import RunnerError, check_choice

ALLOCATORS = ("auto", "cuda-python", "torch")


def volume(shape: Sequence[int]) -> int:
    """Number of elements of a fully known shape."""
    if any(d < 0 for d in shape):
        raise RunnerError(f"shape {tuple(shape)} still has dynamic (-1) dimensions")
    return int(np.prod(shape, dtype=np.int64))


def buffer_nbytes(shape: Sequence[int], dtype: np.dtype) -> int:
    """Bytes of a device buffer for ``shape`` and ``dtype`` (at least 1: TensorRT wants non-null addresses)."""
    return max(volume(shape) * np.dtype(dtype).itemsize, 1)


def choose_allocator(preference: str, have_cuda_python: bool, have_torch_cuda: bool) -> str:
    """``'cuda-python'`` or ``'torch'``: the preferred device-buffer provider that is present.

    ``'auto'`` prefers cuda-python (no torch needed on the device) and falls back to torch.
    """
    check_choice("allocator", preference, list(ALLOCATORS))
    if preference in ("auto", "cuda-python") and have_cuda_python:
        return "cuda-python"
    if preference in ("auto", "torch") and have_torch_cuda:
        return "torch"
    wanted = {"auto": "cuda-python or torch with CUDA", "cuda-python": "cuda-python",
              "torch": "torch with CUDA"}[preference]
    raise EngineUnavailable(f"{wanted} (device buffers for TensorRT)", "tensorrt",
                            detail="TensorRT needs a CUDA allocator; cuda-python ships in the extra")


class DeviceAllocator(Protocol):
    """Device buffers and a stream for :class:`TrtRunner`. Pointers are ints."""

    stream_handle: int

    def malloc(self, nbytes: int) -> int: ...
    def free(self, ptr: int) -> None: ...
    def host_empty(self, shape: Sequence[int], dtype: np.dtype, pinned: bool) -> np.ndarray: ...
    def copy_to_device(self, ptr: int, host: np.ndarray) -> None: ...
    def copy_to_host(self, host: np.ndarray, ptr: int) -> None: ...
    def synchronize(self) -> None: ...
    def close(self) -> None: ...


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError as exc:
            raise EngineUnavailable("cuda-python", "tensorrt", detail=str(exc)) from exc
    return cudart


class CudaPythonAllocator:
    """cudaMalloc / cudaMemcpyAsync / one stream through cuda-python; pinned host memory optional."""

    def __init__(self) -> None:
        self._rt = _cudart()
        self._stream = self._check(self._rt.cudaStreamCreate(), "cudaStreamCreate")[0]
        self.stream_handle = int(self._stream)
        self._pinned: dict[int, int] = {}

    def _check(self, result: Any, what: str) -> tuple:
        err, rest = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
        if int(err) != 0:
            name = self._rt.cudaGetErrorName(err)[1]
            raise RunnerError(f"{what} failed: {name.decode() if isinstance(name, bytes) else name}")
        return tuple(rest)

    def malloc(self, nbytes: int) -> int:
        return int(self._check(self._rt.cudaMalloc(nbytes), "cudaMalloc")[0])

    def free(self, ptr: int) -> None:
        self._check(self._rt.cudaFree(ptr), "cudaFree")

    def host_empty(self, shape: Sequence[int], dtype: np.dtype, pinned: bool) -> np.ndarray:
        if not pinned:
            return np.empty(shape, dtype)
        nbytes = buffer_nbytes(shape, dtype)
        ptr = int(self._check(self._rt.cudaMallocHost(nbytes), "cudaMallocHost")[0])
        raw = (ctypes.c_uint8 * nbytes).from_address(ptr)
        arr = np.frombuffer(raw, np.uint8)[: volume(shape) * np.dtype(dtype).itemsize].view(dtype).reshape(shape)
        self._pinned[id(arr)] = ptr
        return arr

    def copy_to_device(self, ptr: int, host: np.ndarray) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self._rt.cudaMemcpyAsync(ptr, host.ctypes.data, host.nbytes, kind, self._stream),
                    "cudaMemcpyAsync (host to device)")

    def copy_to_host(self, host: np.ndarray, ptr: int) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self._rt.cudaMemcpyAsync(host.ctypes.data, ptr, host.nbytes, kind, self._stream),
                    "cudaMemcpyAsync (device to host)")

    def synchronize(self) -> None:
        self._check(self._rt.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")

    def close(self) -> None:
        for ptr in self._pinned.values():
            self._rt.cudaFreeHost(ptr)
        self._pinned.clear()
        if self._stream is not None:
            self._rt.cudaStreamDestroy(self._stream)
            self._stream = None


class TorchAllocator:
    """Device buffers as torch CUDA byte tensors and a torch CUDA stream (fallback allocator)."""

    def __init__(self) -> None:
        self._torch = torch = require("torch")
        self._stream = torch.cuda.Stream()
        self.stream_handle = int(self._stream.cuda_stream)
        self._buffers: dict[int, Any] = {}

    def malloc(self, nbytes: int) -> int:
        t = self._torch.empty(nbytes, dtype=self._torch.uint8, device="cuda")
        self._buffers[t.data_ptr()] = t
        return int(t.data_ptr())

    def free(self, ptr: int) -> None:
        self._buffers.pop(ptr, None)

    def host_empty(self, shape: Sequence[int], dtype: np.dtype, pinned: bool) -> np.ndarray:
        if not pinned:
            return np.empty(shape, dtype)
        nbytes = volume(shape) * np.dtype(dtype).itemsize
        t = self._torch.empty(nbytes, dtype=self._torch.uint8, pin_memory=True)
        return t.numpy().view(dtype).reshape(shape)  # the array keeps the tensor's memory alive

    def _bytes(self, host: np.ndarray) -> Any:
        return self._torch.from_numpy(host.reshape(-1).view(np.uint8))

    def copy_to_device(self, ptr: int, host: np.ndarray) -> None:
        with self._torch.cuda.stream(self._stream):
            self._buffers[ptr][: host.nbytes].copy_(self._bytes(host), non_blocking=True)

    def copy_to_host(self, host: np.ndarray, ptr: int) -> None:
        with self._torch.cuda.stream(self._stream):
            self._bytes(host).copy_(self._buffers[ptr][: host.nbytes], non_blocking=True)

    def synchronize(self) -> None:
        self._stream.synchronize()

    def close(self) -> None:
        self._buffers.clear()


def _torch_has_cuda() -> bool:
    if not available("torch"):
        return False
    import torch  # only reached when cuda-python is absent

    return bool(torch.cuda.is_available())


def make_allocator(preference: str = "auto") -> DeviceAllocator:
    """Build the device allocator :func:`choose_allocator` picks on this machine."""
    have_cp = available("cuda.bindings") or available("cuda.cudart")
    # probe torch (a heavy import) only when it could be the answer
    wants_torch = preference == "torch" or (preference == "auto" and not have_cp)
    kind = choose_allocator(preference, have_cp, wants_torch and _torch_has_cuda())
    return CudaPythonAllocator() if kind == "cuda-python" else TorchAllocator()
