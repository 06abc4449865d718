"""Bundle manifest: round trip, checksum verification, refusal of hostile manifests."""

import json

import pytest

from smirk_edge.bundle import MANIFEST, Bundle, BundleWriter, sha256_file
from smirk_edge.errors import BundleError

# a valid protobuf (1,000 bytes of ModelProto.ir_version fields) standing in for an ONNX model
ONNX_LIKE = b"\x08\x07" * 500


@pytest.fixture()
def bundle_dir(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "encoder.onnx").write_bytes(ONNX_LIKE)
    (src / "encoder.xml").write_text("<xml/>")
    (src / "encoder.bin").write_bytes(b"\x01" * 64)
    w = BundleWriter(tmp_path / "b", metadata={"input_size": 224})
    w.add("encoder-fp32-onnx", "onnx", "encoder", src / "encoder.onnx", precision="fp32",
          attrs={"accuracy": {"lmk_px_mean": 0.0}})
    w.add("encoder-fp32-ir", "openvino-ir", "encoder", [src / "encoder.xml", src / "encoder.bin"], precision="fp32")
    w.write()
    return tmp_path / "b"


def test_round_trip(bundle_dir):
    b = Bundle(bundle_dir)
    assert b.metadata == {"input_size": 224}
    assert [a.name for a in b.find(role="encoder")] == ["encoder-fp32-onnx", "encoder-fp32-ir"]
    ir = b.get("encoder-fp32-ir")
    assert b.main_path(ir).name == "encoder.xml"
    assert ir.files[1].sha256 == sha256_file(bundle_dir / "encoder.bin")
    b.verify_all()
    # extending keeps what was there
    w = BundleWriter(bundle_dir)
    assert set(w.artifacts) == {"encoder-fp32-onnx", "encoder-fp32-ir"}


def test_altered_file_is_refused_with_a_clear_message(bundle_dir):
    data = bytearray((bundle_dir / "encoder.onnx").read_bytes())
    data[5] ^= 0xFF
    (bundle_dir / "encoder.onnx").write_bytes(bytes(data))
    b = Bundle(bundle_dir)
    with pytest.raises(BundleError, match="sha256 of encoder.onnx .* the file was altered"):
        b.main_path(b.get("encoder-fp32-onnx"))
    (bundle_dir / "encoder.bin").write_bytes(b"\x01" * 10)
    with pytest.raises(BundleError, match="encoder.bin is 10 bytes"):
        b.main_path(b.get("encoder-fp32-ir"))


def test_missing_file(bundle_dir):
    (bundle_dir / "encoder.onnx").unlink()
    b = Bundle(bundle_dir)
    with pytest.raises(BundleError, match="missing"):
        b.main_path(b.get("encoder-fp32-onnx"))


@pytest.mark.parametrize("bad_path", ["../outside.onnx", "/etc/passwd", "sub/../../x", "C:\\x.onnx", "a\\..\\b"])
def test_path_traversal_is_refused(bundle_dir, bad_path):
    m = json.loads((bundle_dir / MANIFEST).read_text())
    m["artifacts"][0]["files"][0]["path"] = bad_path
    (bundle_dir / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match="path"):
        Bundle(bundle_dir)


def test_symlink_outside_is_refused(bundle_dir, tmp_path):
    outside = tmp_path / "secret.onnx"
    outside.write_bytes(ONNX_LIKE)
    (bundle_dir / "encoder.onnx").unlink()
    (bundle_dir / "encoder.onnx").symlink_to(outside)
    b = Bundle(bundle_dir)
    with pytest.raises(BundleError, match="outside the bundle"):
        b.main_path(b.get("encoder-fp32-onnx"))


@pytest.mark.parametrize("mutate, message", [
    (lambda m: m.update(schema="other"), "not a smirk-edge bundle manifest"),
    (lambda m: m.update(schema_version=99), "upgrade smirk-edge"),
    (lambda m: m["artifacts"][0].update(kind="pickle"), "unknown kind"),
    (lambda m: m["artifacts"][0].update(role="payload"), "unknown role"),
    (lambda m: m["artifacts"][0]["files"][0].update(sha256="abc"), "not a hex digest"),
    (lambda m: m["artifacts"][0].pop("files"), "lacks 'files'"),
    (lambda m: m["artifacts"].append(dict(m["artifacts"][0])), "unique"),
])
def test_malformed_manifests(bundle_dir, mutate, message):
    m = json.loads((bundle_dir / MANIFEST).read_text())
    mutate(m)
    (bundle_dir / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match=message):
        Bundle(bundle_dir)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="not found"):
        Bundle(tmp_path / "nope")
    with pytest.raises(BundleError, match="manifest.json is missing"):
        Bundle(tmp_path)
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        Bundle(tmp_path)


def _onnx_with_external(tmp_path, location):
    pytest.importorskip("onnx", reason="needs onnx to write a test model")
    from onnx import TensorProto, helper

    w = helper.make_tensor("w", TensorProto.FLOAT, [2], [1.0, 2.0])
    if location is not None:
        w.ClearField("float_data")
        w.data_location = TensorProto.EXTERNAL
        for k, v in (("location", location), ("offset", "0"), ("length", "8")):
            e = w.external_data.add()
            e.key, e.value = k, v
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    sub = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", [x], [y], [w])
    model = helper.make_model(sub)
    path = tmp_path / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


@pytest.mark.parametrize("location, listed, ok", [
    (None, False, True),                 # weights inside the file
    ("weights.bin", True, True),         # external data listed (and hashed) in the artifact
    ("weights.bin", False, False),       # external data not in the manifest
    ("../../etc/passwd", False, False),  # outside the bundle
    ("/etc/passwd", False, False),
])
def test_onnx_external_data_must_stay_in_the_artifact(tmp_path, location, listed, ok):
    src = tmp_path / "src"
    src.mkdir()
    model = _onnx_with_external(src, location)
    (src / "weights.bin").write_bytes(b"\x00" * 8)
    files = [model, src / "weights.bin"] if listed else [model]
    w = BundleWriter(tmp_path / "b")
    w.add("enc", "onnx", "encoder", files, precision="fp32")
    b = w.write()
    if ok:
        assert b.main_path(b.get("enc")).name == "model.onnx"
    else:
        with pytest.raises(BundleError, match="external data"):
            b.main_path(b.get("enc"))


def _external_tensor(name: str, location: str):
    from onnx import TensorProto, helper

    t = helper.make_tensor(name, TensorProto.FLOAT, [1], [0.0])
    t.data_location = TensorProto.EXTERNAL
    e = t.external_data.add()
    e.key, e.value = "location", location
    return t


def test_onnx_guard_finds_locations_in_subgraphs_and_rejects_garbage():
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from smirk_edge.onnx_guard import external_data_locations

    t = _external_tensor("c", "../x.bin")
    inner = helper.make_graph([helper.make_node("Constant", [], ["c"], value=t)], "inner", [],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [1])])
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    out = helper.make_tensor_value_info("o", TensorProto.FLOAT, [1])
    node = helper.make_node("If", ["cond"], ["o"], then_branch=inner, else_branch=inner)
    model = helper.make_model(helper.make_graph([node], "g", [cond], [out]))
    assert external_data_locations(model.SerializeToString()) == ["../x.bin", "../x.bin"]
    with pytest.raises(BundleError):
        external_data_locations(b"\x3a\xff\xff\xff\xff\x0f")  # graph field claiming 4 GB


def test_onnx_guard_reads_function_attribute_defaults_and_training_graphs():
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from smirk_edge.onnx_guard import external_data_locations

    t = _external_tensor("w", "../../etc/shadow")
    fn = onnx.FunctionProto(name="F", domain="custom")
    fn.attribute_proto.add().CopyFrom(helper.make_attribute("value", t))  # a default attribute value
    node = helper.make_node("Constant", [], ["y"], value_float=1.0)
    graph = helper.make_graph([node], "g", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])])
    assert external_data_locations(helper.make_model(graph, functions=[fn]).SerializeToString()) == [
        "../../etc/shadow"]
    model = helper.make_model(graph)
    model.training_info.add().initialization.CopyFrom(helper.make_graph([], "init", [], [], initializer=[t]))
    assert external_data_locations(model.SerializeToString()) == ["../../etc/shadow"]
