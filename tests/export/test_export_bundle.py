"""The CI-sized export: artifacts, gate, metadata, golden, model card, selftest, broken artifacts."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from smirk_edge.bundle import Bundle, BundleWriter

pytestmark = [pytest.mark.torch, pytest.mark.onnxruntime, pytest.mark.openvino]

EXPECTED = {
    "encoder.onnx": ("onnx", "encoder", "fp32"),
    "encoder.fp16.onnx": ("onnx", "encoder", "fp16"),
    "encoder.int8.onnx": ("onnx", "encoder", "int8"),
    "encoder.int8-tensorrt.onnx": ("onnx", "encoder", "int8"),
    "fused.onnx": ("onnx", "fused", "fp32"),
    "fused.fp16.onnx": ("onnx", "fused", "fp16"),
    "fused.int8.onnx": ("onnx", "fused", "int8"),
    "encoder.xml": ("openvino-ir", "encoder", "fp32"),
    "encoder.fp16.xml": ("openvino-ir", "encoder", "fp16"),
    "encoder.int8.xml": ("openvino-ir", "encoder", "int8"),
    "encoder.torch.pt": ("torch-checkpoint", "encoder", "fp32"),
}


def test_bundle_has_every_artifact_gated(exported):
    report, root, _ = exported
    bundle = Bundle(root)
    bundle.verify_all()
    for name, (kind, role, precision) in EXPECTED.items():
        a = bundle.get(name)
        assert (a.kind, a.role, a.precision) == (kind, role, precision)
        acc = a.attrs["accuracy"]
        assert acc["passed"] and acc["crops"] >= 16, (name, acc)
        assert {"lmk_mean_px", "lmk_p99_px", "vertex_mean_mm", "expression_mae", "param_max_rel"} <= set(acc)
        assert "export" in a.attrs["seconds"]
    assert bundle.get("encoder.xml").files[1].path == "encoder.bin"
    assert bundle.get("encoder.int8-tensorrt.onnx").attrs["intended_engine"] == "tensorrt"
    assert bundle.find(role="face_model") and bundle.find(role="golden") and bundle.find(role="model_card")
    assert all(r.passed for r in report.results) and not report.rejected
    # fp32 artifacts match torch to 1e-4; fused graphs agree with the numpy decoder
    assert bundle.get("encoder.onnx").attrs["accuracy"]["param_max_rel"] <= 1e-4
    assert bundle.get("encoder.xml").attrs["accuracy"]["param_max_rel"] <= 1e-4
    assert bundle.get("fused.onnx").attrs["accuracy"]["fused_max_mm"] <= 0.01


def test_detector_models_are_shipped_when_present(exported):
    from smirk_edge.export.pipeline import _detector_models

    _, root, _ = exported
    dets = Bundle(root).find(role="detector")
    assert sorted(a.path for a in dets) == sorted(p.name for p in _detector_models())


def test_metadata_travels_with_every_model(exported):
    from smirk_edge.export.metadata import read_onnx_metadata
    from smirk_edge.export.openvino_export import read_ir_metadata

    _, root, _ = exported
    bundle = Bundle(root)
    m = bundle.metadata
    assert m["input"]["shape"] == ["batch", 3, 224, 224] and m["input"]["color"] == "RGB"
    assert m["face_model"]["id"] == "random-test-model"
    assert len(m["source_checkpoint"]["sha256"]) == 64 and m["source_checkpoint"]["encoder_variant"] == "tiny"
    assert m["onnx_opset"] == 18 and m["gate_thresholds"]["int8"]["lmk_p99_px"] == 2.0
    for name, precision in (("encoder.onnx", "fp32"), ("encoder.fp16.onnx", "fp16"), ("encoder.int8.onnx", "int8"),
                            ("fused.onnx", "fp32")):
        meta = read_onnx_metadata(root / name)
        assert meta["precision"] == precision and meta["source_checkpoint"] == m["source_checkpoint"]
        assert list(meta["outputs"]) == ["pose", "cam", "shape", "expression", "eyelid", "jaw"]
    ir = read_ir_metadata(root / "encoder.int8.xml")
    assert ir["precision"] == "int8" and ir["face_model"]["id"] == "random-test-model"


def test_onnx_graph_shape_and_names(exported):
    import onnx

    _, root, _ = exported
    model = onnx.load(str(root / "encoder.onnx"))
    assert model.opset_import[0].version == 18
    assert [i.name for i in model.graph.input] == ["image"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    assert [o.name for o in model.graph.output] == ["pose", "cam", "shape", "expression", "eyelid", "jaw"]
    assert not any(n.metadata_props for n in model.graph.node)  # no stack traces with local paths
    fused = onnx.load(str(root / "fused.onnx"))
    assert [o.name for o in fused.graph.output][-3:] == ["vertices", "landmarks68", "landmarks105"]
    half = onnx.load(str(root / "encoder.fp16.onnx"))
    assert half.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # fp32 IO
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in half.graph.initializer)
    q = onnx.load(str(root / "encoder.int8.onnx"))
    ops = {n.op_type for n in q.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_int8_flavours_have_the_documented_zero_points(exported):
    import onnx
    from onnx import numpy_helper

    _, root, _ = exported

    def activation_zero_points(path):
        m = onnx.load(str(path))
        inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
        return [inits[n.input[2]] for n in m.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]

    x86 = activation_zero_points(root / "encoder.int8.onnx")
    trt = activation_zero_points(root / "encoder.int8-tensorrt.onnx")
    assert x86 and all(z.dtype == np.uint8 for z in x86)
    assert trt and all(z.dtype == np.int8 and not z.any() for z in trt)  # TensorRT: symmetric int8


def test_batch_is_dynamic_in_every_engine(exported):
    from smirk_edge.runtimes import make_runner

    _, root, _ = exported
    x = np.random.default_rng(1).random((3, 3, 224, 224), dtype=np.float32)
    for engine, name in (("onnxruntime", "encoder.int8.onnx"), ("openvino", "encoder.xml"),
                         ("onnxruntime", "fused.onnx")):
        with make_runner(engine, root / name, precision="fp32") as r:
            out = r.infer({"image": x})
        assert out["shape"].shape == (3, 300) and out["jaw"].shape == (3, 3)


def test_comparator_files_and_model_card(exported):
    from smirk_edge.export.gate import load_report

    report, root, report_dir = exported
    rows = load_report(report_dir / "report.json")
    assert {r.name for r in rows} == set(EXPECTED)
    assert (report_dir / "outputs" / "torch-fp32.npz").is_file()
    assert (report_dir / "outputs" / "encoder.int8.onnx.npz").is_file()
    card = (root / "MODEL_CARD.md").read_text()
    assert "## Accuracy against fp32 torch" in card and "| encoder.int8.xml | openvino | int8 |" in card
    assert report.timings["total"] > 0 and "reference" in report.timings


def test_golden_file(exported):
    from smirk_edge.export.golden import load_golden

    _, root, _ = exported
    g = load_golden(root / "golden.npz")
    assert g.crops.dtype == np.uint8 and g.crops.shape == (8, 224, 224, 3)
    assert g.outputs["expression"].shape == (8, 50) and g.meta["reference"] == "torch fp32"


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_selftest_passes(exported, backend, tmp_path):
    from smirk_edge.export.golden import selftest

    _, root, _ = exported
    rows = selftest(root, backend=backend, out_dir=tmp_path)
    assert rows and all(r.passed for r in rows), [r.to_json() for r in rows]
    assert {r.engine for r in rows} == {backend}
    kinds = {Bundle(root).get(r.name).kind for r in rows}
    assert kinds == ({"onnx"} if backend == "onnxruntime" else {"openvino-ir"})
    assert (tmp_path / "report.json").is_file()


def test_selftest_cli(exported, capsys):
    from smirk_edge.export.cli import selftest_main

    _, root, _ = exported
    assert selftest_main([str(root), "--backend", "onnxruntime", "--precision", "int8"]) == 0
    out = capsys.readouterr().out
    assert "encoder.int8.onnx" in out and "selftest: PASS" in out


def _perturbed_copy(root, tmp_path, name="encoder.onnx"):
    """A copy of the bundle whose ``name`` has one weight tensor scaled (re-registered, hashes valid)."""
    import onnx
    from onnx import numpy_helper

    dst = tmp_path / "broken.bundle"
    shutil.copytree(root, dst)
    model = onnx.load(str(dst / name))
    # the biggest float initialiser: a backbone weight, so every output moves
    init = max((i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT),
               key=lambda i: int(np.prod(i.dims)))
    w = numpy_helper.to_array(init).copy()
    w *= 1.5
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    onnx.save(model, str(dst / name))
    writer = BundleWriter(dst)
    old = writer.artifacts[name]
    writer.add(name, old.kind, old.role, dst / name, old.precision, old.attrs)
    writer.write()
    return dst, init.name


def test_broken_artifact_fails_selftest_and_gate(exported, tmp_path, capsys):
    from smirk_edge.export.cli import selftest_main
    from smirk_edge.export.gate import Comparator, thresholds_for
    from smirk_edge.export.golden import load_golden, selftest
    from smirk_edge.face_model import FaceModel
    from smirk_edge.runtimes import make_runner

    _, root, _ = exported
    broken, weight = _perturbed_copy(root, tmp_path)
    rows = selftest(broken, backend="onnxruntime", artifact="encoder.onnx")
    assert len(rows) == 1 and not rows[0].passed
    assert "param_max_rel" in rows[0].failures[0] and rows[0].metrics["param_max_rel"] > 1e-4
    assert selftest_main([str(broken), "--backend", "onnxruntime", "--artifact", "encoder.onnx"]) == 1
    assert "FAIL" in capsys.readouterr().out

    # the gate itself, on the golden crops: the broken fp32 graph fails, the original passes
    g = load_golden(root / "golden.npz")
    cmp = Comparator(g.inputs(), FaceModel.load(root / "face_model.npz"))
    cmp.set_reference("golden", g.outputs)
    good = cmp.run("good", make_runner("onnxruntime", root / "encoder.onnx"), "fp32")
    bad = cmp.run("bad", make_runner("onnxruntime", broken / "encoder.onnx"), "fp32")
    assert good.passed and not bad.passed
    # the numbers say by how much: landmarks move too
    assert bad.metrics["lmk_mean_px"] > good.metrics["lmk_mean_px"] and thresholds_for("fp32").param_max_rel == 1e-4


def test_fused_graph_matches_numpy_decoder(exported):
    from smirk_edge.face_model import FaceModel
    from smirk_edge.runtimes import make_runner

    _, root, _ = exported
    fm = FaceModel.load(root / "face_model.npz")
    x = np.random.default_rng(3).random((4, 3, 224, 224), dtype=np.float32)
    with make_runner("onnxruntime", root / "fused.onnx") as r:
        out = r.infer({"image": x})
    geo = fm.decode(shape=out["shape"], expression=out["expression"], pose=out["pose"], jaw=out["jaw"],
                    eyelid=out["eyelid"])
    for k in ("vertices", "landmarks68", "landmarks105"):
        assert out[k].shape == getattr(geo, k).shape
        assert np.all(np.isfinite(out[k]))
        np.testing.assert_allclose(out[k], getattr(geo, k), atol=1e-6)  # metres


def test_official_layout_checkpoint_to_bundle_to_reconstructor(exported, tiny_checkpoint):
    """A checkpoint in exactly SMIRK_em1.pt's layout goes through export into a bundle that the
    Reconstructor runs on every exported precision."""
    import numpy as np
    import torch

    from smirk_edge.reconstructor import Reconstructor

    raw = torch.load(tiny_checkpoint, weights_only=True)
    assert "smirk_edge_meta" not in raw and any(k.startswith("smirk_generator.") for k in raw)
    _, root, _ = exported
    frame = np.zeros((360, 480, 3), np.uint8)
    from factories import data_root

    data = data_root()
    if data is not None:
        import cv2

        frame = cv2.imread(str(sorted((data / "photos").glob("*.jpg"))[0]))
    for precision in ("fp32", "fp16", "int8"):
        with Reconstructor(root, backend="onnxruntime", precision=precision) as rec:
            faces = rec(frame)
            assert rec.encoder.precision == precision
            if data is not None:
                assert faces and all(np.isfinite(f.vertices).all() for f in faces)
