"""The FLAME-format face model as a torch module for training: it lives in
:mod:`smirk_edge.runtimes.torch_face_model` (the SDK's torch backend decodes with the same module);
this module keeps the training-side import path."""

from smirk_edge.runtimes.torch_face_model import FaceModelLayer, batch_rodrigues, project_ndc, yaw_bin  # noqa: F401

__all__ = ["FaceModelLayer", "batch_rodrigues", "project_ndc", "yaw_bin"]
