"""Run the GPU benchmarks from a plain repository checkout (nothing installed, no network).

``python benchmarks/gpu_entry.py [--quick] [--out DIR]`` (or ``benchmarks/gpu_entry.sh``).

The repository maps its top-level folders ``runtimes/``, ``export/``, ``training/`` and
``benchmarks/`` into the ``smirk_edge`` namespace with setuptools' ``package-dir``; an installed
(editable) smirk-edge resolves them. On a machine where smirk-edge is not installed,
:func:`bootstrap` uses ``training/gpu_bootstrap.py`` to register each mapped folder as
``smirk_edge.<name>``, exactly what the package-dir mapping does. Nothing is written outside ``--out``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def bootstrap() -> None:
    """Make ``smirk_edge.*`` importable from this checkout with training/gpu_bootstrap.py's mapping."""
    spec = importlib.util.spec_from_file_location("_smirk_edge_bootstrap", REPO / "training" / "gpu_bootstrap.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.install()


def main(argv: list[str] | None = None) -> int:
    bootstrap()
    from smirk_edge.benchmarks.gpu import main as gpu_main

    return gpu_main(argv)


if __name__ == "__main__":
    sys.exit(main())
