"""OpenVINO runner on the tiny model: parity, the f32 precision hint, IR files, batch reshaping."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from runtime_models import make_feed, reference
from smirk_edge.errors import EngineUnavailable, InputError
from smirk_edge.runtimes.base import OptionError
from smirk_edge.runtimes.ov import CompiledModelFromFile, OvRunner, ov_config

pytestmark = pytest.mark.openvino


def test_config_is_explicit():
    assert ov_config("CPU", "fp32", "LATENCY", threads=1) == {
        "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": "1"}
    assert ov_config("GPU.1", "fp16", "THROUGHPUT")["INFERENCE_PRECISION_HINT"] == "f16"
    assert "INFERENCE_PRECISION_HINT" not in ov_config("CPU", None)  # device default (bf16 on AMX CPUs)
    with pytest.raises(OptionError, match="did you mean 'LATENCY'"):
        ov_config("CPU", "fp32", "LATENCYY")
    with pytest.raises(OptionError, match="did you mean 'NPU'"):
        ov_config("NPUU")
    with pytest.raises(OptionError, match=".onnx or .xml"):
        CompiledModelFromFile("model.bin")


def test_matches_numpy_reference_and_sets_f32(tiny_onnx):
    ov = pytest.importorskip("openvino", reason="openvino is not installed")
    with OvRunner(CompiledModelFromFile(tiny_onnx, precision="fp32", threads=1)) as runner:
        for batch in (1, 4):
            feed = make_feed(batch, seed=batch)
            out, ref = runner.infer(feed), reference(**feed)
            assert set(out) == {"feat", "code"}
            for k in ref:
                np.testing.assert_allclose(out[k], ref[k], rtol=1e-5, atol=1e-5)
        # the compiled model really runs in f32 (this CPU would otherwise pick bf16)
        assert runner.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32
        assert int(runner.get_property("INFERENCE_NUM_THREADS")) == 1
        assert "LATENCY" in str(runner.get_property("PERFORMANCE_HINT"))
        assert runner.device == "CPU" and runner.last_inference_time() > 0


def test_metadata_and_ir(tiny_onnx, tmp_path):
    ov = pytest.importorskip("openvino", reason="openvino is not installed")
    xml = tmp_path / "tiny.xml"
    ov.save_model(ov.Core().read_model(str(tiny_onnx)), str(xml), compress_to_fp16=False)
    with OvRunner(xml) as runner:
        ins = {m.name: m for m in runner.get_input_metadata()}
        outs = {m.name: m for m in runner.get_output_metadata()}
        assert ins["image"].shape == (None, 3, 8, 8) and ins["vec"].dtype == np.float32
        assert outs["feat"].shape == (None, 4, 8, 8)
        feed = make_feed(2)
        np.testing.assert_allclose(runner.infer(feed)["code"], reference(**feed)["code"], rtol=1e-5, atol=1e-5)


def test_batch_reshape(tiny_onnx):
    pytest.importorskip("openvino", reason="openvino is not installed")
    with OvRunner(CompiledModelFromFile(tiny_onnx, batch=2, performance_hint="THROUGHPUT")) as runner:
        assert runner.get_input_metadata()[0].shape == (2, 3, 8, 8)
        runner.infer(make_feed(2))
        with pytest.raises(InputError, match="dimension 0 must be 2"):
            runner.infer(make_feed(3))
    with OvRunner(CompiledModelFromFile(tiny_onnx, batch=-1)) as runner:
        assert runner.get_input_metadata()[0].shape[0] is None
        runner.infer(make_feed(5))


def test_auto_device(tiny_onnx):
    pytest.importorskip("openvino", reason="openvino is not installed")
    with OvRunner(CompiledModelFromFile(tiny_onnx, device="AUTO")) as runner:
        feed = make_feed(1)
        np.testing.assert_allclose(runner.infer(feed)["feat"], reference(**feed)["feat"], rtol=1e-5, atol=1e-5)


def test_missing_openvino_names_the_extra(monkeypatch, tiny_onnx):
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(EngineUnavailable, match=r'the "openvino" extra'):
        OvRunner(tiny_onnx).activate()


def test_non_contiguous_inputs(tiny_onnx):
    pytest.importorskip("openvino", reason="openvino is not installed")
    feed = make_feed(2)
    strided = {"image": np.asfortranarray(feed["image"]), "vec": np.repeat(feed["vec"], 2, axis=0)[::2]}
    assert not strided["image"].flags.c_contiguous and not strided["vec"].flags.c_contiguous
    with OvRunner(tiny_onnx) as runner:
        out = runner.infer(strided)
    for k, v in reference(**feed).items():
        np.testing.assert_allclose(out[k], v, rtol=1e-5, atol=1e-5)


def test_output_names_are_the_models_own_after_compilation():
    """OpenVINO may give a compiled port extra internal names ('flat_353' beside 'regressors');
    the runner must report the model's names."""
    from smirk_edge.detector import model_path
    from smirk_edge.runtimes.ov import OvRunner

    with OvRunner(model_path("full")) as r:
        assert [m.name for m in r.get_output_metadata()] == ["regressors", "classificators"]
        out = r.infer({"input": np.zeros((1, 3, 192, 192), np.float32)})
        assert sorted(out) == ["classificators", "regressors"]
