"""Run the GPU benchmarks from a plain repository checkout (nothing installed, no network).

``python benchmarks/gpu_entry.py [--quick] [--out DIR]`` (or ``benchmarks/gpu_entry.sh``).

The repository maps its top-level folders ``runtimes/``, ``export/``, ``training/`` and
``benchmarks/`` into the ``smirk_edge`` namespace with setuptools' ``package-dir``; an installed
(editable) smirk-edge resolves them. On a machine where smirk-edge is not installed,
:func:`bootstrap` puts the repository root first on ``sys.path`` (so ``smirk_edge`` is this
checkout's core package) and registers each mapped folder as ``smirk_edge.<name>`` from its
``__init__.py``, exactly what the package-dir mapping does. Nothing is written outside ``--out``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAPPED = {"runtimes": "runtimes", "export": "export", "training": "training", "benchmarks": "benchmarks"}


def bootstrap() -> str:
    """Make ``smirk_edge.*`` importable from this checkout; returns how (``installed`` or ``path-mapped``)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import smirk_edge

    if Path(smirk_edge.__file__).resolve().parent != REPO / "smirk_edge":
        # another smirk_edge shadows this checkout: drop it and import ours
        for name in [m for m in sys.modules if m == "smirk_edge" or m.startswith("smirk_edge.")]:
            del sys.modules[name]
        sys.path.insert(0, str(REPO))
        import smirk_edge  # noqa: F811
    how = "installed"
    for sub, folder in MAPPED.items():
        name = f"smirk_edge.{sub}"
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is not None and spec.origin and Path(spec.origin).resolve().parent == REPO / folder:
            continue
        init = REPO / folder / "__init__.py"
        if not init.is_file():
            continue
        spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(REPO / folder)])
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        setattr(smirk_edge, sub, mod)
        how = "path-mapped"
    return how


def main(argv: list[str] | None = None) -> int:
    bootstrap()
    from smirk_edge.benchmarks.gpu import main as gpu_main

    return gpu_main(argv)


if __name__ == "__main__":
    sys.exit(main())
