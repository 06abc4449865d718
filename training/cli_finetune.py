"""``smirk-edge finetune``: see :mod:`smirk_edge.training.cli` (light import, argparse only)."""

from .cli import finetune_add_arguments as add_arguments, finetune_run as run

__all__ = ["add_arguments", "run"]
