"""FLAME-format face models: file format, numpy decoder, converters, the shipped stand-in."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from .format import (FORMAT_VERSION, MEDIAPIPE_105_INDICES, N_EXPRESSION, N_SHAPE, SPEC, load_arrays,
                     save, validate)
from .model import FaceGeometry, FaceModel, rodrigues

STANDIN_FILE = "standin_face_model.npz"


def standin_path() -> Path:
    """Path of the stand-in face model shipped in ``smirk_edge/assets`` (see its NOTICE)."""
    return Path(str(resources.files("smirk_edge.assets").joinpath(STANDIN_FILE)))


__all__ = ["FaceModel", "FaceGeometry", "rodrigues", "load_arrays", "save", "validate", "SPEC",
           "FORMAT_VERSION", "MEDIAPIPE_105_INDICES", "N_SHAPE", "N_EXPRESSION", "standin_path"]
