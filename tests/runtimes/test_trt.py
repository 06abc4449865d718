"""TensorRT runner: pure helpers, and the runner's control flow against a fake ``tensorrt`` module.

The fake mimics the TensorRT 10 calls the runner makes (named-tensor API). Its context "executes"
``y = relu(x @ W)`` by reading and writing the buffers through the runner's allocator, so the same
fake also drives the real cuda-python / torch allocators on a GPU machine.
"""

from __future__ import annotations

import sys
from types import SimpleNamespace

import numpy as np
import pytest

from smirk_edge.errors import EngineUnavailable, InputError
from smirk_edge.runtimes.base import OptionError, RunnerError
from smirk_edge.runtimes.cuda_buffers import CudaPythonAllocator, TorchAllocator, buffer_nbytes, choose_allocator
from smirk_edge.runtimes.trt import (EngineFromFile, ProfileRange, TrtRunner, check_shape_in_profile, engine_filename,
                                     numpy_dtype)

W = np.random.default_rng(3).standard_normal((6, 5)).astype(np.float32)


# ---- a fake tensorrt module ----------------------------------------------------------------
class Member:
    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return f"DataType.{self.name}"


class FakeLogger:
    VERBOSE, INFO, WARNING, ERROR, INTERNAL_ERROR = range(5)

    def __init__(self, severity):
        self.severity = severity


class FakeEngine:
    """x (-1, 6) float32 -> y (-1, 5) float32, yh (-1, 5) float16; one profile, batch 1..8."""

    num_optimization_profiles = 1

    def __init__(self, trt, allocator):
        self.trt, self.allocator = trt, allocator
        self.io = [("x", trt.TensorIOMode.INPUT, trt.DataType.FLOAT, (-1, 6)),
                   ("y", trt.TensorIOMode.OUTPUT, trt.DataType.FLOAT, (-1, 5)),
                   ("yh", trt.TensorIOMode.OUTPUT, trt.DataType.HALF, (-1, 5))]
        self.contexts = []

    @property
    def num_io_tensors(self):
        return len(self.io)

    def _find(self, name):
        return next(t for t in self.io if t[0] == name)

    def get_tensor_name(self, i):
        return self.io[i][0]

    def get_tensor_mode(self, name):
        return self._find(name)[1]

    def get_tensor_dtype(self, name):
        return self._find(name)[2]

    def get_tensor_shape(self, name):
        return self._find(name)[3]

    def get_tensor_profile_shape(self, name, profile_index):
        assert name == "x" and profile_index == 0
        return [(1, 6), (4, 6), (8, 6)]

    def create_execution_context(self):
        ctx = FakeContext(self)
        self.contexts.append(ctx)
        return ctx


class FakeContext:
    def __init__(self, engine):
        self.engine, self.calls, self.addresses, self.shapes = engine, [], {}, {}

    def set_input_shape(self, name, shape):
        self.calls.append(("set_input_shape", name, tuple(shape)))
        self.shapes[name] = tuple(shape)
        return 1 <= shape[0] <= 8

    def get_tensor_shape(self, name):
        if name == "x":
            return self.shapes.get("x", (-1, 6))
        return (self.shapes["x"][0], 5) if "x" in self.shapes else (-1, 5)

    def set_tensor_address(self, name, ptr):
        self.calls.append(("set_tensor_address", name))
        self.addresses[name] = ptr
        return True

    def execute_async_v3(self, stream_handle):
        alloc = self.engine.allocator
        self.calls.append(("execute_async_v3", stream_handle))
        assert stream_handle == alloc.stream_handle
        assert set(self.addresses) == {"x", "y", "yh"}, "every IO tensor needs an address"
        alloc.synchronize()
        x = np.empty(self.shapes["x"], np.float32)
        alloc.copy_to_host(x, self.addresses["x"])
        alloc.synchronize()
        y = np.maximum(x @ W, 0).astype(np.float32)
        alloc.copy_to_device(self.addresses["y"], y)
        alloc.copy_to_device(self.addresses["yh"], y.astype(np.float16))
        alloc.synchronize()
        return True


class FakeRuntime:
    def __init__(self, logger):
        self.logger = logger
        self.engine_factory = None

    def deserialize_cuda_engine(self, data):
        return FAKE_ENGINES.get(bytes(data))


FAKE_ENGINES: dict[bytes, FakeEngine] = {}


def fake_trt_module():
    return SimpleNamespace(
        __version__="10.0.fake",
        TensorIOMode=SimpleNamespace(INPUT=Member("INPUT"), OUTPUT=Member("OUTPUT"), NONE=Member("NONE")),
        DataType=SimpleNamespace(**{n: Member(n) for n in ("FLOAT", "HALF", "INT8", "INT32", "INT64", "BOOL",
                                                            "UINT8", "BF16", "FP8")}),
        Logger=FakeLogger, Runtime=FakeRuntime)


class HostAllocator:
    """'Device' memory in host byte arrays; pointers are fake ints."""

    stream_handle = 1234

    def __init__(self):
        self.mem, self.next, self.freed, self.copies = {}, 0x1000, [], []

    def malloc(self, nbytes):
        ptr, self.next = self.next, self.next + 0x1000 + nbytes
        self.mem[ptr] = np.zeros(nbytes, np.uint8)
        return ptr

    def free(self, ptr):
        self.freed.append(ptr)
        del self.mem[ptr]

    def host_empty(self, shape, dtype, pinned):
        return np.empty(shape, dtype)

    def copy_to_device(self, ptr, host):
        self.copies.append(("h2d", ptr, host.nbytes))
        self.mem[ptr][: host.nbytes] = np.ascontiguousarray(host).reshape(-1).view(np.uint8)

    def copy_to_host(self, host, ptr):
        self.copies.append(("d2h", ptr, host.nbytes))
        host.reshape(-1).view(np.uint8)[...] = self.mem[ptr][: host.nbytes]

    def synchronize(self):
        pass

    def close(self):
        pass


@pytest.fixture
def fake():
    trt, alloc = fake_trt_module(), HostAllocator()
    return SimpleNamespace(trt=trt, alloc=alloc, engine=FakeEngine(trt, alloc))


def x_feed(batch, seed=0):
    return {"x": np.random.default_rng(seed).standard_normal((batch, 6)).astype(np.float32)}


# ---- pure helpers ---------------------------------------------------------------------------
def test_dtype_table():
    trt = fake_trt_module()
    assert numpy_dtype(trt.DataType.FLOAT) == np.float32 and numpy_dtype(trt.DataType.HALF) == np.float16
    assert numpy_dtype("DataType.INT64") == np.int64
    with pytest.raises(RunnerError, match="BF16 has no numpy equivalent"):
        numpy_dtype(trt.DataType.BF16)


def test_profile_check_names_the_range():
    prof = ProfileRange("image", (1, 3, 224, 224), (8, 3, 224, 224), (16, 3, 224, 224))
    check_shape_in_profile((16, 3, 224, 224), prof)
    with pytest.raises(InputError, match=r"outside optimization profile 0.*min \(1, 3, 224, 224\).*"
                                         r"max \(16, 3, 224, 224\).*batch must be within 1\.\.16"):
        check_shape_in_profile((17, 3, 224, 224), prof)
    with pytest.raises(InputError, match="outside optimization profile 2"):
        check_shape_in_profile((1, 3, 256, 256), prof, profile_index=2)


def test_buffer_sizes():
    assert buffer_nbytes((2, 3, 224, 224), np.float16) == 2 * 3 * 224 * 224 * 2
    assert buffer_nbytes((0, 5), np.float32) == 1
    with pytest.raises(RunnerError, match="dynamic"):
        buffer_nbytes((-1, 5), np.float32)


def test_allocator_choice():
    assert choose_allocator("auto", True, True) == "cuda-python"
    assert choose_allocator("auto", False, True) == "torch"
    assert choose_allocator("torch", True, True) == "torch"
    with pytest.raises(EngineUnavailable, match=r'the "tensorrt" extra'):
        choose_allocator("auto", False, False)
    with pytest.raises(EngineUnavailable, match="cuda-python"):
        choose_allocator("cuda-python", False, True)
    with pytest.raises(OptionError, match="did you mean 'torch'"):
        choose_allocator("torh", True, True)


def test_engine_filename():
    assert (engine_filename("NVIDIA Jetson AGX Orin", (8, 7), "10.3.0", "fp16")
            == "encoder.nvidia-jetson-agx-orin.sm87.trt10.3.0.fp16.engine")
    assert engine_filename("NVIDIA H100 80GB HBM3", "9.0", "10.7.0", "int8", stem="detector") == \
        "detector.nvidia-h100-80gb-hbm3.sm90.trt10.7.0.int8.engine"
    assert engine_filename("RTX 4090", "sm_89", "10.0.1", "fp32").split(".")[2] == "sm89"
    assert engine_filename("RTX 4090", 89, "10.0.1", "fp32").split(".")[2] == "sm89"
    with pytest.raises(OptionError, match="did you mean 'fp16'"):
        engine_filename("RTX 4090", 89, "10.0.1", "fp61")
    with pytest.raises(OptionError, match="compute capability"):
        engine_filename("RTX 4090", "ampere", "10.0.1", "fp16")


# ---- the runner against the fake -------------------------------------------------------------
def test_runner_end_to_end(fake):
    runner = TrtRunner(fake.engine, allocator=fake.alloc, trt_module=fake.trt)
    with runner:
        assert [(m.name, m.shape, m.dtype) for m in runner.get_input_metadata()] == [("x", (None, 6), np.float32)]
        assert [m.dtype for m in runner.get_output_metadata()] == [np.float32, np.float16]
        assert runner.get_profile("x") == ProfileRange("x", (1, 6), (4, 6), (8, 6))
        feed = x_feed(3)
        out = runner.infer(feed)
        ref = np.maximum(feed["x"] @ W, 0)
        np.testing.assert_allclose(out["y"], ref, rtol=1e-6)
        np.testing.assert_allclose(out["yh"], ref, rtol=1e-3, atol=1e-3)
        assert out["y"].shape == (3, 5) and out["yh"].dtype == np.float16
        calls = fake.engine.contexts[0].calls
        assert ("set_input_shape", "x", (3, 6)) in calls
        assert {c[1] for c in calls if c[0] == "set_tensor_address"} == {"x", "y", "yh"}
        assert calls.count(("execute_async_v3", 1234)) == 1
        # set_input_shape comes before the output shapes are read and before execution
        assert calls.index(("set_input_shape", "x", (3, 6))) < calls.index(("execute_async_v3", 1234))
        assert runner.last_inference_time() > 0
        # outputs are host copies, not views of reused buffers
        out2 = runner.infer(x_feed(3, seed=1))
        assert not np.shares_memory(out["y"], out2["y"])
        np.testing.assert_allclose(out["y"], ref, rtol=1e-6)
    assert set(fake.alloc.mem) == set()  # every device buffer freed on deactivate


def test_batch_outside_profile_is_rejected_before_the_engine(fake):
    with TrtRunner(fake.engine, allocator=fake.alloc, trt_module=fake.trt) as runner:
        with pytest.raises(InputError, match=r"batch must be within 1\.\.8"):
            runner.infer(x_feed(9))
        assert not any(c[0] == "execute_async_v3" for c in fake.engine.contexts[0].calls)
        with pytest.raises(InputError, match="dimension 1 must be 6"):
            runner.infer({"x": np.zeros((2, 7), np.float32)})


def test_buffers_grow_with_the_batch(fake):
    with TrtRunner(fake.engine, allocator=fake.alloc, trt_module=fake.trt, pinned=True) as runner:
        runner.infer(x_feed(2))
        assert fake.alloc.freed == []
        runner.infer(x_feed(1))  # smaller: buffers reused
        assert fake.alloc.freed == []
        feed = x_feed(8)
        out = runner.infer(feed)  # larger: reallocated
        assert len(fake.alloc.freed) == 3
        np.testing.assert_allclose(out["y"], np.maximum(feed["x"] @ W, 0), rtol=1e-6)


def test_engine_from_file_and_paths(fake, tmp_path):
    path = tmp_path / "tiny.engine"
    path.write_bytes(b"fake-plan")
    FAKE_ENGINES[b"fake-plan"] = fake.engine
    with TrtRunner(path, allocator=fake.alloc, trt_module=fake.trt) as runner:
        assert runner.infer(x_feed(1))["y"].shape == (1, 5)
    bad = tmp_path / "other-gpu.engine"
    bad.write_bytes(b"built elsewhere")
    with pytest.raises(RunnerError, match="could not deserialize.*rebuild it on this device"):
        TrtRunner(bad, allocator=fake.alloc, trt_module=fake.trt).activate()
    with pytest.raises(RunnerError, match="not found"):
        EngineFromFile(tmp_path / "absent.engine", trt_module=fake.trt)()


def test_profile_index_out_of_range(fake):
    with pytest.raises(OptionError, match="profile_index 1 is out of range: the engine has 1"):
        TrtRunner(fake.engine, profile_index=1, allocator=fake.alloc, trt_module=fake.trt).activate()


def test_missing_tensorrt_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    runner = TrtRunner(tmp_path / "x.engine")
    with pytest.raises(EngineUnavailable, match=r'TensorRT 10 is not available.*the "tensorrt" extra'):
        runner.activate()
    assert not runner.is_active


# ---- real device memory (GPU machine), still with the fake engine -----------------------------
def _cuda_ok() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_ok(), reason="needs a CUDA GPU (run on the GPU machine)")
@pytest.mark.parametrize("kind", ["cuda-python", "torch"])
@pytest.mark.parametrize("pinned", [False, True])
def test_real_allocators_with_fake_engine(kind, pinned):
    if kind == "cuda-python":
        pytest.importorskip("cuda.bindings", reason="cuda-python is not installed")
    trt = fake_trt_module()
    alloc = CudaPythonAllocator() if kind == "cuda-python" else TorchAllocator()
    try:
        engine = FakeEngine(trt, alloc)
        with TrtRunner(engine, allocator=alloc, pinned=pinned, trt_module=trt) as runner:
            for batch in (2, 8, 3):
                feed = x_feed(batch, seed=batch)
                out = runner.infer(feed)
                np.testing.assert_allclose(out["y"], np.maximum(feed["x"] @ W, 0), rtol=1e-6)
    finally:
        alloc.close()


# ---- real TensorRT (target device only) ---------------------------------------------------------
@pytest.mark.tensorrt
@pytest.mark.gpu
def test_real_tensorrt_engine(tiny_onnx, tmp_path):
    trt = pytest.importorskip("tensorrt", reason="TensorRT 10 is not installed (it comes with JetPack / "
                                                 "NVIDIA containers; cannot be installed here)")
    from runtime_models import make_feed, reference

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(tiny_onnx.read_bytes())
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("image", (1, 3, 8, 8), (2, 3, 8, 8), (4, 3, 8, 8))
    profile.set_shape("vec", (1, 6), (2, 6), (4, 6))
    config.add_optimization_profile(profile)
    path = tmp_path / "tiny.engine"
    path.write_bytes(bytes(builder.build_serialized_network(network, config)))
    with TrtRunner(path, precision="fp32") as runner:
        feed = make_feed(3)
        out, ref = runner.infer(feed), reference(**feed)
        for k in ref:
            np.testing.assert_allclose(out[k], ref[k], rtol=1e-3, atol=1e-3)  # TF32 may be on
        with pytest.raises(InputError, match=r"batch must be within 1\.\.4"):
            runner.infer(make_feed(5))
