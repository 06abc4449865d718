"""The BlazeFace detector graphs run by torch (OnnxTorchRunner) equal ONNX Runtime on real photos."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

pytest.importorskip("torch", reason="torch not installed (pip install 'smirk-edge[torch]')")
pytest.importorskip("onnx", reason="onnx not installed (pip install 'smirk-edge[torch]')")
pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install 'smirk-edge[onnxruntime]')")

pytestmark = pytest.mark.torch


@pytest.mark.parametrize("model", ["blazeface_short", "blazeface_full"])
def test_blazeface_on_torch_equals_onnxruntime(model):
    from smirk_edge.detector import model_path
    from smirk_edge.runtimes.onnx_torch import OnnxTorchRunner
    from smirk_edge.runtimes.registry import make_runner

    path = model_path(model.split("_")[1])
    ref = make_runner("onnxruntime", path, threads=1).activate()
    run = OnnxTorchRunner(path, device="cpu").activate()
    meta = ref.get_input_metadata()[0]
    side = int(meta.shape[2])
    from smirk_edge.benchmarks.stress_sheet import example_photo

    img = cv2.resize(cv2.imread(str(example_photo())), (side, side))
    x = (img[:, :, ::-1].astype(np.float32) / 127.5 - 1.0).transpose(2, 0, 1)[None]
    x = np.concatenate([x, np.random.default_rng(0).uniform(-1, 1, x.shape).astype(np.float32)])
    a, b = ref.infer({meta.name: x}), run.infer({meta.name: x})
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-3)


def test_unknown_operator_is_refused_with_its_name(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from smirk_edge.runtimes.base import RunnerError
    from smirk_edge.runtimes.onnx_torch import OnnxTorchRunner

    node = helper.make_node("Softmax", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(RunnerError, match="Softmax"):
        OnnxTorchRunner(path).activate()
