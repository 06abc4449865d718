"""build-engine without TensorRT: option checks, profile shapes, naming, manifest, and the exact
sequence of TensorRT 10 API calls against a fake ``tensorrt`` module."""

from __future__ import annotations

import sys
import types

import pytest

from smirk_edge.bundle import Bundle, BundleWriter
from smirk_edge.errors import BundleError, EngineUnavailable, InputError
from smirk_edge.export.tensorrt_build import (BuildOptions, EngineBuildError, GpuInfo, build_engine,
                                              build_serialized, import_tensorrt, source_artifact)

GPU = GpuInfo("NVIDIA Jetson AGX Orin", (8, 7))


class FakeTrt(types.ModuleType):
    """Records every call; enough of the TensorRT 10 Python API for the builder."""

    def __init__(self, parse_ok=True, plan=b"PLAN", dla_cores=2):
        super().__init__("tensorrt")
        self.__version__ = "10.3.0"
        self.calls: list[tuple] = []
        calls = self.calls

        class Enum:
            def __init__(self, prefix):
                self.prefix = prefix

            def __getattr__(self, item):
                return f"{self.prefix}.{item}"

        self.MemoryPoolType = Enum("MemoryPoolType")
        self.BuilderFlag = Enum("BuilderFlag")
        self.DeviceType = Enum("DeviceType")

        class Logger:
            WARNING, INFO, ERROR, VERBOSE = "W", "I", "E", "V"

            def __init__(self, severity):
                calls.append(("Logger", severity))

        class Cache:
            def __init__(self, data):
                self.data = data

            def serialize(self):
                return b"CACHE+" + self.data

        class Config:
            def __init__(self):
                self._cache = None

            def set_memory_pool_limit(self, pool, size):
                calls.append(("set_memory_pool_limit", pool, size))

            def set_flag(self, flag):
                calls.append(("set_flag", flag))

            def add_optimization_profile(self, profile):
                calls.append(("add_optimization_profile", profile.shapes))

            def create_timing_cache(self, data):
                calls.append(("create_timing_cache", bytes(data)))
                return Cache(bytes(data))

            def set_timing_cache(self, cache, ignore_mismatch):
                calls.append(("set_timing_cache", ignore_mismatch))
                self._cache = cache

            def get_timing_cache(self):
                return self._cache

            def __setattr__(self, key, value):
                if not key.startswith("_"):
                    calls.append(("config." + key, value))
                object.__setattr__(self, key, value)

        class Profile:
            def __init__(self):
                self.shapes = None

            def set_shape(self, name, mn, opt, mx):
                calls.append(("set_shape", name, mn, opt, mx))
                self.shapes = (name, mn, opt, mx)

        class Builder:
            num_DLA_cores = dla_cores

            def __init__(self, logger):
                calls.append(("Builder",))

            def create_network(self, flags):
                calls.append(("create_network", flags))
                return "network"

            def create_builder_config(self):
                calls.append(("create_builder_config",))
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                calls.append(("build_serialized_network", network))
                return plan

        class OnnxParser:
            def __init__(self, network, logger):
                calls.append(("OnnxParser", network))
                self.num_errors = 0 if parse_ok else 2

            def parse_from_file(self, path):
                calls.append(("parse_from_file", path))
                return parse_ok

            def get_error(self, i):
                return f"error {i}: unsupported node"

        self.Logger, self.Builder, self.OnnxParser = Logger, Builder, OnnxParser


@pytest.fixture()
def trt_bundle(tmp_path):
    """A bundle with an fp32 encoder ONNX and a TensorRT-flavoured int8 QDQ ONNX (contents irrelevant)."""
    root = tmp_path / "b"
    root.mkdir()
    for name in ("encoder.onnx", "encoder.int8.onnx", "encoder.int8-tensorrt.onnx"):
        # a valid (empty-graph) ModelProto whose producer_name differs per file
        (tmp_path / name).write_bytes(b"\x12" + bytes([len(name)]) + name.encode())
    w = BundleWriter(root, {"input": {"name": "image"}})
    w.add("encoder.onnx", "onnx", "encoder", tmp_path / "encoder.onnx", "fp32")
    w.add("encoder.int8.onnx", "onnx", "encoder", tmp_path / "encoder.int8.onnx", "int8")
    w.add("encoder.int8-tensorrt.onnx", "onnx", "encoder", tmp_path / "encoder.int8-tensorrt.onnx", "int8",
          {"intended_engine": "tensorrt"})
    w.write()
    return root


@pytest.mark.parametrize("kwargs, message", [
    ({"precision": "fp8"}, "precision"),
    ({"precision": "fp16", "min_batch": 0}, "min-batch"),
    ({"precision": "fp16", "min_batch": 4, "opt_batch": 2, "max_batch": 8}, "min <= opt <= max"),
    ({"precision": "fp16", "max_batch": 4096}, "1024"),
    ({"precision": "fp16", "workspace_gib": 0}, "workspace"),
    ({"precision": "int8", "dla_core": -1}, "dla"),
])
def test_options_are_validated(kwargs, message):
    with pytest.raises(InputError, match=message):
        BuildOptions(**kwargs).validate()


def test_profile_shapes():
    o = BuildOptions("fp16", 1, 4, 32).validate()
    assert o.profile_shapes() == ((1, 3, 224, 224), (4, 3, 224, 224), (32, 3, 224, 224))
    assert BuildOptions("fp16", workspace_gib=1.5).workspace_bytes == 3 << 29


def test_source_artifact_choice(trt_bundle):
    b = Bundle(trt_bundle)
    assert source_artifact(b, "fp16").name == "encoder.onnx"
    assert source_artifact(b, "int8").name == "encoder.int8-tensorrt.onnx"  # never ORT's uint8 QDQ
    with pytest.raises(BundleError, match="fused"):
        source_artifact(b, "fp16", fused=True)


def test_fp16_build_sequence_and_manifest(trt_bundle, tmp_path):
    trt = FakeTrt()
    cache = tmp_path / "cache" / "trt.cache"
    res = build_engine(trt_bundle, BuildOptions("fp16", 1, 2, 8, timing_cache=cache, workspace_gib=2), trt=trt,
                       gpu=GPU)
    assert res.path.name == "encoder.nvidia-jetson-agx-orin.sm87.trt10.3.0.fp16.engine"
    assert res.path.read_bytes() == b"PLAN"
    names = [c[0] for c in trt.calls]
    assert names == ["Logger", "Builder", "create_network", "OnnxParser", "parse_from_file", "create_builder_config",
                     "set_memory_pool_limit", "set_flag", "set_shape", "add_optimization_profile",
                     "create_timing_cache", "set_timing_cache", "build_serialized_network"]
    assert ("create_network", 0) in trt.calls  # explicit batch is the default in TensorRT 10
    assert ("set_flag", "BuilderFlag.FP16") in trt.calls and ("set_flag", "BuilderFlag.INT8") not in trt.calls
    assert ("set_memory_pool_limit", "MemoryPoolType.WORKSPACE", 2 << 30) in trt.calls
    assert ("set_shape", "image", (1, 3, 224, 224), (2, 3, 224, 224), (8, 3, 224, 224)) in trt.calls
    assert trt.calls[4][1].endswith("encoder.onnx")
    assert cache.read_bytes() == b"CACHE+"  # a new cache, written after the build
    art = Bundle(trt_bundle).get(res.artifact)
    assert art.kind == "tensorrt-engine" and art.precision == "fp16" and art.role == "encoder"
    assert art.attrs["compute_capability"] == "8.7" and art.attrs["tensorrt"] == "10.3.0"
    assert art.attrs["profile"]["max"] == [8, 3, 224, 224] and art.attrs["source"] == "encoder.onnx"
    Bundle(trt_bundle).verify_all()


def test_int8_build_uses_explicit_quantization_and_dla(trt_bundle):
    trt = FakeTrt()
    res = build_engine(trt_bundle, BuildOptions("int8", dla_core=1), trt=trt, gpu=GPU)
    assert res.path.name.endswith(".int8.dla1.engine")
    assert trt.calls[4][1].endswith("encoder.int8-tensorrt.onnx")
    assert ("set_flag", "BuilderFlag.INT8") in trt.calls and ("set_flag", "BuilderFlag.FP16") in trt.calls
    assert ("config.default_device_type", "DeviceType.DLA") in trt.calls and ("config.DLA_core", 1) in trt.calls
    assert ("set_flag", "BuilderFlag.GPU_FALLBACK") in trt.calls
    assert not any(c[0] == "set_memory_pool_limit" for c in trt.calls)
    assert Bundle(trt_bundle).get(res.artifact).attrs["quantization"] == "explicit (Q/DQ)"


def test_dla_core_out_of_range(trt_bundle):
    with pytest.raises(InputError, match="DLA core"):
        build_engine(trt_bundle, BuildOptions("fp16", dla_core=2), trt=FakeTrt(dla_cores=2), gpu=GPU)


def test_existing_timing_cache_is_read(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"x")
    cache = tmp_path / "t.cache"
    cache.write_bytes(b"OLD")
    trt = FakeTrt()
    build_serialized(trt, tmp_path / "m.onnx", BuildOptions("fp16", timing_cache=cache))
    assert ("create_timing_cache", b"OLD") in trt.calls and cache.read_bytes() == b"CACHE+OLD"


def test_parser_and_builder_failures_are_reported(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"x")
    with pytest.raises(EngineBuildError, match="error 1: unsupported node"):
        build_serialized(FakeTrt(parse_ok=False), tmp_path / "m.onnx", BuildOptions("fp16"))
    with pytest.raises(EngineBuildError, match="could not build"):
        build_serialized(FakeTrt(plan=None), tmp_path / "m.onnx", BuildOptions("fp16"))


def test_missing_tensorrt_names_the_extra(monkeypatch, trt_bundle):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(EngineUnavailable, match=r"the \"tensorrt\" extra"):
        import_tensorrt()
    with pytest.raises(EngineUnavailable):
        build_engine(trt_bundle, BuildOptions("fp16"), gpu=GPU)


def test_build_engine_cli_without_tensorrt(monkeypatch, trt_bundle, capsys):
    from smirk_edge.export.cli import build_engine_main

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert build_engine_main([str(trt_bundle), "--precision", "fp16"]) == 1
    assert "the \"tensorrt\" extra" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        build_engine_main([str(trt_bundle), "--precision", "fp32"])
    assert exc.value.code == 2
