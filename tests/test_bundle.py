"""Bundle manifest: round trip, checksum verification, refusal of hostile manifests."""

import json

import pytest

from smirk_edge.bundle import MANIFEST, Bundle, BundleWriter, sha256_file
from smirk_edge.errors import BundleError


@pytest.fixture()
def bundle_dir(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "encoder.onnx").write_bytes(b"onnx-bytes" * 100)
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
    outside.write_bytes(b"onnx-bytes" * 100)
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
