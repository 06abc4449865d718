"""``smirk-edge train``: see :mod:`smirk_edge.training.cli` (light import, argparse only)."""

from .cli import train_add_arguments as add_arguments, train_run as run

__all__ = ["add_arguments", "run"]
