"""OpenVINO adapter: :class:`CompiledModelFromFile` (loader) and :class:`OvRunner`.

Named ``ov.py`` so that it never shadows the real ``openvino`` package, which is imported only when
a model is compiled.

Precision trap: on CPUs with AVX-512 BF16 / AMX, OpenVINO runs fp32 models in bf16 unless told
otherwise (about 1.5e-2 drift on the SMIRK encoder). Asking for ``precision='fp32'`` therefore sets
``INFERENCE_PRECISION_HINT='f32'`` explicitly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .._lazy import require
from .base import OptionError, Runner, RunnerError, TensorMeta, check_choice, resolve

DEVICES = ("CPU", "GPU", "NPU", "AUTO")
PERFORMANCE_HINTS = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")
# artifact precision -> INFERENCE_PRECISION_HINT for the floating-point part of the graph.
# int8 (NNCF/QDQ) models keep their quantized ops in int8; the rest runs in f32 for accuracy.
INFERENCE_PRECISION = {"fp32": "f32", "fp16": "f16", "bf16": "bf16", "int8": "f32"}


def ov_config(device: str = "CPU", precision: str | None = "fp32", performance_hint: str = "LATENCY",
              threads: int | None = None, inference_precision: str | None = None) -> dict[str, str]:
    """The ``compile_model`` properties for the options (pure; no OpenVINO needed).

    ``inference_precision`` (``'f32'``, ``'f16'``, ``'bf16'``) overrides the hint derived from
    ``precision``; ``precision=None`` and no override leave the device default (bf16 on AMX/AVX-512
    BF16 CPUs).
    """
    base = device.split(":")[0].split(".")[0]
    check_choice("OpenVINO device", base, list(DEVICES) + ["HETERO", "MULTI"])
    config = {"PERFORMANCE_HINT": check_choice("performance hint", performance_hint, list(PERFORMANCE_HINTS))}
    if precision is not None:
        check_choice("precision", precision, list(INFERENCE_PRECISION))
    hint = inference_precision or (INFERENCE_PRECISION[precision] if precision else None)
    if hint is not None:
        config["INFERENCE_PRECISION_HINT"] = check_choice("inference precision", hint, ["f32", "f16", "bf16"])
    if threads is not None:
        if not isinstance(threads, int) or threads < 1:
            raise OptionError(f"threads must be a positive int or None, got {threads!r}")
        config["INFERENCE_NUM_THREADS"] = str(threads)
    return config


class CompiledModelFromFile:
    """Loader: reads an ``.onnx`` file or an OpenVINO IR (``.xml`` + ``.bin``) and compiles it.

    Args:
        path: ``.onnx`` or ``.xml``.
        device: ``'CPU'``, ``'GPU'``, ``'NPU'``, ``'AUTO'`` (or ``'GPU.1'`` etc.).
        precision, performance_hint, threads, inference_precision: see :func:`ov_config`.
        batch: None keeps the model's batch dimension; an int fixes it; ``-1`` makes it dynamic.
            Applied by ``Model.reshape`` to dimension 0 of every input before compiling.
        config: extra ``compile_model`` properties, applied last.
    """

    def __init__(self, path: str | os.PathLike, device: str = "CPU", precision: str | None = "fp32",
                 performance_hint: str = "LATENCY", threads: int | None = None, batch: int | None = None,
                 inference_precision: str | None = None, config: dict[str, Any] | None = None):
        self.path = Path(path)
        if self.path.suffix.lower() not in (".onnx", ".xml"):
            raise OptionError(f"OpenVINO reads .onnx or .xml (IR) files, not {self.path.name!r}")
        if batch is not None and (not isinstance(batch, int) or (batch < 1 and batch != -1)):
            raise OptionError(f"batch must be a positive int, -1 (dynamic) or None, got {batch!r}")
        self.device, self.batch = device, batch
        self.config = ov_config(device, precision, performance_hint, threads, inference_precision)
        self.config.update(config or {})

    def __call__(self) -> Any:
        ov = require("openvino")
        if not self.path.is_file():
            raise RunnerError(f"OpenVINO model not found: {self.path}")
        core = ov.Core()
        model = core.read_model(str(self.path))
        # compiled ports may carry extra internal names (e.g. 'flat_353' beside 'regressors');
        # remember the model's own names so the runner reports those
        self.input_names = [p.get_any_name() for p in model.inputs]
        self.output_names = [p.get_any_name() for p in model.outputs]
        if self.batch is not None:
            shapes = {}
            for port in model.inputs:
                shape = port.get_partial_shape()
                if shape.rank.is_dynamic or len(shape) == 0:
                    raise RunnerError(f"cannot set the batch of input {port.get_any_name()!r}: unknown rank")
                shape[0] = ov.Dimension(self.batch) if self.batch > 0 else ov.Dimension()
                shapes[port.get_any_name()] = shape
            model.reshape(shapes)
        return core.compile_model(model, self.device, self.config)


def _port_names(ports: Any, known: Sequence[str] | None) -> list[str]:
    """One stable name per port: the model's own name when known, else the sorted first of its names."""
    if known is not None and len(known) == len(ports):
        return list(known)
    return [sorted(p.get_names())[0] if p.get_names() else p.get_any_name() for p in ports]


def _meta(port: Any, name: str | None = None) -> TensorMeta:
    try:
        dtype = np.dtype(port.get_element_type().to_dtype())
    except Exception as exc:  # noqa: BLE001 - e.g. bf16, which numpy lacks
        raise RunnerError(f"tensor {port.get_any_name()!r} has element type {port.get_element_type()}, "
                          "which has no numpy equivalent") from exc
    pshape = port.get_partial_shape()
    if pshape.rank.is_dynamic:
        raise RunnerError(f"tensor {port.get_any_name()!r} has a dynamic rank; reshape the model first")
    shape = tuple(d.get_length() if d.is_static else None for d in pshape)
    return TensorMeta(name or port.get_any_name(), dtype, shape)


class OvRunner(Runner):
    """Runs an OpenVINO ``CompiledModel`` through one infer request.

    Args:
        compiled: a ``CompiledModel``, a loader returning one (e.g. :class:`CompiledModelFromFile`),
            or a path to ``.onnx``/``.xml`` (compiled with :class:`CompiledModelFromFile` defaults:
            CPU, fp32, LATENCY).
        name: free text for reports.
        precision: precision of the artifact, for reports.
    """

    engine = "openvino"

    def __init__(self, compiled: Any, name: str | None = None, precision: str = "fp32"):
        source = CompiledModelFromFile(compiled) if isinstance(compiled, (str, os.PathLike)) else compiled
        device = source.device if isinstance(source, CompiledModelFromFile) else "CPU"
        super().__init__(name=name, device=device, precision=precision)
        self._source = source
        self.compiled: Any = None
        self._request: Any = None

    @classmethod
    def from_artifact(cls, path: str | os.PathLike, precision: str = "fp32", name: str | None = None,
                      device: str = "CPU", performance_hint: str = "LATENCY", threads: int | None = None,
                      batch: int | None = None, inference_precision: str | None = None) -> OvRunner:
        """A runner for an ``.onnx`` or IR file (used by :func:`~smirk_edge.runtimes.registry.make_runner`)."""
        loader = CompiledModelFromFile(path, device=device, precision=precision, performance_hint=performance_hint,
                                       threads=threads, batch=batch, inference_precision=inference_precision)
        return cls(loader, name=name, precision=precision)

    def activate_impl(self) -> None:
        ov = require("openvino")
        self.compiled = resolve(self._source, lambda c: isinstance(c, ov.CompiledModel), "a CompiledModel")
        self._request = self.compiled.create_infer_request()
        self._input_names = _port_names(self.compiled.inputs, getattr(self._source, "input_names", None))
        self._output_names = _port_names(self.compiled.outputs, getattr(self._source, "output_names", None))
        self._outputs = list(zip(self._output_names, self.compiled.outputs))

    def get_property(self, key: str) -> Any:
        """A property of the compiled model, e.g. ``'INFERENCE_PRECISION_HINT'``."""
        self._require_active("get_property")
        return self.compiled.get_property(key)

    def get_input_metadata_impl(self) -> list[TensorMeta]:
        return [_meta(p, n) for p, n in zip(self.compiled.inputs, self._input_names)]

    def get_output_metadata_impl(self) -> list[TensorMeta]:
        return [_meta(p, n) for p, n in zip(self.compiled.outputs, self._output_names)]

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # synchronous call: sharing the caller's input memory is safe and saves a copy per input;
        # outputs are views of the request's memory, which the next call reuses: copy them once
        results = self._request.infer(feed, share_inputs=True, share_outputs=True)
        return {name: np.array(results[port], copy=True) for name, port in self._outputs}

    def deactivate_impl(self) -> None:
        self._request = None
        self.compiled = None
