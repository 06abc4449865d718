"""Lazy imports of optional dependencies, failing with the pip extra to install."""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType

from .errors import EngineUnavailable

# module name -> (human name, pip extra)
_EXTRAS = {
    "torch": ("PyTorch", "torch"),
    "timm": ("timm", "torch"),
    "onnx": ("onnx", "export"),
    "onnxruntime": ("ONNX Runtime", "onnxruntime"),
    "openvino": ("OpenVINO", "openvino"),
    "nncf": ("NNCF", "export"),
    "tensorrt": ("TensorRT 10", "tensorrt"),
    "cuda": ("cuda-python", "tensorrt"),
    "scipy": ("SciPy", "train"),
    "tqdm": ("tqdm", "train"),
    "pygltflib": ("pygltflib (glTF .glb files)", "gltf"),
}


def quiet_openvino() -> None:
    """Switch OpenVINO's telemetry off before ``openvino`` is first imported.

    ``import openvino`` initialises the ``openvino_telemetry`` package, which writes
    ``~/intel/openvino_ga_cid`` and ``~/intel/stats`` and sends an "import" event to an analytics
    host. smirk-edge promises to write and send nothing, so the package is hidden from the import
    system (OpenVINO then uses its own no-op stand-in). It has no effect when ``openvino`` or
    ``openvino_telemetry`` was already imported by the application, or when
    ``SMIRK_EDGE_OPENVINO_TELEMETRY=1`` is set (the application's own choice).
    """
    if os.environ.get("SMIRK_EDGE_OPENVINO_TELEMETRY") == "1":
        return
    if "openvino" in sys.modules or "openvino_telemetry" in sys.modules:
        return
    sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]  # import raises ImportError


def require(module: str) -> ModuleType:
    """Import ``module`` or raise :class:`EngineUnavailable` naming the extra that provides it."""
    if module.split(".")[0] == "openvino":
        quiet_openvino()
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        what, extra = _EXTRAS.get(top, (top, "dev"))
        raise EngineUnavailable(what, extra, detail=str(exc)) from exc


def available(module: str) -> bool:
    """True when ``module`` can be found, without importing it."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
