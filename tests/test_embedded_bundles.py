"""The embedded models: the default (``Reconstructor()``, the distilled ``fast`` encoder) and the full
encoder (``Reconstructor(variant="full")``): what ships, that it is intact, that both reconstruct a
real photo alike, and how ``variant=`` is checked."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

from smirk_edge.bundle import Bundle
from smirk_edge.errors import OptionError
from smirk_edge.options import ReconstructorOptions
from smirk_edge.reconstructor import DEFAULT_VARIANT, bundle_variant, default_bundle_path

MAX_BYTES = 16 * 1000 * 1000  # without its torch artifact (15.4 MB: about half the default bundle)
TORCH_BYTES = 4 * 1000 * 1000


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    return Bundle(default_bundle_path("fast"))


def test_fast_bundle_is_complete_intact_small_and_gated(bundle):
    bundle.verify_all()
    root = default_bundle_path("fast")
    total = sum(p.stat().st_size for p in root.iterdir() if p.is_file() and p.name != "encoder.torch.pt")
    assert total < MAX_BYTES, f"fast bundle is {total / 1e6:.1f} MB without its torch artifact"
    assert (root / "encoder.torch.pt").stat().st_size < TORCH_BYTES
    assert DEFAULT_VARIANT == "fast" and default_bundle_path() == root  # the default model is the fast one
    assert bundle_variant(bundle) == "fast" and bundle_variant(Bundle(default_bundle_path("full"))) == "full"
    have = {(a.kind, a.role, a.precision) for a in bundle.artifacts}
    for need in [("onnx", "encoder", "fp32"), ("onnx", "fused", "int8"), ("torch-checkpoint", "encoder", "fp32"),
                 ("golden", "golden", None), ("model-card", "model_card", None)]:
        assert need in have, need
    for a in bundle.artifacts:
        acc = a.attrs.get("accuracy")
        if acc is not None:
            assert acc["passed"] and not a.attrs.get("degraded") and acc["crops"] >= 200, (a.name, acc)
    card = (root / "MODEL_CARD.md").read_text()
    for needle in ("non-commercial research only", "## Evaluation", "## Known failure cases", "# Export",
                   "smirk-edge-fast-v6", "smirk-edge-default-v5"):
        assert needle in card, needle


def test_the_default_and_the_full_model_reconstruct_the_astronaut_alike(astronaut):
    pytest.importorskip("onnxruntime")
    from smirk_edge import Reconstructor

    fast = Reconstructor(backend="onnxruntime", refine=False)
    assert fast.variant == "fast" and fast.bundle.root == default_bundle_path("fast")
    full = Reconstructor(variant="full", backend="onnxruntime", refine=False)
    assert full.variant == "full" and full.bundle.root == default_bundle_path("full")
    # what records name (the summaries of smirk-edge reconstruct): two different checkpoints
    assert fast.model["variant"] == "fast" and full.model["variant"] == "full"
    shas = {fast.model["checkpoint_sha256"], full.model["checkpoint_sha256"]}
    assert len(shas) == 2 and all(len(h) == 64 for h in shas)
    a, b = fast(astronaut), full(astronaut)
    assert len(a) == 1 and len(b) == 1
    lm = a[0].landmarks68
    x0, y0 = lm.min(0)
    x1, y1 = lm.max(0)
    assert 140 < x0 < 200 and 260 < x1 < 320 and 20 < y0 < 90 and 160 < y1 < 215, (x0, y0, x1, y1)
    d = np.linalg.norm(lm - b[0].landmarks68, axis=1)
    # two models, both accurate: within a few pixels of each other on a face ~130 px wide
    assert d.mean() < 4.0, d.mean()


@pytest.mark.parametrize("variant", ["fast", "full"])
def test_every_engine_passes_the_golden_check_of_the_embedded_bundles(variant):
    from smirk_edge.export.golden import selftest, selftest_verdict

    ran = 0
    for engine in ("onnxruntime", "openvino"):
        if importlib.util.find_spec(engine) is None:
            continue
        rows = selftest(default_bundle_path(variant), backend=engine)
        assert rows and selftest_verdict(rows), [(r.name, r.failures) for r in rows]
        ran += 1
    if not ran:
        pytest.skip("neither ONNX Runtime nor OpenVINO is installed")


def test_variant_must_match_a_given_bundle(tmp_path):
    from smirk_edge import Reconstructor

    with pytest.raises(OptionError, match=r"variant='fast' was asked for, but bundle .* holds the 'full' encoder"):
        Reconstructor(default_bundle_path("full"), variant="fast")
    with pytest.raises(OptionError, match=r"variant='full' was asked for, but bundle .* holds the 'fast' encoder"):
        Reconstructor(default_bundle_path(), variant="full")
    with pytest.raises(OptionError, match="no embedded model of variant 'mesh'"):
        Reconstructor(variant="mesh")
    with pytest.raises(OptionError, match="variant"):
        ReconstructorOptions(variant="huge")


def test_selftest_cli_takes_the_embedded_full_bundle():
    pytest.importorskip("onnxruntime")
    out = subprocess.run([sys.executable, "-m", "smirk_edge", "selftest", "full", "--backend", "onnxruntime",
                          "--json"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = json.loads(out.stdout[out.stdout.index("["):out.stdout.rindex("]") + 1])
    assert rows and all(r["passed"] for r in rows if r.get("applies", True))


def test_variant_fast_on_the_torch_backend_matches_onnx_runtime(astronaut):
    """The shared-backbone layout through the torch stages (one branch instead of three; on the CPU
    here, CUDA on the GPU machine) gives ONNX Runtime's landmarks within the fp16 weights' rounding."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("torch")
    from smirk_edge import Reconstructor

    a = Reconstructor(variant="fast", backend="torch", refine=False, threads=1)
    b = Reconstructor(variant="fast", backend="onnxruntime", refine=False, threads=1)
    assert a.engine.startswith("torch") and a.variant == "fast"
    fa, fb = a(astronaut), b(astronaut)
    assert len(fa) == len(fb) == 1
    d = np.linalg.norm(fa[0].landmarks68 - fb[0].landmarks68, axis=1)
    assert d.max() < 0.25, d.max()  # encoder.torch.pt stores fp16 weights (gate: 0.018 px mean on crops)
