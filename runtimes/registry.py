"""One typed table of engines, engine auto-selection and activation with fallback.

* :data:`ENGINES`: an :class:`EngineSpec` per engine (pip extra, module, artifact kinds it opens,
  precisions, devices, speed rank, options its runner accepts).
* :func:`available_engines`: engines whose Python module is installed (``find_spec``, no import).
* :func:`select_engine`: the fastest available engine that can open one of a bundle's artifacts,
  with a human-readable reason and the ranked alternatives.
* :func:`make_runner`: a runner for one artifact; unknown options are rejected with a hint.
* :func:`open_with_fallback`: activate candidates in order; on failure warn once and try the next.

The speed rank is a static prior (TensorRT on a GPU, then ONNX Runtime, then OpenVINO, then
eager torch): on the project's CPUs ONNX Runtime ran the default (fast) model faster than OpenVINO
in four of four back-to-back comparisons and the full model level with it, started 4-5x sooner
(~0.2 s against ~0.9 s) and held less memory on a long stream (145 against 189 MiB;
docs/benchmark_results/cpu_engine_ab_s8.json, memory_stream_720p_s8.json). OpenVINO stays the
engine for Intel GPUs and NPUs (``device="gpu"`` / ``"npu"``), which ONNX Runtime does not open.
``smirk-edge bench`` measures the real order on a target.
"""

from __future__ import annotations

import importlib
import logging
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._lazy import available
from ..bundle import Artifact  # the one artifact record; ranked here, re-exported
from ..errors import EngineUnavailable, install_hint
from .base import OptionError, Runner, RunnerError, check_choice, check_options

log = logging.getLogger(__name__)

PRECISION_ORDER = ("fp32", "fp16", "bf16", "int8")
"""Preference among artifacts when no precision is asked for: the reference precision first."""


def _no_sdk_options(threads: int | None, device: str | None) -> dict[str, Any]:
    return {}


def _ort_sdk_options(threads: int | None, device: str | None) -> dict[str, Any]:
    opts: dict[str, Any] = {} if threads is None else {"threads": threads}
    if device is not None and device.lower().startswith("tensorrt"):
        opts["providers"] = ["tensorrt", "cuda"]  # onnxruntime-gpu's TensorRT provider, CUDA for the rest
    elif device is not None and device.lower().startswith(("cuda", "gpu")):
        opts["providers"] = "cuda"  # never fall back to the CPU provider silently
    return opts


def _ov_sdk_options(threads: int | None, device: str | None) -> dict[str, Any]:
    opts: dict[str, Any] = {} if threads is None else {"threads": threads}
    if device is not None:
        opts["device"] = device.upper()
    return opts


def _torch_sdk_options(threads: int | None, device: str | None) -> dict[str, Any]:
    return {"device": "cpu" if device is None else str(device).lower()}


@dataclass(frozen=True)
class EngineSpec:
    """What one engine is, needs, opens and accepts."""

    name: str                        # 'onnxruntime', 'openvino', 'tensorrt', 'torch'
    what: str                        # human name for messages
    extra: str                       # pip extra (smirk_edge.errors.install_hint)
    module: str                      # Python module that must be importable
    artifact_kinds: tuple[str, ...]  # kinds it opens, preferred first
    precisions: tuple[str, ...]
    devices: tuple[str, ...]         # lower-case device kinds
    speed_rank: int                  # lower is faster; used by select_engine
    runner: str                      # 'module:Class' of the runner, imported lazily
    options: tuple[str, ...]         # keyword options make_runner accepts (Runner.from_artifact)
    also_needs: tuple[str, ...] = field(default=())  # any one of these modules must be present too
    # the SDK's engine-neutral settings (threads, device) as this engine's runner options
    sdk_options: Callable[[int | None, str | None], dict[str, Any]] = field(default=_no_sdk_options,
                                                                           compare=False, repr=False)
    runs_detector: bool = False      # can run the BlazeFace ONNX detector

    def is_installed(self) -> bool:
        if not available(self.module):
            return False
        return not self.also_needs or any(available(m) for m in self.also_needs)

    def opens(self, kind: str, precision: str | None = None) -> bool:
        return kind in self.artifact_kinds and (precision is None or precision in self.precisions)

    def runner_options(self, threads: int | None = None, device: str | None = None) -> dict[str, Any]:
        """``threads`` and ``device`` as the keyword options of this engine's runner (what it ignores is left out)."""
        return self.sdk_options(threads, device)


ENGINES: dict[str, EngineSpec] = {spec.name: spec for spec in (
    EngineSpec("tensorrt", "TensorRT 10", "tensorrt", "tensorrt", ("tensorrt-engine",),
               ("fp32", "fp16", "bf16", "int8"), ("cuda",), 0, "smirk_edge.runtimes.trt:TrtRunner",
               ("precision", "name", "profile_index", "allocator", "pinned"),
               also_needs=("cuda.bindings", "cuda.cudart", "torch")),
    EngineSpec("openvino", "OpenVINO", "openvino", "openvino", ("openvino-ir", "onnx"),
               ("fp32", "fp16", "int8"), ("cpu", "gpu", "npu", "auto"), 2, "smirk_edge.runtimes.ov:OvRunner",
               ("precision", "name", "device", "performance_hint", "threads", "batch", "inference_precision"),
               sdk_options=_ov_sdk_options, runs_detector=True),
    EngineSpec("onnxruntime", "ONNX Runtime", "onnxruntime", "onnxruntime", ("onnx",),
               ("fp32", "fp16", "int8"), ("cpu", "cuda", "tensorrt"), 1, "smirk_edge.runtimes.ort:OrtRunner",
               ("precision", "name", "providers", "threads", "inter_op_threads", "graph_optimization_level"),
               sdk_options=_ort_sdk_options, runs_detector=True),
    EngineSpec("torch", "PyTorch", "torch", "torch", ("torch-checkpoint",),
               ("fp32", "fp16", "bf16"), ("cpu", "cuda"), 3, "smirk_edge.runtimes.torch_runner:TorchRunner",
               ("precision", "name", "device", "cuda_graphs", "compile", "channels_last", "input_name", "input_size"),
               also_needs=("timm",), sdk_options=_torch_sdk_options),
)}

@dataclass(frozen=True)
class Selection:
    """The chosen engine and artifact, why, and the ranked alternatives (best first)."""

    engine: str
    artifact: Artifact  # as passed in (other records with kind, precision and path become Artifacts)
    reason: str
    alternatives: tuple[tuple[str, Artifact], ...] = ()


def engine_spec(name: str) -> EngineSpec:
    """The :class:`EngineSpec` for ``name``; unknown names get a closest-match hint."""
    return ENGINES[check_choice("engine", name, list(ENGINES))]


def available_engines() -> list[str]:
    """Names of installed engines, fastest first (module lookup only, nothing is imported)."""
    return [s.name for s in sorted(ENGINES.values(), key=lambda s: s.speed_rank) if s.is_installed()]


def _device_kind(device: str | None) -> str | None:
    return None if device is None else str(device).split(":")[0].split(".")[0].lower()


def gated_for_engine(artifact: Any, engine: str) -> bool:
    """False for an int8 artifact whose accuracy gate ran on another engine (``attrs.accuracy.engine``):
    int8 graphs are run differently by each engine (OpenVINO executes an ONNX Runtime QDQ graph with
    its own kernels and was seen 1.3 px off where ONNX Runtime passed), so an int8 artifact is used
    only where it was gated. Float artifacts, and records without a gate engine, run anywhere."""
    attrs = getattr(artifact, "attrs", None) or {}
    acc = attrs.get("accuracy") if isinstance(attrs, Mapping) else None
    gated = acc.get("engine") if isinstance(acc, Mapping) else None
    return getattr(artifact, "precision", None) != "int8" or not gated or gated == engine


def select_engine(artifacts: Sequence[Any], preferred: str = "auto", precision: str | None = None,
                  device: str | None = None, installed: Iterable[str] | None = None) -> Selection:
    """Choose an engine and one of ``artifacts`` (records with ``kind``, ``precision``, ``path``).

    Args:
        artifacts: the bundle's artifacts, e.g. ``[Artifact('onnx', 'fp32', 'encoder.onnx'), ...]``.
        preferred: ``'auto'`` (fastest available) or an engine name. An explicit engine that is not
            installed raises :class:`EngineUnavailable` naming its extra.
        precision: only artifacts of this precision (None: prefer fp32, then fp16, bf16, int8).
        device: only engines that run on this device kind (``'cpu'``, ``'cuda'``, ``'gpu'``, ...).
        installed: engine names taken as installed (default: :func:`available_engines`).
    """
    installed = set(available_engines() if installed is None else installed)
    dev = _device_kind(device)
    if preferred == "auto":
        specs = sorted(ENGINES.values(), key=lambda s: s.speed_rank)
    else:
        spec = engine_spec(preferred)
        if spec.name not in installed:
            raise EngineUnavailable(spec.what, spec.extra, detail=f"backend={preferred!r} was asked for")
        specs = [spec]
    skipped: list[str] = []
    ranked: list[tuple[str, Artifact]] = []
    for spec in specs:
        if spec.name not in installed:
            skipped.append(f"{spec.name} (not installed: {install_hint(spec.extra)})")
            continue
        if dev is not None and dev not in spec.devices:
            skipped.append(f"{spec.name} (does not run on {device!r})")
            continue
        usable = [a for a in artifacts if spec.opens(a.kind, a.precision)
                  and (precision is None or a.precision == precision) and gated_for_engine(a, spec.name)]
        if not usable:
            skipped.append(f"{spec.name} (no artifact it opens"
                           f"{f' in {precision}' if precision else ''})")
            continue

        def order(a: Any, spec: EngineSpec = spec) -> tuple[int, int]:
            p = a.precision
            return (spec.artifact_kinds.index(a.kind),
                    PRECISION_ORDER.index(p) if p in PRECISION_ORDER else len(PRECISION_ORDER))

        for a in sorted(usable, key=order):
            ranked.append((spec.name, a if isinstance(a, Artifact) else Artifact(a.kind, a.precision, a.path)))
    if not ranked:
        kinds = sorted({f"{a.kind}/{a.precision}" for a in artifacts})
        raise RunnerError(f"no engine can open any of the artifacts {kinds} here: " + "; ".join(skipped))
    engine, art = ranked[0]
    why = ("asked for" if preferred != "auto" else
           f"fastest available engine (speed rank {ENGINES[engine].speed_rank})")
    reason = f"{engine}: {why}, opens {os.fspath(art.path)} ({art.kind}, {art.precision})"
    if skipped:
        reason += "; skipped " + ", ".join(skipped)
    log.info("engine selection: %s", reason)
    return Selection(engine, art, reason, tuple(ranked[1:]))


def _runner_class(spec: EngineSpec) -> type[Runner]:
    module, cls = spec.runner.split(":")
    return getattr(importlib.import_module(module), cls)


def make_runner(engine: str, artifact_path: str | os.PathLike, **options: Any) -> Runner:
    """An (inactive) runner of ``engine`` for one artifact file.

    ``options`` are the engine's :attr:`EngineSpec.options` (e.g. ``threads=1`` for ONNX Runtime,
    ``device='GPU'`` for OpenVINO); any other keyword raises :class:`OptionError` with a hint.
    """
    spec = engine_spec(engine)
    if not spec.options:
        raise OptionError(f"{spec.name} runners are not made from a file path: build "
                          f"{spec.runner.split(':')[1]} from a module or a checkpoint loader")
    check_options(f"the {spec.name} runner", options, spec.options)
    options.setdefault("name", f"{spec.name}:{os.path.basename(os.fspath(artifact_path))}")
    return _runner_class(spec).from_artifact(artifact_path, **options)  # type: ignore[attr-defined]


class EngineFallbackWarning(UserWarning):
    """An engine failed to start and the next candidate was used instead."""


@dataclass
class FallbackResult:
    """The active runner, its position among the candidates, and why earlier ones failed."""

    runner: Runner
    index: int
    failures: list[tuple[str, BaseException]]


def open_with_fallback(candidates: Iterable[Runner | Callable[[], Runner]]) -> FallbackResult:
    """Activate the first candidate that works.

    Each candidate is a runner or a callable returning one (e.g. ``lambda: make_runner(...)``,
    which may itself raise :class:`EngineUnavailable`). When some fail (missing library, broken or
    foreign file) and a later one runs, one :class:`EngineFallbackWarning` names each failure and
    its cause and says which runner ran. When all fail, :class:`RunnerError` lists every cause.
    """
    failures: list[tuple[str, BaseException]] = []
    for index, cand in enumerate(candidates):
        label = getattr(cand, "name", None) or getattr(cand, "__name__", None) or f"candidate {index}"
        try:
            runner = cand if isinstance(cand, Runner) else cand()
            label = runner.name
            runner.activate()
        except Exception as exc:  # noqa: BLE001 - any failure to start means: try the next engine
            failures.append((str(label), exc))
            continue
        if failures:
            causes = "; ".join(f"{n} failed: {type(e).__name__}: {e}" for n, e in failures)
            warnings.warn(f"fell back to {runner.name} ({runner.engine}) because {causes}",
                          EngineFallbackWarning, stacklevel=2)
        log.info("running %s (%s on %s, %s)", runner.name, runner.engine, runner.device, runner.precision)
        return FallbackResult(runner, index, failures)
    if not failures:
        raise RunnerError("open_with_fallback needs at least one candidate")
    causes = "; ".join(f"{n}: {type(e).__name__}: {e}" for n, e in failures)
    raise RunnerError(f"no engine could be started: {causes}") from failures[-1][1]


@dataclass
class Opened:
    """An active runner for one of a bundle's artifacts, as :func:`open_artifact` chose it."""

    runner: Runner
    engine: str
    artifact: Artifact
    selection: Selection
    reason: str


def open_artifact(artifacts: Sequence[Any], path_of: Callable[[Any], str | os.PathLike], backend: str = "auto",
                  precision: str | None = None, device: str | None = None, threads: int | None = None) -> Opened:
    """Select an engine for ``artifacts`` (:func:`select_engine`) and activate its runner.

    ``path_of(artifact)`` gives the file to open (e.g. ``bundle.main_path``, which checks the hash).
    ``threads`` and ``device`` become each engine's own options (:meth:`EngineSpec.runner_options`).
    With ``backend="auto"`` a runner that fails to start falls back to the next ranked candidate
    (:func:`open_with_fallback`); an explicit backend never falls back.
    """
    selection = select_engine(artifacts, preferred=backend, precision=precision, device=device)
    chain = [(selection.engine, selection.artifact)] + list(selection.alternatives)
    if backend != "auto":
        chain = chain[:1]

    def candidate(engine: str, art: Any) -> Callable[[], Runner]:
        return lambda: make_runner(engine, path_of(art), precision=art.precision,
                                   **ENGINES[engine].runner_options(threads, device))

    result = open_with_fallback([candidate(e, a) for e, a in chain])
    engine, art = chain[result.index]
    reason = selection.reason if result.index == 0 else (
        f"fell back to {engine} ({art.path}) after: " + "; ".join(f"{n}: {e}" for n, e in result.failures))
    return Opened(result.runner, engine, art, selection, reason)


def detector_engine(preferred: str | None = None) -> str:
    """The engine that runs the face detector: ``preferred`` when it can, else the first installed
    of OpenVINO and ONNX Runtime. Raises :class:`EngineUnavailable` when neither is installed."""
    if preferred in ENGINES and ENGINES[preferred].runs_detector:
        return preferred
    installed = available_engines()
    for name in ("openvino", "onnxruntime"):
        if name in installed:
            return name
    raise EngineUnavailable("the face detector's engine (ONNX Runtime or OpenVINO)", "onnxruntime")
