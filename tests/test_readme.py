"""The README's Python blocks run as written, from the repository root (the quickstart promise)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)

pytest.importorskip("onnxruntime", reason="the README's blocks run the default model on ONNX Runtime")
pytestmark = pytest.mark.onnxruntime


def test_the_readme_has_the_quickstart_blocks():
    text = "\n".join(BLOCKS)
    assert len(BLOCKS) >= 4
    for needle in ("smirk_edge.Reconstructor()", "rec.stream(", "open_source(0", "save_mesh(", "smirk_edge.draw("):
        assert needle in text, needle


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs_as_written(index, tmp_path):
    code = BLOCKS[index]
    (ROOT / "out").mkdir(exist_ok=True)  # the README's blocks write into out/ (git-ignored), as command 1 does
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, f"README block {index} failed:\n{code}\n--- stderr ---\n{r.stderr[-3000:]}"
    if "save_mesh(\"out/face.obj\")" in code:
        assert (ROOT / "out" / "face.obj").stat().st_size > 1000 and (ROOT / "out" / "overlay.jpg").is_file()
        assert "(68, 2) (105, 2)" in r.stdout
    if "open_source(\"out/clip.mp4\")" in code:
        lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
        assert len(lines) >= 20, r.stdout  # a face on (nearly) every one of the 25 frames
