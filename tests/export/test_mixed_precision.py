"""Mixed-precision int8: branches found from the graph, the ladder, and what export records."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from smirk_edge.errors import InputError


def _ort(path, x):
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, {"image": x})))


def test_branches_come_from_the_graph(exported):
    import onnx

    from smirk_edge.export.mixed_precision import LADDER, Rung, onnx_float_nodes

    _, root, _ = exported
    m = onnx.load(str(root / "encoder.onnx"))
    by_name = {n.name: n for n in m.graph.node}
    assert onnx_float_nodes(m, LADDER[0]) == []
    pose = set(onnx_float_nodes(m, Rung("p", ("pose",))))
    expr = set(onnx_float_nodes(m, Rung("e", ("expression",))))
    shape = set(onnx_float_nodes(m, Rung("s", ("shape",))))
    assert pose and expr and shape
    assert not (pose & expr) and not (pose & shape), "the three encoders share no node"
    convs = {n.name for n in m.graph.node if n.op_type == "Conv"}
    assert convs <= pose | expr | shape, "every convolution belongs to one branch"
    heads = onnx_float_nodes(m, Rung("h", float_heads=True))
    assert heads and all(by_name[h].op_type in ("Gemm", "MatMul") for h in heads)
    m.graph.output.pop()  # drop one output: the rule can no longer tell the branches apart
    with pytest.raises(InputError, match="lacks outputs"):
        onnx_float_nodes(m, Rung("p", ("pose",)))


def test_a_float_branch_is_exact_and_the_rest_is_int8(exported, crop_set, tmp_path):
    from smirk_edge.export.mixed_precision import Rung
    from smirk_edge.export.quantize import quantize_int8

    _, root, _ = exported
    held, calib = crop_set.split(8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = quantize_int8(root / "encoder.onnx", tmp_path / "mixed.onnx", calib.feeds(), progress=False,
                          keep_activations=True, rung=Rung("float-pose", ("pose",), float_heads=True))
    x = held.tensor()
    ref, got = _ort(root / "encoder.onnx", x), _ort(r.path, x)
    for k in ("pose", "cam"):
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-4, atol=1e-5, err_msg=k)
    assert r.details["mixed_precision"]["float_branches"] == ["pose"]
    assert len(r.details["excluded_nodes"]) > 0
    import onnx

    ops = {n.op_type for n in onnx.load(str(r.path)).graph.node}
    assert "QuantizeLinear" in ops, "the other branches are still int8"


def test_ladder_keeps_the_first_rung_that_passes():
    from smirk_edge.export.mixed_precision import LADDER, climb

    errors = {"all-int8": 9.0, "float-heads": 0.9, "float-pose": 0.3, "float-pose-expression": 0.1}
    built = []

    def build(rung):
        built.append(rung.name)
        return rung.name

    art, res = climb(build, lambda a: {"lmk_mean_px": errors[a], "lmk_p99_px": 1.0},
                     lambda m: m["lmk_mean_px"] <= 0.5)
    assert art == "float-pose" and res.passed and built == ["all-int8", "float-heads", "float-pose"]
    assert [t["passed"] for t in res.tried] == [False, False, True]
    art, res = climb(build, lambda a: {"lmk_mean_px": 5.0, "lmk_p99_px": 9.0}, lambda m: False)
    assert art == LADDER[-1].name and not res.passed, "nothing passes: the last rung goes to the gate"
    with pytest.raises(InputError, match="empty"):
        climb(build, lambda a: {}, lambda m: True, ladder=())


def test_export_records_the_chosen_rung(exported):
    _, root, _ = exported
    man = json.loads((root / "manifest.json").read_text())
    arts = {a["name"]: a for a in man["artifacts"]}
    for name in ("encoder.int8.onnx", "encoder.int8.xml"):
        mp = arts[name]["attrs"]["quantization"]["mixed_precision"]
        assert mp["rung"] in {"all-int8", "float-heads", "float-pose", "float-pose-expression"}
        assert mp["tried"] and mp["tried"][-1]["rung"] == mp["rung"]
        assert mp["passed"] == mp["tried"][-1]["passed"]


def test_openvino_ignored_scope_names_the_pose_branch(exported):
    ov = pytest.importorskip("openvino")
    from smirk_edge.export.mixed_precision import Rung, openvino_float_ops

    _, root, _ = exported
    model = ov.Core().read_model(str(root / "encoder.onnx"))
    names = openvino_float_ops(model, Rung("p", ("pose",)))
    types = {op.get_friendly_name(): op.get_type_name() for op in model.get_ordered_ops()}
    assert names and any(types[n] == "Convolution" for n in names)
    assert len(names) < sum(t == "Convolution" for t in types.values()), "only one branch"


def test_float_weights_are_stored_in_fp16_and_computed_in_fp32(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from smirk_edge.export.quantize import store_float_weights_fp16

    rng = np.random.default_rng(0)
    w = rng.standard_normal((32, 8, 3, 3)).astype(np.float32)  # 2,304 weights: stored fp16
    b = rng.standard_normal(32).astype(np.float32)  # 32: too small, stays fp32
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 16, 16])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    path = tmp_path / "conv.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    x = rng.standard_normal((1, 8, 16, 16)).astype(np.float32)
    import onnxruntime as ort

    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    before = path.stat().st_size
    info = store_float_weights_fp16(path)
    assert info == {"tensors": 1, "bytes_saved": w.size * 2}
    assert path.stat().st_size < before - w.size
    m = onnx.load(str(path))
    onnx.checker.check_model(m)
    assert {t.name: t.data_type for t in m.graph.initializer} == {"w_fp16": TensorProto.FLOAT16, "b": TensorProto.FLOAT}
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=0, atol=0.02)  # fp16 weight rounding only
    assert store_float_weights_fp16(path) == {"tensors": 0, "bytes_saved": 0}, "idempotent"
