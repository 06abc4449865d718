"""ONNX Runtime runner on the tiny model, against the numpy reference."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from runtime_models import make_feed, reference
from smirk_edge.errors import EngineUnavailable, InputError
from smirk_edge.runtimes.base import OptionError, RunnerError
from smirk_edge.runtimes.ort import OrtRunner, ProviderUnavailable, SessionFromOnnx, choose_providers

pytestmark = pytest.mark.onnxruntime


def test_choose_providers_priority_and_explicit():
    avail = ["CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"]
    assert choose_providers(avail) == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(avail, "cuda") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(["CPUExecutionProvider"], ["cpu"]) == ["CPUExecutionProvider"]
    assert choose_providers(["AzureExecutionProvider", "CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    with pytest.raises(ProviderUnavailable, match="CUDAExecutionProvider.*onnxruntime-gpu"):
        choose_providers(["CPUExecutionProvider"], "cuda")
    with pytest.raises(OptionError, match="did you mean 'cuda'"):
        choose_providers(avail, "cudaa")


def test_loader_options_are_checked():
    with pytest.raises(OptionError, match="did you mean 'extended'"):
        SessionFromOnnx("m.onnx", graph_optimization_level="extendd")
    with pytest.raises(OptionError, match="threads must be a positive int"):
        SessionFromOnnx("m.onnx", threads=0)


def test_matches_numpy_reference(tiny_onnx):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    with OrtRunner(SessionFromOnnx(tiny_onnx, threads=1)) as runner:
        for batch in (1, 3):  # dynamic batch
            feed = make_feed(batch, seed=batch)
            out = runner.infer(feed)
            ref = reference(**feed)
            assert list(out) == ["feat", "code"]
            for k in ref:
                np.testing.assert_allclose(out[k], ref[k], rtol=1e-5, atol=1e-5)
        assert runner.device == "cpu" and runner.providers[-1] == "CPUExecutionProvider"
        assert runner.last_inference_time() > 0


def test_metadata(tiny_onnx):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    with OrtRunner(tiny_onnx) as runner:  # a path works too
        ins = {m.name: m for m in runner.get_input_metadata()}
        outs = {m.name: m for m in runner.get_output_metadata()}
    assert ins["image"].shape == ("N", 3, 8, 8) and ins["image"].dtype == np.float32
    assert ins["vec"].shape == ("N", 6)
    assert outs["feat"].shape == ("N", 4, 8, 8) and outs["code"].shape == ("N", 5)


def test_thread_and_optimisation_options_reach_the_session(tiny_onnx):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    loader = SessionFromOnnx(tiny_onnx, providers="cpu", threads=1, inter_op_threads=2,
                             graph_optimization_level="basic", execution_mode="parallel")
    with OrtRunner(loader) as runner:
        opts = runner.session.get_session_options()
        assert opts.intra_op_num_threads == 1 and opts.inter_op_num_threads == 2
        assert "BASIC" in str(opts.graph_optimization_level)
        runner.infer(make_feed())


def test_feed_errors_before_the_engine(tiny_onnx):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    with OrtRunner(tiny_onnx) as runner:
        with pytest.raises(InputError, match="dimension 1 must be 3"):
            runner.infer({"image": np.zeros((1, 1, 8, 8), np.float32), "vec": np.zeros((1, 6), np.float32)})


def test_missing_and_broken_files(tmp_path, broken_onnx):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    with pytest.raises(RunnerError, match="not found"):
        OrtRunner(tmp_path / "absent.onnx").activate()
    runner = OrtRunner(broken_onnx)
    with pytest.raises(Exception):
        runner.activate()
    assert not runner.is_active


def test_missing_onnxruntime_names_the_extra(monkeypatch, tiny_onnx):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(EngineUnavailable, match=r'the "onnxruntime" extra'):
        OrtRunner(tiny_onnx).activate()


def test_non_contiguous_inputs(tiny_onnx):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    feed = make_feed(2)
    strided = {"image": np.asfortranarray(feed["image"]), "vec": np.repeat(feed["vec"], 2, axis=0)[::2]}
    with OrtRunner(tiny_onnx) as runner:
        out = runner.infer(strided)
    for k, v in reference(**feed).items():
        np.testing.assert_allclose(out[k], v, rtol=1e-5, atol=1e-5)
