"""Tiny models for the runtime tests, built in the test session (no files from elsewhere).

The ONNX model has two inputs sharing a dynamic batch ``N`` and two named outputs:
``feat = relu(conv3x3(image) + b)`` (N, 4, 8, 8) and ``code = relu(vec @ M + c)`` (N, 5).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

RNG = np.random.default_rng(7)
W_CONV = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
B_CONV = RNG.standard_normal(4).astype(np.float32)
M_VEC = RNG.standard_normal((6, 5)).astype(np.float32)
C_VEC = RNG.standard_normal(5).astype(np.float32)


def reference(image: np.ndarray, vec: np.ndarray) -> dict[str, np.ndarray]:
    """numpy fp32 (computed in float64) reference of the tiny model."""
    x = np.pad(image.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    win = np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(2, 3))  # (N, 3, 8, 8, 3, 3)
    feat = np.einsum("nchwij,ocij->nohw", win, W_CONV.astype(np.float64)) + B_CONV[None, :, None, None]
    code = vec.astype(np.float64) @ M_VEC + C_VEC
    return {"feat": np.maximum(feat, 0).astype(np.float32), "code": np.maximum(code, 0).astype(np.float32)}


def make_feed(batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"image": rng.standard_normal((batch, 3, 8, 8)).astype(np.float32),
            "vec": rng.standard_normal((batch, 6)).astype(np.float32)}


def build_onnx(path: Path) -> Path:
    onnx = pytest.importorskip("onnx", reason="onnx is needed to build the test model")
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Conv", ["image", "w_conv", "b_conv"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["feat"]),
        helper.make_node("MatMul", ["vec", "m_vec"], ["mm"]),
        helper.make_node("Add", ["mm", "c_vec"], ["lin"]),
        helper.make_node("Relu", ["lin"], ["code"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8]),
         helper.make_tensor_value_info("vec", TensorProto.FLOAT, ["N", 6])],
        [helper.make_tensor_value_info("feat", TensorProto.FLOAT, ["N", 4, 8, 8]),
         helper.make_tensor_value_info("code", TensorProto.FLOAT, ["N", 5])],
        [numpy_helper.from_array(W_CONV, "w_conv"), numpy_helper.from_array(B_CONV, "b_conv"),
         numpy_helper.from_array(M_VEC, "m_vec"), numpy_helper.from_array(C_VEC, "c_vec")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path
