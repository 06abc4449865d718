"""ONNX Runtime adapter: :class:`SessionFromOnnx` (loader) and :class:`OrtRunner`.

Named ``ort.py`` so that it never shadows the real ``onnxruntime`` package. onnxruntime is
imported when a session is built, not when this module is imported.

Execution providers are picked in priority order among those this onnxruntime build has
(``onnxruntime.get_available_providers()``): TensorRT, CUDA, OpenVINO, CPU. CPU is always kept
last so nodes another provider cannot run still run.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._lazy import require
from .base import OptionError, Runner, RunnerError, TensorMeta, check_choice, resolve

PROVIDER_PRIORITY = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "OpenVINOExecutionProvider",
                     "CPUExecutionProvider")
PROVIDER_ALIASES = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider",
                    "openvino": "OpenVINOExecutionProvider", "cpu": "CPUExecutionProvider"}
# The onnxruntime package that ships each provider (none of them is a smirk-edge extra).
PROVIDER_PACKAGES = {"TensorrtExecutionProvider": "onnxruntime-gpu (with TensorRT libraries)",
                     "CUDAExecutionProvider": "onnxruntime-gpu",
                     "OpenVINOExecutionProvider": "onnxruntime-openvino"}
GRAPH_OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
                    "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}
# ONNX Runtime type strings -> numpy dtypes (bfloat16 has no numpy dtype and is refused).
ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
             "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(int16)": np.int16,
             "tensor(uint16)": np.uint16, "tensor(int32)": np.int32, "tensor(uint32)": np.uint32,
             "tensor(int64)": np.int64, "tensor(uint64)": np.uint64, "tensor(bool)": np.bool_}


class ProviderUnavailable(RunnerError):
    """An execution provider that was asked for explicitly but is not in this onnxruntime build."""


def choose_providers(available: Sequence[str], requested: str | Sequence[str] | None = "auto") -> list[str]:
    """Execution providers to use, best first, always ending with the CPU provider.

    Args:
        available: what ``onnxruntime.get_available_providers()`` reports.
        requested: ``'auto'``/None (every available provider in :data:`PROVIDER_PRIORITY` order), or
            one or more names: aliases ``'cpu'``, ``'cuda'``, ``'tensorrt'``, ``'openvino'`` or full
            provider names. An explicit provider that is not available raises
            :class:`ProviderUnavailable` naming the onnxruntime package that has it.
    """
    if requested is None or requested == "auto":
        chosen = [p for p in PROVIDER_PRIORITY if p in available]
    else:
        names = [requested] if isinstance(requested, str) else list(requested)
        valid = list(PROVIDER_ALIASES) + list(PROVIDER_PRIORITY)
        chosen = []
        for n in names:
            full = PROVIDER_ALIASES.get(str(n).lower(), n)
            if full not in PROVIDER_PRIORITY:
                check_choice("execution provider", str(n), valid)
            if full not in available:
                pkg = PROVIDER_PACKAGES.get(full, "a different onnxruntime build")
                raise ProviderUnavailable(f"{full} is not available in this onnxruntime (it has {list(available)}); "
                                          f"it comes with the {pkg} package")
            if full not in chosen:
                chosen.append(full)
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


class SessionFromOnnx:
    """Loader: builds an ``onnxruntime.InferenceSession`` from an ONNX file (or model bytes).

    Args:
        model: path to a ``.onnx`` file, or its serialized bytes.
        providers: see :func:`choose_providers` (default ``'auto'``).
        threads: intra-op threads (None: onnxruntime's default, one per physical core).
        inter_op_threads: inter-op threads (only used with ``execution_mode='parallel'``).
        graph_optimization_level: ``'disable'``, ``'basic'``, ``'extended'`` or ``'all'``.
        execution_mode: ``'sequential'`` or ``'parallel'``.
        provider_options: per-provider option dicts keyed by full provider name.
    """

    def __init__(self, model: str | os.PathLike | bytes, providers: str | Sequence[str] | None = "auto",
                 threads: int | None = None, inter_op_threads: int | None = None,
                 graph_optimization_level: str = "all", execution_mode: str = "sequential",
                 provider_options: dict[str, dict[str, Any]] | None = None):
        self.model = model if isinstance(model, bytes) else Path(model)
        self.providers = providers
        for what, n in (("threads", threads), ("inter_op_threads", inter_op_threads)):
            if n is not None and (not isinstance(n, int) or n < 1):
                raise OptionError(f"{what} must be a positive int or None, got {n!r}")
        self.threads, self.inter_op_threads = threads, inter_op_threads
        self.graph_optimization_level = check_choice("graph_optimization_level", graph_optimization_level,
                                                     list(GRAPH_OPT_LEVELS))
        self.execution_mode = check_choice("execution_mode", execution_mode, ["sequential", "parallel"])
        self.provider_options = dict(provider_options or {})

    def __call__(self) -> Any:
        ort = require("onnxruntime")
        opts = ort.SessionOptions()
        if self.threads is not None:
            opts.intra_op_num_threads = self.threads
        if self.inter_op_threads is not None:
            opts.inter_op_num_threads = self.inter_op_threads
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel,
                                                GRAPH_OPT_LEVELS[self.graph_optimization_level])
        opts.execution_mode = (ort.ExecutionMode.ORT_PARALLEL if self.execution_mode == "parallel"
                               else ort.ExecutionMode.ORT_SEQUENTIAL)
        providers = choose_providers(ort.get_available_providers(), self.providers)
        options = [self.provider_options.get(p, {}) for p in providers]
        model = self.model if isinstance(self.model, bytes) else str(self.model)
        if not isinstance(self.model, bytes) and not self.model.is_file():
            raise RunnerError(f"ONNX model not found: {self.model}")
        return ort.InferenceSession(model, sess_options=opts, providers=providers, provider_options=options)


def _meta(node: Any) -> TensorMeta:
    dtype = ORT_TYPES.get(node.type)
    if dtype is None:
        raise RunnerError(f"tensor {node.name!r} has type {node.type}, which has no numpy equivalent")
    shape = tuple(d if isinstance(d, int) and d >= 0 else (d if isinstance(d, str) else None) for d in node.shape)
    return TensorMeta(node.name, np.dtype(dtype), shape)


class OrtRunner(Runner):
    """Runs an ONNX Runtime ``InferenceSession``.

    Args:
        session: an ``InferenceSession``, a loader returning one (e.g. :class:`SessionFromOnnx`), or
            a path to a ``.onnx`` file (opened with :class:`SessionFromOnnx` defaults).
        name: free text for reports.
        precision: precision of the artifact, for reports (``'fp32'``, ``'fp16'``, ``'int8'``).
    Outputs come back by output name. ``device`` becomes ``'cpu'`` or ``'cuda'`` (first provider).
    """

    engine = "onnxruntime"

    def __init__(self, session: Any, name: str | None = None, precision: str = "fp32"):
        super().__init__(name=name, device="cpu", precision=precision)
        self._source = SessionFromOnnx(session) if isinstance(session, (str, os.PathLike)) else session
        self.session: Any = None
        self.providers: list[str] = []

    @classmethod
    def from_artifact(cls, path: str | os.PathLike, precision: str = "fp32", name: str | None = None,
                      providers: str | Sequence[str] | None = "auto", threads: int | None = None,
                      inter_op_threads: int | None = None, graph_optimization_level: str = "all") -> OrtRunner:
        """A runner for an ONNX file (used by :func:`smirk_edge.runtimes.registry.make_runner`)."""
        loader = SessionFromOnnx(path, providers=providers, threads=threads, inter_op_threads=inter_op_threads,
                                 graph_optimization_level=graph_optimization_level)
        return cls(loader, name=name, precision=precision)

    def activate_impl(self) -> None:
        ort = require("onnxruntime")
        self.session = resolve(self._source, lambda s: isinstance(s, ort.InferenceSession), "an InferenceSession")
        self.providers = list(self.session.get_providers())
        first = self.providers[0] if self.providers else "CPUExecutionProvider"
        self.device = "cuda" if first in ("CUDAExecutionProvider", "TensorrtExecutionProvider") else "cpu"
        self._output_names = [o.name for o in self.session.get_outputs()]

    def get_input_metadata_impl(self) -> list[TensorMeta]:
        return [_meta(i) for i in self.session.get_inputs()]

    def get_output_metadata_impl(self) -> list[TensorMeta]:
        return [_meta(o) for o in self.session.get_outputs()]

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.session.run(self._output_names, feed)
        return dict(zip(self._output_names, outputs))

    def deactivate_impl(self) -> None:
        self.session = None
        self.providers = []
