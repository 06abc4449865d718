"""TensorRT 10 adapter: :class:`EngineFromFile` (loader) and :class:`TrtRunner`.

Written against the TensorRT 10 Python API, named-tensor calls only (no bindings API):
``Runtime.deserialize_cuda_engine``, ``ICudaEngine.num_io_tensors`` / ``get_tensor_name`` /
``get_tensor_mode`` / ``get_tensor_shape`` / ``get_tensor_dtype`` / ``get_tensor_profile_shape``,
``IExecutionContext.set_input_shape`` / ``get_tensor_shape`` / ``set_tensor_address`` /
``execute_async_v3``. Device buffers come from cuda-python (``cuda.bindings.runtime``, present on
Jetson) or, when it is missing, from torch CUDA tensors (see :mod:`.cuda_buffers`).

Everything that does not need TensorRT is a pure function (dtype table, profile checks, engine
file names here; buffer sizes and the allocator choice in :mod:`.cuda_buffers`) and is tested
without it. TensorRT engines are not portable: build them on the target (see :func:`engine_filename`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._lazy import require
from ..errors import InputError
from .base import OptionError, Runner, RunnerError, TensorMeta, check_choice, resolve
from .cuda_buffers import ALLOCATORS, DeviceAllocator, buffer_nbytes, make_allocator

# TensorRT DataType member name -> numpy dtype. BF16, FP8, INT4 and FP4 have no numpy dtype:
# engines must keep such tensors internal (fp32/fp16/int32 IO).
TRT_TO_NUMPY: dict[str, np.dtype] = {
    "FLOAT": np.dtype(np.float32), "HALF": np.dtype(np.float16), "INT8": np.dtype(np.int8),
    "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64), "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
}
ENGINE_PRECISIONS = ("fp32", "tf32", "fp16", "bf16", "int8", "fp8", "best")


def numpy_dtype(trt_dtype: Any) -> np.dtype:
    """numpy dtype of a ``tensorrt.DataType`` (matched by member name, e.g. ``DataType.HALF``)."""
    name = getattr(trt_dtype, "name", str(trt_dtype)).split(".")[-1].upper()
    if name not in TRT_TO_NUMPY:
        raise RunnerError(f"TensorRT data type {name} has no numpy equivalent; build the engine with "
                          f"{sorted(TRT_TO_NUMPY)} input/output tensors")
    return TRT_TO_NUMPY[name]


def as_dims(shape: Any) -> tuple[int, ...]:
    """A TensorRT ``Dims`` (or any sequence of ints) as a tuple; -1 marks a dynamic dimension."""
    return tuple(int(d) for d in shape)


@dataclass(frozen=True)
class ProfileRange:
    """The min / opt / max shapes of one dynamic input in one optimization profile."""

    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def contains(self, shape: Sequence[int]) -> bool:
        return (len(shape) == len(self.min)
                and all(lo <= s <= hi for s, lo, hi in zip(shape, self.min, self.max)))


def check_shape_in_profile(shape: Sequence[int], profile: ProfileRange, profile_index: int = 0) -> None:
    """Raise :class:`InputError` when ``shape`` is outside ``profile`` (e.g. a batch too large)."""
    shape = tuple(int(s) for s in shape)
    if profile.contains(shape):
        return
    detail = ""
    if len(shape) == len(profile.min) and shape[1:] == profile.min[1:] == profile.max[1:]:
        detail = f"; batch must be within {profile.min[0]}..{profile.max[0]}"
    raise InputError(f"input {profile.name!r} has shape {shape}, outside optimization profile {profile_index} "
                     f"of this engine (min {profile.min}, opt {profile.opt}, max {profile.max}){detail}. "
                     "Split the batch, or rebuild the engine with a wider profile")


def engine_filename(gpu_name: str, compute_capability: str | int | Sequence[int], trt_version: str,
                    precision: str, stem: str = "encoder") -> str:
    """File name of an engine built for one GPU model, compute capability, TensorRT version, precision.

    >>> engine_filename("NVIDIA Jetson AGX Orin", (8, 7), "10.3.0", "fp16")
    'encoder.nvidia-jetson-agx-orin.sm87.trt10.3.0.fp16.engine'
    """
    slug = re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-")
    if not slug:
        raise OptionError(f"gpu_name {gpu_name!r} has no letters or digits")
    if isinstance(compute_capability, str):
        digits = re.fullmatch(r"(?:sm_?)?(\d+)\.?(\d)?", compute_capability.strip().lower())
        if not digits:
            raise OptionError(f"compute capability {compute_capability!r} is not like '8.7', 'sm87' or (8, 7)")
        cc = digits.group(1) + (digits.group(2) or "")
    elif isinstance(compute_capability, int):
        cc = str(compute_capability)
    else:
        major, minor = compute_capability
        cc = f"{int(major)}{int(minor)}"
    if not re.fullmatch(r"\d+(\.\d+)*", str(trt_version)):
        raise OptionError(f"TensorRT version {trt_version!r} is not like '10.3.0'")
    check_choice("engine precision", precision, list(ENGINE_PRECISIONS))
    return f"{stem}.{slug}.sm{cc}.trt{trt_version}.{precision}.engine"


# ---- loader and runner -----------------------------------------------------------------------
class EngineFromFile:
    """Loader: deserializes a TensorRT engine file (``.engine`` / ``.plan``) with ``trt.Runtime``.

    ``trt_module`` replaces ``import tensorrt`` (tests inject a fake module).
    """

    def __init__(self, path: str | os.PathLike, log_severity: str = "WARNING", trt_module: Any = None):
        self.path = Path(path)
        self.log_severity = check_choice("log severity", log_severity,
                                         ["VERBOSE", "INFO", "WARNING", "ERROR", "INTERNAL_ERROR"])
        self._trt = trt_module
        self.runtime: Any = None  # kept alive as long as the loader: engines must not outlive it

    def __call__(self) -> Any:
        trt = self._trt or require("tensorrt")
        if not self.path.is_file():
            raise RunnerError(f"TensorRT engine not found: {self.path}")
        logger = trt.Logger(getattr(trt.Logger, self.log_severity))
        self.runtime = trt.Runtime(logger)
        engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if engine is None:
            raise RunnerError(f"TensorRT could not deserialize {self.path.name}: engines only load on the GPU "
                              "model and TensorRT version they were built with; rebuild it on this device "
                              "(smirk-edge build-engine)")
        return engine


class TrtRunner(Runner):
    """Runs a TensorRT 10 ``ICudaEngine`` with the named-tensor API.

    Args:
        engine: an ``ICudaEngine``, a loader returning one (e.g. :class:`EngineFromFile`), or a path
            to an engine file.
        profile_index: the optimization profile to run; feeds outside its min/max are rejected.
        allocator: ``'auto'`` (cuda-python, else torch), ``'cuda-python'``, ``'torch'``, or an object
            following :class:`DeviceAllocator`.
        pinned: stage host inputs/outputs in page-locked memory (faster copies, more host RAM).
        precision: precision the engine was built with, for reports.
        name: free text for reports.
        trt_module: replaces ``import tensorrt`` (tests inject a fake).
    Outputs are read back after ``set_input_shape`` fixes their shapes.
    """

    engine = "tensorrt"

    def __init__(self, engine: Any, profile_index: int = 0, allocator: str | DeviceAllocator = "auto",
                 pinned: bool = False, precision: str = "fp16", name: str | None = None, trt_module: Any = None):
        super().__init__(name=name, device="cuda", precision=precision)
        if isinstance(allocator, str):
            check_choice("allocator", allocator, list(ALLOCATORS))
        self._trt = trt_module
        self._source = (EngineFromFile(engine, trt_module=trt_module) if isinstance(engine, (str, os.PathLike))
                        else engine)
        self.profile_index, self.pinned, self._allocator_choice = profile_index, pinned, allocator
        self._reset()

    def _reset(self) -> None:
        self.trt_engine: Any = None
        self.context: Any = None
        self._alloc: Any = None
        self._device: dict[str, tuple[int, int]] = {}  # name -> (pointer, capacity in bytes)
        self._staging: dict[str, np.ndarray] = {}

    @classmethod
    def from_artifact(cls, path: str | os.PathLike, precision: str = "fp16", name: str | None = None,
                      profile_index: int = 0, allocator: str = "auto", pinned: bool = False) -> TrtRunner:
        """A runner for an engine file (used by :func:`~smirk_edge.runtimes.registry.make_runner`)."""
        return cls(path, profile_index=profile_index, allocator=allocator, pinned=pinned, precision=precision,
                   name=name)

    def activate_impl(self) -> None:
        trt = self._trt or require("tensorrt")
        self.trt_engine = eng = resolve(self._source, lambda e: hasattr(e, "create_execution_context"),
                                        "a TensorRT ICudaEngine")
        self._alloc = (make_allocator(self._allocator_choice) if isinstance(self._allocator_choice, str)
                       else self._allocator_choice)
        names = [eng.get_tensor_name(i) for i in range(eng.num_io_tensors)]
        self._inputs_names = [n for n in names if eng.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._output_names = [n for n in names if eng.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._dtypes = {n: numpy_dtype(eng.get_tensor_dtype(n)) for n in names}
        self.context = eng.create_execution_context()
        if self.context is None:
            raise RunnerError("TensorRT could not create an execution context (out of device memory?)")
        n_profiles = int(eng.num_optimization_profiles)
        if not 0 <= self.profile_index < n_profiles:
            raise OptionError(f"profile_index {self.profile_index} is out of range: the engine has {n_profiles} "
                              "optimization profile(s)")
        if self.profile_index:
            self.context.set_optimization_profile_async(self.profile_index, self._alloc.stream_handle)
            self._alloc.synchronize()
        self._profiles = {}
        for n in self._inputs_names:
            if any(d < 0 for d in as_dims(eng.get_tensor_shape(n))):
                lo, opt, hi = (as_dims(s) for s in eng.get_tensor_profile_shape(n, self.profile_index))
                self._profiles[n] = ProfileRange(n, lo, opt, hi)

    def _meta(self, name: str) -> TensorMeta:
        shape = tuple(None if d < 0 else d for d in as_dims(self.trt_engine.get_tensor_shape(name)))
        return TensorMeta(name, self._dtypes[name], shape)

    def get_input_metadata_impl(self) -> list[TensorMeta]:
        return [self._meta(n) for n in self._inputs_names]

    def get_output_metadata_impl(self) -> list[TensorMeta]:
        return [self._meta(n) for n in self._output_names]

    def get_profile(self, name: str) -> ProfileRange | None:
        """The min/opt/max of a dynamic input in the active profile (None for a static input)."""
        return self._profiles.get(name)

    def _device_buffer(self, name: str, nbytes: int) -> int:
        ptr, capacity = self._device.get(name, (0, 0))
        if capacity < nbytes:  # grow; every infer ends synchronized, so the old buffer is idle
            if ptr:
                self._alloc.free(ptr)
            ptr = self._alloc.malloc(nbytes)
            self._device[name] = (ptr, nbytes)
        return ptr

    def _host_buffer(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        buf = self._staging.get(name)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = self._staging[name] = self._alloc.host_empty(shape, dtype, self.pinned)
        return buf

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ctx, alloc = self.context, self._alloc
        for n in self._inputs_names:
            arr = np.ascontiguousarray(feed[n])
            if n in self._profiles:
                check_shape_in_profile(arr.shape, self._profiles[n], self.profile_index)
            if not ctx.set_input_shape(n, arr.shape):
                raise RunnerError(f"TensorRT refused shape {arr.shape} for input {n!r}")
            ptr = self._device_buffer(n, buffer_nbytes(arr.shape, arr.dtype))
            if self.pinned:
                staged = self._host_buffer(n, arr.shape, arr.dtype)
                staged[...] = arr
                arr = staged
            alloc.copy_to_device(ptr, arr)
            feed[n] = arr  # keep the source alive until the stream is synchronized
            ctx.set_tensor_address(n, ptr)
        hosts = {}
        for n in self._output_names:
            shape = as_dims(ctx.get_tensor_shape(n))
            if any(d < 0 for d in shape):
                raise RunnerError(f"output {n!r} still has a dynamic shape {shape} after set_input_shape")
            ptr = self._device_buffer(n, buffer_nbytes(shape, self._dtypes[n]))
            ctx.set_tensor_address(n, ptr)
            hosts[n] = (ptr, self._host_buffer(n, shape, self._dtypes[n]))
        if not ctx.execute_async_v3(alloc.stream_handle):
            raise RunnerError("TensorRT execute_async_v3 failed (see the TensorRT log above)")
        for ptr, host in hosts.values():
            alloc.copy_to_host(host, ptr)
        alloc.synchronize()
        return {n: host.copy() for n, (_, host) in hosts.items()}  # staging buffers are reused

    def deactivate_impl(self) -> None:
        if self._alloc is not None:
            for ptr, _ in self._device.values():
                self._alloc.free(ptr)
            if isinstance(self._allocator_choice, str):
                self._alloc.close()
        self._reset()
