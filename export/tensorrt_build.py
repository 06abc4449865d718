"""``smirk-edge build-engine``: a TensorRT 10 engine from the bundle's ONNX, built on the target.

Written against the TensorRT 10 Python API (not executable on the project's machines: TensorRT
cannot be installed here; everything else is tested with a fake ``tensorrt`` module):

1. ``trt.Builder(logger)``; ``builder.create_network(0)``: explicit batch is the only mode in
   TensorRT 10 (the EXPLICIT_BATCH flag is deprecated and ignored). The network is *weakly typed*
   so the FP16 / INT8 builder flags apply; with ``STRONGLY_TYPED`` TensorRT would take every
   precision from the ONNX types and reject those flags, which is not what an fp32 graph + FP16
   flag means.
2. ``trt.OnnxParser(network, logger).parse_from_file(path)``; on failure every
   ``parser.get_error(i)`` is reported.
3. ``config = builder.create_builder_config()``;
   ``config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, bytes)`` when ``--workspace``;
   ``config.set_flag(trt.BuilderFlag.FP16)``; for int8 also ``trt.BuilderFlag.INT8``: **explicit
   quantization** from the Q/DQ nodes of the TensorRT-flavoured int8 ONNX (symmetric int8, zero
   point 0; made by ``smirk-edge export --formats ...,tensorrt``). No calibrator (implicit
   quantization is deprecated since TensorRT 10.1); FP16 lets the non-quantized layers run in half.
4. one optimization profile: ``profile = builder.create_optimization_profile()``;
   ``profile.set_shape("image", (min,3,224,224), (opt,3,224,224), (max,3,224,224))``;
   ``config.add_optimization_profile(profile)``.
5. timing cache: ``cache = config.create_timing_cache(bytes)`` (empty bytes for a new one),
   ``config.set_timing_cache(cache, ignore_mismatch=False)``; after the build
   ``config.get_timing_cache().serialize()`` is written back.
6. DLA (Jetson): ``config.default_device_type = trt.DeviceType.DLA``, ``config.DLA_core = n``,
   ``config.set_flag(trt.BuilderFlag.GPU_FALLBACK)``; ``n < builder.num_DLA_cores`` is checked.
7. ``builder.build_serialized_network(network, config)`` (None on failure), written to
   ``encoder.<gpu>.sm<cc>.trt<version>.<precision>.engine`` (:func:`smirk_edge.runtimes.trt.engine_filename`):
   engines are not portable across GPUs or TensorRT versions.
8. the manifest gets the engine as kind ``tensorrt-engine`` (attrs: GPU, compute capability,
   TensorRT version, profile, source artifact, build seconds, DLA core).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from smirk_edge.bundle import Artifact, Bundle, BundleWriter
from smirk_edge.errors import BundleError, EngineUnavailable, InputError, SmirkEdgeError

INPUT_NAME = "image"
IMAGE_CHW = (3, 224, 224)
ENGINE_PRECISIONS = ("fp16", "int8")
MAX_BATCH_LIMIT = 1024  # the ONNX graphs' dynamic batch range
GIB = 1 << 30


class EngineBuildError(SmirkEdgeError):
    """The parser or builder rejected the network (messages from TensorRT included)."""


@dataclass(frozen=True)
class BuildOptions:
    """Arguments of ``build-engine`` (validated by :meth:`validate`).

    Attributes:
        precision: ``'fp16'`` (from the fp32 ONNX + FP16 flag) or ``'int8'`` (from the QDQ ONNX).
        min_batch, opt_batch, max_batch: the optimization profile of the ``image`` batch
            (1 <= min <= opt <= max <= 1024).
        timing_cache: file to read (if present) and update after the build.
        workspace_gib: workspace memory-pool limit in GiB (None: TensorRT's default, all memory).
        dla_core: build for this DLA core with GPU fallback (Jetson AGX/NX); None: GPU only.
        fused: build from the fused (encoder + face model) graph instead of the encoder.
    """

    precision: str
    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 16
    timing_cache: str | os.PathLike | None = None
    workspace_gib: float | None = None
    dla_core: int | None = None
    fused: bool = False

    def validate(self) -> BuildOptions:
        if self.precision not in ENGINE_PRECISIONS:
            raise InputError(f"engine precision must be one of {list(ENGINE_PRECISIONS)}, got {self.precision!r}")
        for name in ("min_batch", "opt_batch", "max_batch"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise InputError(f"--{name.replace('_', '-')} must be a positive integer, got {v!r}")
        if not self.min_batch <= self.opt_batch <= self.max_batch:
            raise InputError(f"batch sizes must satisfy min <= opt <= max, got {self.min_batch}, {self.opt_batch}, "
                             f"{self.max_batch}")
        if self.max_batch > MAX_BATCH_LIMIT:
            raise InputError(f"--max-batch {self.max_batch} exceeds the exported graphs' limit of {MAX_BATCH_LIMIT}")
        if self.workspace_gib is not None and not self.workspace_gib > 0:
            raise InputError(f"--workspace must be a positive number of GiB, got {self.workspace_gib!r}")
        if self.dla_core is not None and (not isinstance(self.dla_core, int) or self.dla_core < 0):
            raise InputError(f"--dla must be a DLA core index >= 0, got {self.dla_core!r}")
        return self

    def profile_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """``(min, opt, max)`` shapes of ``image`` for the optimization profile."""
        return tuple((b,) + IMAGE_CHW for b in (self.min_batch, self.opt_batch, self.max_batch))  # type: ignore[return-value]

    @property
    def workspace_bytes(self) -> int | None:
        return None if self.workspace_gib is None else int(self.workspace_gib * GIB)


@dataclass(frozen=True)
class GpuInfo:
    """The GPU an engine is built for: marketing name and compute capability ``(major, minor)``."""

    name: str
    compute_capability: tuple[int, int]


@dataclass
class BuildResult:
    path: Path
    artifact: str
    seconds: float
    attrs: dict[str, Any] = field(default_factory=dict)


def import_tensorrt() -> Any:
    """``import tensorrt`` or raise :class:`EngineUnavailable` naming the ``tensorrt`` extra."""
    try:
        import tensorrt  # noqa: PLC0415
    except ImportError as exc:
        raise EngineUnavailable("TensorRT 10", "tensorrt",
                                detail=f"{exc}; on Jetson it comes with JetPack") from exc
    return tensorrt


def detect_gpu(device: int = 0) -> GpuInfo:
    """Name and compute capability of CUDA device ``device`` (cuda-python, torch or nvidia-smi)."""
    try:
        from cuda.bindings import runtime as cudart  # noqa: PLC0415

        err, props = cudart.cudaGetDeviceProperties(device)
        if int(err) == 0:
            name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
            return GpuInfo(name.strip("\x00 "), (int(props.major), int(props.minor)))
    except Exception:  # noqa: BLE001 - try the next source
        pass
    try:
        import torch  # noqa: PLC0415

        if torch.cuda.is_available():
            return GpuInfo(torch.cuda.get_device_name(device), tuple(torch.cuda.get_device_capability(device)))
    except Exception:  # noqa: BLE001
        pass
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=name,compute_cap", "--format=csv,noheader", f"-i={device}"],
                                 capture_output=True, text=True, timeout=20, check=True).stdout.strip()
            name, cc = [s.strip() for s in out.split(",")]
            major, minor = cc.split(".")
            return GpuInfo(name, (int(major), int(minor)))
        except Exception:  # noqa: BLE001
            pass
    raise EngineUnavailable("a CUDA GPU", "tensorrt", detail="no CUDA device found by cuda-python, torch or nvidia-smi")


def source_artifact(bundle: Bundle, precision: str, fused: bool = False) -> Artifact:
    """The ONNX artifact an engine of ``precision`` is built from.

    fp16: the fp32 ONNX (TensorRT lowers it with the FP16 flag). int8: the TensorRT-flavoured QDQ
    ONNX (``attrs.intended_engine == 'tensorrt'``); ONNX Runtime's uint8 QDQ model is refused
    because TensorRT accepts only zero-point-0 int8 Q/DQ.
    """
    role = "fused" if fused else "encoder"
    onnx = [a for a in bundle.artifacts if a.kind == "onnx" and a.role == role and not a.attrs.get("degraded")]
    if precision == "fp16":
        cands = [a for a in onnx if a.precision == "fp32"]
        hint = "export with --precisions fp32"
    else:
        cands = [a for a in onnx if a.precision == "int8" and a.attrs.get("intended_engine") == "tensorrt"]
        hint = "export with --formats onnx,tensorrt --precisions int8"
    if not cands:
        raise BundleError(f"bundle {bundle.root} has no {role} ONNX to build a {precision} engine from; {hint}")
    return cands[0]


def engine_attrs(opts: BuildOptions, gpu: GpuInfo, trt_version: str, source: Artifact, seconds: float) -> dict:
    """Manifest attrs of a built engine."""
    return {"gpu": gpu.name, "compute_capability": f"{gpu.compute_capability[0]}.{gpu.compute_capability[1]}",
            "tensorrt": trt_version, "source": source.name,
            "profile": {"input": INPUT_NAME, "min": list(opts.profile_shapes()[0]),
                        "opt": list(opts.profile_shapes()[1]), "max": list(opts.profile_shapes()[2])},
            "max_batch": opts.max_batch, "build_seconds": round(seconds, 3),
            "workspace_gib": opts.workspace_gib, "dla_core": opts.dla_core,
            "quantization": "explicit (Q/DQ)" if opts.precision == "int8" else None,
            "options": {k: (str(v) if isinstance(v, os.PathLike) else v) for k, v in asdict(opts).items()}}


def build_serialized(trt: Any, onnx_path: str | os.PathLike, opts: BuildOptions, log_severity: str = "WARNING"
                     ) -> bytes:
    """Parse ``onnx_path`` and build the serialized engine with the TensorRT module ``trt``.

    Returns the plan bytes. The timing cache file (if any) is read before and written after.
    Raises :class:`EngineBuildError` with TensorRT's messages on parser or builder failure.
    """
    opts.validate()
    logger = trt.Logger(getattr(trt.Logger, log_severity))
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineBuildError(f"TensorRT's ONNX parser rejected {Path(onnx_path).name}: " + "; ".join(errors))
    config = builder.create_builder_config()
    if opts.workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, opts.workspace_bytes)
    config.set_flag(trt.BuilderFlag.FP16)
    if opts.precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
    if opts.dla_core is not None:
        n = int(builder.num_DLA_cores)
        if opts.dla_core >= n:
            raise InputError(f"--dla {opts.dla_core}: this device has {n} DLA core(s)")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = opts.dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    profile = builder.create_optimization_profile()
    mn, opt, mx = opts.profile_shapes()
    profile.set_shape(INPUT_NAME, mn, opt, mx)
    config.add_optimization_profile(profile)
    cache_path = Path(opts.timing_cache) if opts.timing_cache is not None else None
    if cache_path is not None:
        data = cache_path.read_bytes() if cache_path.is_file() else b""
        cache = config.create_timing_cache(data)
        config.set_timing_cache(cache, False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineBuildError(f"TensorRT could not build a {opts.precision} engine from {Path(onnx_path).name} "
                               "(see the TensorRT log above)")
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_suffix(cache_path.suffix + ".tmp")
        tmp.write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))
        os.replace(tmp, cache_path)
    return bytes(memoryview(plan))


def build_engine(bundle: Bundle | str | os.PathLike, opts: BuildOptions, trt: Any = None,
                 gpu: GpuInfo | None = None) -> BuildResult:
    """Build an engine for this GPU from the bundle's ONNX and add it to the manifest.

    Args:
        bundle: the bundle (folder) to read and extend.
        opts: :class:`BuildOptions`.
        trt: the ``tensorrt`` module (injected in tests; default: imported, or
            :class:`EngineUnavailable` naming the ``tensorrt`` extra).
        gpu: the target GPU (default: :func:`detect_gpu`).
    """
    from smirk_edge.runtimes.trt import engine_filename  # noqa: PLC0415

    opts.validate()
    bundle = bundle if isinstance(bundle, Bundle) else Bundle(bundle)
    trt = import_tensorrt() if trt is None else trt
    gpu = detect_gpu() if gpu is None else gpu
    source = source_artifact(bundle, opts.precision, opts.fused)
    onnx_path = bundle.main_path(source)
    stem = "fused" if opts.fused else "encoder"
    filename = engine_filename(gpu.name, gpu.compute_capability, str(trt.__version__), opts.precision, stem=stem)
    if opts.dla_core is not None:
        filename = filename.replace(".engine", f".dla{opts.dla_core}.engine")
    start = time.perf_counter()
    plan = build_serialized(trt, onnx_path, opts)
    seconds = time.perf_counter() - start
    tmp = bundle.root / (filename + ".tmp")
    tmp.write_bytes(plan)
    final = bundle.root / filename
    os.replace(tmp, final)
    writer = BundleWriter(bundle.root)
    name = filename
    writer.add(name, "tensorrt-engine", "fused" if opts.fused else "encoder", final, opts.precision,
               engine_attrs(opts, gpu, str(trt.__version__), source, seconds))
    writer.write()
    return BuildResult(final, name, seconds, writer.artifacts[name].attrs)
