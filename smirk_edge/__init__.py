"""smirk-edge: SMIRK 3D face reconstruction on edge inference engines.

``import smirk_edge`` needs numpy and OpenCV only; engines, torch and the training and export
code are imported lazily when used.
"""

from __future__ import annotations

from ._version import __version__
from .errors import (BundleError, CheckpointError, EngineUnavailable, FaceModelError, InputError, OptionError,
                     RunnerError, SmirkEdgeError, UnsafeFileError)
from .face_model import FaceGeometry, FaceModel

_LAZY = {"Reconstructor": "reconstructor", "Face": "results", "Params": "results"}


def __getattr__(name: str):
    """``smirk_edge.Reconstructor`` and the result types, imported on first use."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'smirk_edge' has no attribute {name!r}")


__all__ = [
    "__version__",
    "Reconstructor",
    "Face",
    "FaceModel",
    "FaceGeometry",
    "SmirkEdgeError",
    "InputError",
    "FaceModelError",
    "CheckpointError",
    "UnsafeFileError",
    "BundleError",
    "EngineUnavailable",
    "RunnerError",
    "OptionError",
]
