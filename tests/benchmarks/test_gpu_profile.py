"""benchmarks/gpu_profile.py off a GPU: --help works and a machine without CUDA exits 0 with one line."""

from __future__ import annotations

import subprocess
import sys

from smirk_edge._lazy import available
from smirk_edge.benchmarks import gpu_profile


def test_help_runs_as_a_module():
    r = subprocess.run([sys.executable, "-m", "smirk_edge.benchmarks.gpu_profile", "--help"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "--out" in r.stdout and "--calls" in r.stdout


def test_without_cuda_it_says_so_and_exits_0(tmp_path, monkeypatch, capsys):
    if available("torch"):
        import torch

        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_profile.main(["--out", str(tmp_path / "prof")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_profile: ") and "nothing profiled" in lines[0]
    assert not (tmp_path / "prof").exists()


def test_unknown_mode_is_refused(tmp_path):
    assert gpu_profile.main(["--out", str(tmp_path), "--modes", "image,movie"]) == 2


def test_the_720p_frame_holds_the_portrait():
    frame = gpu_profile.frame_720p()
    assert frame.shape == (720, 1280, 3) and frame.dtype.name == "uint8" and frame.max() > 0
