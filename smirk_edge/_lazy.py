"""Lazy imports of optional dependencies, failing with the pip extra to install."""

from __future__ import annotations

import importlib
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


def require(module: str) -> ModuleType:
    """Import ``module`` or raise :class:`EngineUnavailable` naming the extra that provides it."""
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
