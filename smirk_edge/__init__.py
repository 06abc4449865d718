"""smirk-edge: SMIRK 3D face reconstruction on edge inference engines.

``import smirk_edge`` needs numpy and OpenCV only; engines, torch and the training and export
code are imported lazily when used.

    rec = smirk_edge.Reconstructor()          # embedded default model, fastest engine here
    faces = rec(frame)                        # FrameResult: list[Face] + timings
    overlay = smirk_edge.draw(frame, faces)   # shaded mesh and landmarks
"""

from __future__ import annotations

from ._version import __version__
from .errors import (BundleError, CheckpointError, EngineUnavailable, FaceModelError, InputError, OptionError,
                     RunnerError, SmirkEdgeError, UnsafeFileError)
from .face_model import FaceGeometry, FaceModel

# public name -> module that defines it, imported on first use (keeps ``import smirk_edge`` light)
_LAZY = {
    "Reconstructor": "reconstructor",
    "ReconstructorOptions": "options",
    "Face": "results",
    "Params": "results",
    "FrameResult": "results",
    "Tracker": "tracking",
    "Bundle": "bundle",
    "BundleMetadata": "bundle",
    "OneEuroConfig": "smoothing",
    "StreamSmoothing": "smoothing",
}
_LAZY_MODULES = ("draw", "pipeline")  # ``smirk_edge.draw(frame, faces)``; ``smirk_edge.pipeline.<stage>``


def __getattr__(name: str):
    """``smirk_edge.Reconstructor``, the result types and ``smirk_edge.draw``, imported on first use."""
    import importlib

    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    if name in _LAZY_MODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'smirk_edge' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "__version__",
    "Reconstructor",
    "ReconstructorOptions",
    "Face",
    "Params",
    "FrameResult",
    "Tracker",
    "Bundle",
    "BundleMetadata",
    "OneEuroConfig",
    "StreamSmoothing",
    "draw",
    "pipeline",
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
