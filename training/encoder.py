"""The SMIRK encoder for training: the architecture lives in :mod:`smirk_edge.runtimes.torch_encoder`
(the SDK's torch backend runs the same module); this module keeps the training-side import path."""

from smirk_edge.runtimes.torch_encoder import (  # noqa: F401
    N_EXPRESSION, N_EYELID, N_JAW, N_SHAPE, OUTPUT_NAMES, OUTPUT_WIDTHS, EncoderConfig, ExpressionEncoder,
    PoseEncoder, ShapeEncoder, SmirkEncoder)

__all__ = ["N_EXPRESSION", "N_EYELID", "N_JAW", "N_SHAPE", "OUTPUT_NAMES", "OUTPUT_WIDTHS", "EncoderConfig",
           "ExpressionEncoder", "PoseEncoder", "ShapeEncoder", "SmirkEncoder"]
