"""smirk-edge: SMIRK 3D face reconstruction on edge inference engines.

``import smirk_edge`` needs numpy and OpenCV only; engines, torch and the training and export
code are imported lazily when used.
"""

from __future__ import annotations

from ._version import __version__
from .errors import (BundleError, CheckpointError, EngineUnavailable, FaceModelError, InputError, OptionError,
                     RunnerError, SmirkEdgeError, UnsafeFileError)
from .face_model import FaceGeometry, FaceModel

__all__ = [
    "__version__",
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
