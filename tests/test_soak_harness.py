"""The soak harness itself works (a short run); the long run's figures are in docs/hardening.md."""

import json

import pytest

pytest.importorskip("torch", reason="building the test bundle needs torch")
pytest.importorskip("onnxruntime", reason="needs onnxruntime")

from factories import make_tiny_bundle  # noqa: E402
from smirk_edge.benchmarks import soak  # noqa: E402


def test_short_soak(tmp_path, shared_data):
    b, _ = make_tiny_bundle(tmp_path / "b")
    out = tmp_path / "soak.json"
    photos = [str(p) for p in sorted((shared_data / "photos").glob("*.jpg"))[:2]]
    code = soak.main(["--bundle", str(b.root), "--images", *photos, "--frames", "60", "--bad-every", "20",
                      "--sample-every", "10", "--warmup", "20", "--backend", "onnxruntime", "-o", str(out)])
    report = json.loads(out.read_text())
    assert report["bad_frames_injected"] == 3 and report["bad_frames_reported"] == 3
    assert report["faces"] > 0 and len(report["samples"]) >= 6
    assert code in (0, 1)  # RSS growth over 60 frames is not meaningful; the long run judges it
