"""The torch backend on a CUDA GPU with the default model: landmarks within 0.05 px of ONNX Runtime
fp32 (CPU) at fp32 on real photos, the golden crops through the gate at fp16, and the video and
batch paths. Skips without a CUDA GPU (``python -m pytest -m gpu``)."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch not installed (pip install 'smirk-edge[torch]')")
pytest.importorskip("timm", reason="timm not installed (pip install 'smirk-edge[torch]')")
pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install 'smirk-edge[onnxruntime]')")
if not torch.cuda.is_available():
    pytest.skip("no CUDA GPU here (torch.cuda.is_available() is False)", allow_module_level=True)

pytestmark = [pytest.mark.gpu, pytest.mark.torch]


def _photos(limit: int = 24) -> list[np.ndarray]:
    from smirk_edge.benchmarks.stress_sheet import example_photo

    out = [cv2.imread(str(example_photo()), cv2.IMREAD_COLOR)]
    root = Path(os.environ.get("SMIRK_EDGE_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
    afw = root / "landmarks68" / "afw"
    for p in sorted(afw.glob("*.jpg"))[:limit] if afw.is_dir() else []:
        out.append(cv2.imread(str(p), cv2.IMREAD_COLOR))
    return out


@pytest.fixture(scope="module")
def recs():
    from smirk_edge import Reconstructor

    ref = Reconstructor(backend="onnxruntime", precision="fp32", refine=False)
    fp32 = Reconstructor(backend="torch", device="cuda", precision="fp32", refine=False)
    yield ref, fp32
    ref.close()
    fp32.close()


def test_cuda_fp32_landmarks_within_0_05_px_of_onnxruntime(recs):
    ref, fp32 = recs
    worst, n = 0.0, 0
    for img in _photos():
        a, b = ref(img), fp32(img)
        assert len(a) == len(b)
        for fa, fb in zip(a, b):
            worst = max(worst, float(np.abs(fa.landmarks68 - fb.landmarks68).max()),
                        float(np.abs(fa.landmarks105 - fb.landmarks105).max()))
            n += 1
    assert n >= 1 and worst <= 0.05, f"worst landmark difference {worst:.4f} px over {n} faces"


def test_cuda_fp16_passes_the_gate_on_the_golden_crops():
    from smirk_edge.export.golden import selftest, selftest_verdict
    from smirk_edge.reconstructor import default_bundle_path

    rows = selftest(default_bundle_path(), backend="torch", device="cuda", precision="fp16")
    assert rows and selftest_verdict(rows), [(r.name, r.metrics, r.failures) for r in rows]


def test_cuda_batch_and_stream(recs):
    from smirk_edge import Reconstructor

    img = _photos(0)[0]
    with Reconstructor(backend="torch", device="cuda") as rec:
        from smirk_edge.runtimes.onnx_torch import OnnxTorchRunner

        assert all(isinstance(r, OnnxTorchRunner) and r.device.startswith("cuda") for r in rec.detector.runners.values())
        single = rec(img)
        got = rec.batch([img] * 5)
        assert [len(r) for r in got] == [len(single)] * 5
        # The detector's batch of 5 and its batch of 1 differ in float rounding (~1e-3 px in the box on
        # the H200); the crop's levels are rounded to integers as uint8 crops are, so a sub-millipixel
        # shift flips a few pixels by one level, which moves the landmarks by up to ~0.03 px on the CPU
        # (tests/test_pipeline_continuity.py) and measured 0.055 px here. A refine decision that
        # flipped, or another box, would differ by whole pixels: the box is held to 0.01 px.
        for r in got:
            box = float(np.abs(r[0].box - single[0].box).max())
            msg = (f"batch vs single: box {box:.4f} px, crop matrix "
                   f"{np.abs(r[0].crop_matrix - single[0].crop_matrix).max():.2e}, landmarks "
                   f"{np.abs(r[0].landmarks68 - single[0].landmarks68).max():.4f} px")
            assert box <= 0.01, msg
            np.testing.assert_allclose(r[0].landmarks68, single[0].landmarks68, atol=0.1, err_msg=msg)
        frames = list(rec.stream([img] * 6))
        assert all(len(f) == 1 for f in frames) and not any(f.errors for f in frames)
