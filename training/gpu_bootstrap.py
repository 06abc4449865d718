"""Run smirk-edge from a plain repository checkout, without installing it.

The repository maps top-level folders into the ``smirk_edge`` namespace (``training/`` is
``smirk_edge.training``, see pyproject's ``package-dir``), so ``import smirk_edge.training`` fails
from a bare checkout. This script registers the mapped packages by path and then runs a module::

    python training/gpu_bootstrap.py -m smirk_edge.training.cli train --config configs/gpu_stage1.yaml
    torchrun --standalone --nproc_per_node 8 training/gpu_bootstrap.py -m smirk_edge.training.cli train ...

Standard library only; used by ``training/gpu_run.sh`` when ``pip install -e .`` is not possible.
"""

import importlib.util
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAPPED = {"smirk_edge.runtimes": "runtimes", "smirk_edge.export": "export", "smirk_edge.training": "training",
          "smirk_edge.benchmarks": "benchmarks"}


def install() -> None:
    """Make ``smirk_edge`` and its mapped subpackages importable from :data:`ROOT`."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import smirk_edge

    for name, folder in MAPPED.items():
        if name in sys.modules:
            continue
        init = ROOT / folder / "__init__.py"
        if not init.is_file():
            continue
        spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(ROOT / folder)])
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        setattr(smirk_edge, name.rsplit(".", 1)[1], mod)


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2 or argv[0] != "-m":
        raise SystemExit("usage: python training/gpu_bootstrap.py -m MODULE [ARGS...]")
    install()
    module = argv[1]
    sys.argv = [module] + argv[2:]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
