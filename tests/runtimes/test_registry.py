"""The engine table, selection, make_runner and activation with fallback."""

from __future__ import annotations

import inspect
import subprocess
import sys
import warnings

import numpy as np
import pytest

from runtime_models import make_feed, reference
from smirk_edge.errors import EngineUnavailable
from smirk_edge.runtimes import registry
from smirk_edge.runtimes.base import OptionError, RunnerError
from smirk_edge.runtimes.registry import (ENGINES, Artifact, EngineFallbackWarning, available_engines, make_runner,
                                          open_with_fallback, select_engine)

BUNDLE = [Artifact("onnx", "fp32", "encoder.onnx"), Artifact("onnx", "int8", "encoder.int8.onnx"),
          Artifact("openvino-ir", "fp32", "encoder.xml"), Artifact("openvino-ir", "int8", "encoder.int8.xml"),
          Artifact("tensorrt-engine", "fp16", "encoder.h100.sm90.trt10.3.0.fp16.engine")]


def test_table_is_consistent():
    assert set(ENGINES) == {"onnxruntime", "openvino", "tensorrt", "torch"}
    assert len({s.speed_rank for s in ENGINES.values()}) == len(ENGINES)
    for spec in ENGINES.values():
        assert spec.extra in ("onnxruntime", "openvino", "tensorrt", "torch")
        if spec.options:  # the options listed are exactly what the runner's from_artifact takes
            cls = registry._runner_class(spec)
            params = set(inspect.signature(cls.from_artifact).parameters) - {"path"}
            assert params == set(spec.options), spec.name


def test_available_engines_imports_nothing():
    code = ("import sys, smirk_edge.runtimes as r; names = r.available_engines(); "
            "heavy = [m for m in ('onnxruntime', 'openvino', 'tensorrt', 'torch', 'onnx') if m in sys.modules]; "
            "print(heavy, names)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    heavy, names = out.split("] ")
    assert heavy == "["  # no engine imported by importing the package or listing engines
    ranks = [ENGINES[n].speed_rank for n in available_engines()]
    assert ranks == sorted(ranks)


def test_auto_picks_the_fastest_installed_engine_with_an_artifact():
    sel = select_engine(BUNDLE, installed=["tensorrt", "openvino", "onnxruntime"])
    assert sel.engine == "tensorrt" and sel.artifact.kind == "tensorrt-engine"
    sel = select_engine(BUNDLE, installed=["openvino", "onnxruntime"])
    assert (sel.engine, sel.artifact.path) == ("onnxruntime", "encoder.onnx")  # ONNX Runtime first, fp32 first
    assert "fastest available engine" in sel.reason and "skipped tensorrt (not installed" in sel.reason
    assert 'the "tensorrt" extra' in sel.reason
    assert sel.alternatives[0] == ("onnxruntime", Artifact("onnx", "int8", "encoder.int8.onnx"))
    assert sel.alternatives[1] == ("openvino", Artifact("openvino-ir", "fp32", "encoder.xml"))  # IR preferred there
    sel = select_engine(BUNDLE, installed=["openvino"])
    assert (sel.engine, sel.artifact.path) == ("openvino", "encoder.xml")


def test_precision_and_device_filters():
    sel = select_engine(BUNDLE, precision="int8", installed=["openvino", "onnxruntime", "tensorrt"])
    assert (sel.engine, sel.artifact.path) == ("onnxruntime", "encoder.int8.onnx")
    sel = select_engine(BUNDLE, precision="int8", device="npu", installed=["openvino", "onnxruntime"])
    assert (sel.engine, sel.artifact.path) == ("openvino", "encoder.int8.xml")  # only OpenVINO opens an NPU
    sel = select_engine(BUNDLE, device="cpu", installed=["tensorrt", "onnxruntime"])
    assert sel.engine == "onnxruntime" and "tensorrt (does not run on 'cpu')" in sel.reason
    sel = select_engine(BUNDLE, device="cuda:0", installed=["onnxruntime", "openvino"])
    assert sel.engine == "onnxruntime"
    only_onnx = [Artifact("onnx", "fp32", "e.onnx")]
    assert select_engine(only_onnx, installed=["tensorrt", "openvino"]).engine == "openvino"
    with pytest.raises(RunnerError, match=r"no engine can open.*onnx/fp32.*tensorrt \(no artifact it opens\)"):
        select_engine(only_onnx, installed=["tensorrt", "torch"])


def test_explicit_preference():
    sel = select_engine(BUNDLE, preferred="onnxruntime", installed=["openvino", "onnxruntime"])
    assert sel.engine == "onnxruntime" and "asked for" in sel.reason
    with pytest.raises(EngineUnavailable, match=r'TensorRT 10 is not available.*the "tensorrt" extra'):
        select_engine(BUNDLE, preferred="tensorrt", installed=["onnxruntime"])
    with pytest.raises(OptionError, match="did you mean 'openvino'"):
        select_engine(BUNDLE, preferred="openvn")


def test_artifact_records_are_duck_typed():
    class Rec:
        kind, precision, path = "onnx", "fp32", "x.onnx"

    sel = select_engine([Rec()], installed=["onnxruntime"])
    assert sel.artifact == Artifact("onnx", "fp32", "x.onnx")


def test_make_runner_rejects_unknown_options_with_a_hint(tiny_onnx):
    with pytest.raises(OptionError, match=r"'thread' \(did you mean 'threads'\?\)"):
        make_runner("onnxruntime", tiny_onnx, thread=1)
    with pytest.raises(OptionError, match=r"'threds' \(did you mean 'threads'\?\)"):
        make_runner("openvino", tiny_onnx, threds=1)
    with pytest.raises(OptionError, match="did you mean 'onnxruntime'"):
        make_runner("onnxruntim", tiny_onnx)
    with pytest.raises(OptionError, match=r"'cuda_graph' \(did you mean 'cuda_graphs'\?\)"):
        make_runner("torch", "encoder.torch.pt", cuda_graph=True)


@pytest.mark.onnxruntime
@pytest.mark.openvino
@pytest.mark.parametrize("engine, options", [("onnxruntime", {"threads": 1, "providers": "cpu"}),
                                             ("openvino", {"threads": 1, "device": "CPU"})])
def test_make_runner_runs(engine, options, tiny_onnx):
    pytest.importorskip(engine, reason=f"{engine} is not installed")
    with make_runner(engine, tiny_onnx, **options) as runner:
        assert runner.engine == engine and runner.name == f"{engine}:tiny.onnx"
        feed = make_feed(2)
        np.testing.assert_allclose(runner.infer(feed)["code"], reference(**feed)["code"], rtol=1e-5, atol=1e-5)


@pytest.mark.onnxruntime
def test_fallback_warns_once_and_reports_which_ran(tiny_onnx, broken_onnx, monkeypatch):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")

    def no_tensorrt():
        raise EngineUnavailable("TensorRT 10", "tensorrt")

    candidates = [no_tensorrt, lambda: make_runner("onnxruntime", broken_onnx),
                  lambda: make_runner("onnxruntime", tiny_onnx, threads=1)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = open_with_fallback(candidates)
    fallback = [w for w in caught if issubclass(w.category, EngineFallbackWarning)]
    assert len(fallback) == 1
    text = str(fallback[0].message)
    assert "fell back to onnxruntime:tiny.onnx" in text and 'the "tensorrt" extra' in text
    assert "onnxruntime:broken.onnx failed" in text
    assert result.index == 2 and len(result.failures) == 2 and result.runner.is_active
    result.runner.deactivate()


@pytest.mark.onnxruntime
def test_no_warning_when_the_first_works_and_error_when_none_does(tiny_onnx, broken_onnx):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = open_with_fallback([make_runner("onnxruntime", tiny_onnx)])
    assert result.index == 0 and result.failures == []
    result.runner.deactivate()
    with pytest.raises(RunnerError, match="no engine could be started.*broken.onnx"):
        open_with_fallback([make_runner("onnxruntime", broken_onnx)])
    with pytest.raises(RunnerError, match="at least one candidate"):
        open_with_fallback([])


def test_int8_artifacts_run_only_on_the_engine_they_were_gated_on():
    from smirk_edge.bundle import Artifact
    from smirk_edge.runtimes.base import RunnerError
    from smirk_edge.runtimes.registry import gated_for_engine, select_engine

    int8 = Artifact("onnx", "int8", "encoder.int8.onnx", attrs={"accuracy": {"engine": "onnxruntime", "passed": True}})
    fp32 = Artifact("onnx", "fp32", "encoder.onnx", attrs={"accuracy": {"engine": "onnxruntime", "passed": True}})
    assert gated_for_engine(int8, "onnxruntime") and not gated_for_engine(int8, "openvino")
    assert gated_for_engine(fp32, "openvino")  # float graphs run anywhere
    assert gated_for_engine(Artifact("onnx", "int8", "x.onnx"), "openvino")  # no gate engine recorded
    sel = select_engine([fp32, int8], "openvino", None, installed={"openvino", "onnxruntime"})
    assert sel.artifact.path == "encoder.onnx"
    with pytest.raises(RunnerError):
        select_engine([int8], "openvino", "int8", installed={"openvino"})
    assert select_engine([fp32, int8], "auto", "int8", installed={"openvino", "onnxruntime"}).engine == "onnxruntime"


def test_onnxruntime_gpu_providers_from_the_sdk_device():
    from smirk_edge.runtimes.ort import ProviderUnavailable, choose_providers
    from smirk_edge.runtimes.registry import ENGINES

    ort = ENGINES["onnxruntime"]
    assert ort.runner_options(None, "cuda") == {"providers": "cuda"}
    assert ort.runner_options(2, "tensorrt") == {"threads": 2, "providers": ["tensorrt", "cuda"]}
    assert ort.runner_options(None, None) == {}
    gpu_build = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(gpu_build, ["tensorrt", "cuda"]) == gpu_build
    with pytest.raises(ProviderUnavailable, match="onnxruntime-gpu"):
        choose_providers(["CPUExecutionProvider"], ["tensorrt", "cuda"])


@pytest.mark.onnxruntime
def test_reconstructor_on_onnxruntime_cuda_without_onnxruntime_gpu_says_what_to_install():
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install 'smirk-edge[onnxruntime]')")
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    from smirk_edge import Reconstructor
    from smirk_edge.runtimes.base import RunnerError

    for device in ("cuda", "tensorrt"):
        with pytest.raises(RunnerError, match="onnxruntime-gpu"):
            Reconstructor(backend="onnxruntime", device=device)
