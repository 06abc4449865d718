"""Static checks in the default test run: ruff over the tree, mypy over the public API.

Both come with the ``dev`` extra; without them the checks are skipped with the extra to install.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PUBLIC_API = ["smirk_edge/__init__.py", "smirk_edge/options.py", "smirk_edge/pipeline.py", "smirk_edge/results.py",
              "smirk_edge/tracking.py", "smirk_edge/reconstructor.py", "smirk_edge/bundle.py"]


def _tool(module: str) -> list[str]:
    exe = shutil.which(module, path=str(Path(sys.executable).parent))
    if exe:
        return [exe]
    pytest.importorskip(module, reason=f"{module} comes with pip install -e '.[dev]'")
    return [sys.executable, "-m", module]


def test_ruff():
    r = subprocess.run(_tool("ruff") + ["check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


def test_public_api_type_checks():
    pytest.importorskip("mypy", reason="mypy comes with pip install -e '.[dev]'")
    r = subprocess.run([sys.executable, "-m", "mypy", "--ignore-missing-imports", "--follow-imports=silent",
                        "--no-incremental", *PUBLIC_API], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
