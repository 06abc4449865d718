"""smirk_edge.training: SMIRK in torch (encoder, face-model layer, checkpoints), training, evaluation,
and the tools that fit a model to data (box calibration, detector recall).

The public entry point is this package's ``__all__``: the torch model of SMIRK and its checkpoints,
for code outside training (``smirk_edge.benchmarks``; the export toolchain builds on the modules
themselves). The model itself lives with the torch backend (``smirk_edge.runtimes.torch_encoder``,
``torch_face_model``); checkpoints are written here. Importing the package loads no torch: each
name is imported on first use.

========================  ================================================================================
name                      what
========================  ================================================================================
``random_encoder``        an encoder with random weights and SMIRK's head initialisation, seeded, eval mode
``load_encoder``          an encoder from a checkpoint in the official layout (``"default"``: the default model's; ``"fast"``, ``"full"``: the embedded one of that variant)
``save_checkpoint``       write an encoder (and generator) in the official flat layout
``SmirkEncoder``          the three encoders: ``image (B, 3, 224, 224)`` in [0, 1] -> dict of parameters
``EncoderConfig``         backbones of the ``full`` (official) and ``tiny`` (test) variants
``OUTPUT_NAMES``          the encoder's outputs in order
``FaceModelLayer``        the face model as a torch module (``from_file(npz)``): vertices and landmarks, metres
``project_ndc``           SMIRK's orthographic camera in torch: model frame -> NDC of the crop
========================  ================================================================================
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["EncoderConfig", "FaceModelLayer", "OUTPUT_NAMES", "SmirkEncoder", "load_encoder", "project_ndc",
           "random_encoder", "save_checkpoint"]

_HOME = {"EncoderConfig": "smirk_edge.runtimes.torch_encoder", "OUTPUT_NAMES": "smirk_edge.runtimes.torch_encoder",
         "SmirkEncoder": "smirk_edge.runtimes.torch_encoder", "random_encoder": "smirk_edge.runtimes.torch_encoder",
         "FaceModelLayer": "smirk_edge.runtimes.torch_face_model", "project_ndc": "smirk_edge.runtimes.torch_face_model",
         "load_encoder": f"{__name__}.checkpoint", "save_checkpoint": f"{__name__}.checkpoint"}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(_HOME[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
