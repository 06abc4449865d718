"""``smirk-edge pack``: see :mod:`smirk_edge.training.cli` (light import, argparse only)."""

from .cli import pack_add_arguments as add_arguments, pack_run as run

__all__ = ["add_arguments", "run"]
