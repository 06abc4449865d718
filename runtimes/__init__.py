"""smirk_edge.runtimes: one Runner contract and one adapter per inference engine.

Importing this package needs numpy only; each adapter imports its engine when activated.

=================  ==========================================  ===========================
engine             runner (loader)                              opens
=================  ==========================================  ===========================
onnxruntime        :class:`OrtRunner` (:class:`SessionFromOnnx`)         ``.onnx``
openvino           :class:`OvRunner` (:class:`CompiledModelFromFile`)    ``.xml`` IR, ``.onnx``
tensorrt           :class:`TrtRunner` (:class:`EngineFromFile`)          ``.engine`` (TensorRT 10)
torch              :class:`TorchRunner` (any callable returning a module) ``nn.Module``
=================  ==========================================  ===========================
"""

from __future__ import annotations

from .base import OptionError, Runner, RunnerError, TensorMeta, validate_feed
from .ort import OrtRunner, ProviderUnavailable, SessionFromOnnx
from .ov import CompiledModelFromFile, OvRunner
from .registry import (ENGINES, Artifact, EngineFallbackWarning, EngineSpec, FallbackResult, Selection,
                       available_engines, make_runner, open_with_fallback, select_engine)
from .torch_runner import TorchRunner
from .trt import EngineFromFile, TrtRunner, engine_filename

__all__ = [
    "Runner", "RunnerError", "OptionError", "TensorMeta", "validate_feed",
    "OrtRunner", "SessionFromOnnx", "ProviderUnavailable",
    "OvRunner", "CompiledModelFromFile",
    "TrtRunner", "EngineFromFile", "engine_filename",
    "TorchRunner",
    "ENGINES", "EngineSpec", "Artifact", "Selection", "FallbackResult", "EngineFallbackWarning",
    "available_engines", "select_engine", "make_runner", "open_with_fallback",
]
