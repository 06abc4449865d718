"""``smirk-edge evaluate``: see :mod:`smirk_edge.training.cli` (light import, argparse only)."""

from .cli import evaluate_add_arguments as add_arguments, evaluate_run as run

__all__ = ["add_arguments", "run"]
