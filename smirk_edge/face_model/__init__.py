"""FLAME-format face models: file format, numpy decoder, converters, the shipped stand-in."""

from __future__ import annotations

from .format import (FORMAT_VERSION, MEDIAPIPE_105_INDICES, N_EXPRESSION, N_SHAPE, SPEC, STANDIN_FILE, load_arrays,
                     save, standin_path, validate)
from .model import FaceGeometry, FaceModel, rodrigues

__all__ = ["FaceModel", "FaceGeometry", "rodrigues", "load_arrays", "save", "validate", "SPEC",
           "FORMAT_VERSION", "MEDIAPIPE_105_INDICES", "N_SHAPE", "N_EXPRESSION", "STANDIN_FILE", "standin_path"]
