"""What an installed package needs for its commands: configs, the default checkpoint, the default bundle."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WHEEL_BUDGET_BYTES = 42_500_000  # the embedded models dominate: the default (~27 MB compressed) and the fast variant (~11 MB)


def test_training_configs_and_default_checkpoint_are_found_by_the_commands(capsys):
    from smirk_edge.cli import main
    from smirk_edge.training.checkpoint import default_checkpoint_path
    from smirk_edge.training.config import configs_dir

    assert {"finetune.yaml", "stage1.yaml", "stage2.yaml", "tiny_stage1.yaml"} <= {p.name for p in configs_dir().glob("*.yaml")}
    assert default_checkpoint_path().is_file()
    with pytest.raises(SystemExit) as exc:
        main(["finetune", "--help"])
    assert exc.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "finetune.yaml" in out and "'default': the default model" in out


@pytest.mark.onnxruntime
def test_selftest_default_checks_the_embedded_bundle(capsys):
    pytest.importorskip("onnxruntime")
    from smirk_edge.export.cli import selftest_main

    assert selftest_main(["default", "--backend", "onnxruntime"]) == 0
    assert "selftest: PASS" in capsys.readouterr().out


@pytest.mark.slow
def test_wheel_carries_what_its_commands_need(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    wheel = next(tmp_path.glob("smirk_edge-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {p.name for p in (REPO / "configs").glob("*.yaml")}
    assert {f"smirk_edge/configs/{c}" for c in configs} <= names
    assert "smirk_edge/assets/full_bundle/encoder.torch.pt" in names  # the full encoder's checkpoint, once
    assert "smirk_edge/assets/full_bundle/manifest.json" in names and "smirk_edge/gltf.py" in names
    assert "smirk_edge/assets/fast_bundle/manifest.json" in names and "smirk_edge/assets/fast_bundle/encoder.onnx" in names
    assert wheel.stat().st_size < WHEEL_BUDGET_BYTES, wheel.stat().st_size
