"""Torch runner on a tiny nn.Module with the same weights as the ONNX test model."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from runtime_models import B_CONV, C_VEC, M_VEC, W_CONV, make_feed, reference
from smirk_edge.errors import EngineUnavailable, InputError
from smirk_edge.runtimes.base import OptionError, RunnerError, TensorMeta
from smirk_edge.runtimes.torch_runner import TorchRunner

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch", reason="torch is not installed (pip install 'smirk-edge[torch]')")

INPUTS = [TensorMeta("image", np.float32, ("N", 3, 8, 8)), TensorMeta("vec", np.float32, ("N", 6))]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU (run on the GPU machine)")


class Tiny(torch.nn.Module):
    """forward(image, vec) -> {'feat': (N, 4, 8, 8), 'code': (N, 5)}"""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.lin = torch.nn.Linear(6, 5)
        with torch.no_grad():
            self.conv.weight.copy_(torch.from_numpy(W_CONV))
            self.conv.bias.copy_(torch.from_numpy(B_CONV))
            self.lin.weight.copy_(torch.from_numpy(M_VEC.T.copy()))
            self.lin.bias.copy_(torch.from_numpy(C_VEC))

    def forward(self, image, vec):
        return {"feat": torch.relu(self.conv(image)), "code": torch.relu(self.lin(vec))}


class OneTensor(torch.nn.Module):
    """forward(x) -> tensor (N, 4, 8, 8)"""

    def __init__(self):
        super().__init__()
        self.tiny = Tiny()

    def forward(self, x):
        return torch.relu(self.tiny.conv(x))


def check(out, feed, tol=1e-5, keys=("feat", "code")):
    ref = reference(**feed) if "vec" in feed else None
    for k in keys:
        assert out[k].dtype == np.float32
        np.testing.assert_allclose(out[k], ref[k], rtol=tol, atol=tol)


def test_eager_matches_reference():
    with TorchRunner(Tiny(), INPUTS) as runner:
        assert runner.get_output_metadata() == []  # a module declares no outputs before it runs
        for batch in (1, 3):
            feed = make_feed(batch, seed=batch)
            check(runner.infer(feed), feed)
        assert [m.name for m in runner.get_output_metadata()] == ["feat", "code"]
        assert runner.get_output_metadata()[0].shape == (None, 4, 8, 8)
        assert runner.last_inference_time() > 0 and runner.device == "cpu"


def test_loader_single_tensor_forward_and_channels_last():
    built = []

    def loader():
        built.append(1)
        return OneTensor()

    runner = TorchRunner(loader, [TensorMeta("image", np.float32, ("N", 3, 8, 8))], outputs=["feat"],
                         channels_last=True)
    assert not built
    with runner:
        feed = make_feed(2)
        out = runner.infer({"image": feed["image"]})
        np.testing.assert_allclose(out["feat"], reference(**feed)["feat"], rtol=1e-5, atol=1e-5)
    assert built == [1]


def test_unnamed_outputs_need_names():
    with TorchRunner(OneTensor(), [TensorMeta("image", np.float32, ("N", 3, 8, 8))]) as runner:
        with pytest.raises(RunnerError, match="return a dict of tensors, or pass outputs"):
            runner.infer({"image": make_feed(1)["image"]})


@pytest.mark.parametrize("cast", ["autocast", "module"])
def test_bf16_on_cpu_returns_float32(cast):
    with TorchRunner(Tiny(), INPUTS, precision="bf16", cast=cast) as runner:
        feed = make_feed(2)
        check(runner.infer(feed), feed, tol=0.15)  # bf16 has ~3 significant digits


def test_compile_path():
    with TorchRunner(Tiny(), INPUTS, compile=True, compile_backend="eager") as runner:
        feed = make_feed(2)
        check(runner.infer(feed), feed)


def test_options_are_checked():
    with pytest.raises(OptionError, match="fp16.*needs device='cuda'"):
        TorchRunner(Tiny(), INPUTS, precision="fp16")
    with pytest.raises(OptionError, match="cuda_graphs=True needs device='cuda'"):
        TorchRunner(Tiny(), INPUTS, cuda_graphs=True)
    with pytest.raises(OptionError, match="choose one of"):
        TorchRunner(Tiny(), INPUTS, device="cuda", cuda_graphs=True, compile=True)
    with pytest.raises(OptionError, match="did you mean 'bf16'"):
        TorchRunner(Tiny(), INPUTS, precision="bf61")
    with TorchRunner(Tiny(), INPUTS) as runner, pytest.raises(InputError, match="missing"):
        runner.infer({"image": make_feed(1)["image"]})


def test_cuda_device_without_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(RunnerError, match="torch.cuda.is_available\\(\\) is False"):
        TorchRunner(Tiny(), INPUTS, device="cuda").activate()


def test_missing_torch_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(EngineUnavailable, match=r'the "torch" extra'):
        TorchRunner(object(), INPUTS).activate()


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("precision, tol", [("fp32", 1e-4), ("fp16", 2e-2), ("bf16", 0.15)])
@pytest.mark.parametrize("cast", ["autocast", "module"])
def test_cuda_precisions(precision, tol, cast):
    torch.backends.cudnn.allow_tf32 = False
    with TorchRunner(Tiny(), INPUTS, device="cuda", precision=precision, cast=cast,
                     channels_last=True) as runner:
        feed = make_feed(2)
        check(runner.infer(feed), feed, tol=tol)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("precision, tol", [("fp32", 1e-4), ("fp16", 2e-2)])
def test_cuda_graphs_capture_per_shape_and_replay(precision, tol):
    torch.backends.cudnn.allow_tf32 = False
    with TorchRunner(Tiny(), INPUTS, device="cuda", precision=precision, cuda_graphs=True) as runner:
        for batch, seed in ((2, 0), (2, 1), (3, 2), (2, 3)):
            feed = make_feed(batch, seed=seed)
            check(runner.infer(feed), feed, tol=tol)  # replays see the new inputs, not the captured ones
        assert len(runner._graphs) == 2  # one graph per input shape
