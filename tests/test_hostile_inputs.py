"""Hostile files, second round: generators for each class of input an attacker controls.

Images whose headers lie or that are real decompression bombs, file names that are not UTF-8,
archives that lie about their sizes, pickles of shared-reference or ragged lists, manifests nested
deep or holding huge numbers, symlink loops, ONNX function attributes naming external data.
Every case must end in a typed error (or a correct result) without allocating what it declares.
The CI budget is ``SMIRK_EDGE_FUZZ_EXAMPLES`` (60) cases per property; see docs/hardening.md.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import tracemalloc
import zlib

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from factories import random_face_model_arrays
from smirk_edge import image as im
from smirk_edge.benchmarks import hostile
from smirk_edge.bundle import MANIFEST, Bundle, BundleWriter, parse_manifest_text
from smirk_edge.errors import BundleError, FaceModelError, InputError, OutputError, UnsafeFileError
from smirk_edge.face_model import FaceModel
from smirk_edge.face_model import format as fmt
from smirk_edge.fileio import atomic_write, display_path, opencv_readable_path
from smirk_edge.image import apply_orientation, decode_image, load_image, save_image

CI_EXAMPLES = int(os.environ.get("SMIRK_EDGE_FUZZ_EXAMPLES", "60"))
FAST = settings(max_examples=CI_EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture
def no_decoder(monkeypatch):
    """Fail the test if OpenCV's decoder is reached: bombs must be refused from the header."""
    def refuse(*a, **k):
        raise AssertionError("cv2.imdecode was called for an input over the budget")

    monkeypatch.setattr(im.cv2, "imdecode", refuse)


# ----------------------------------------------------------------------------- image headers that lie
@FAST
@given(fmt_=st.sampled_from(["png", "jpeg", "bmp", "webp", "tiff", "pnm"]),
       w=st.integers(1, 60000), h=st.integers(1, 60000))
def test_image_headers_that_lie_are_refused_before_decoding(fmt_, w, h):
    data = hostile.lying_header(fmt_, w, h)
    info = im.image_info(data)
    over = (info.width * info.height > im.MAX_PIXELS or info.decoded_bytes > im.MAX_DECODED_BYTES
            or max(info.width, info.height) > im.MAX_SIDE)
    if over:
        real = im.cv2.imdecode
        im.cv2.imdecode = _refuse
        try:
            with pytest.raises(InputError, match="over the limit|on a side"):
                decode_image(data)
        finally:
            im.cv2.imdecode = real
    else:  # a small lie: the decoder finds the data short (typed error) or decodes what is there
        try:
            img = decode_image(data)
        except InputError:
            return
        assert img.shape[0] * img.shape[1] <= info.width * info.height


def _refuse(*a, **k):
    raise AssertionError("cv2.imdecode was called for an input over the budget")


@pytest.mark.parametrize("width,height,depth,color", [
    (9000, 9000, 8, 0),      # 81 Mpx grey: over the pixel budget
    (20000, 5000, 8, 2),     # 100 Mpx RGB
    (7000, 7000, 16, 6),     # 49 Mpx 16-bit RGBA = 374 MiB decoded: over the byte budget
])
def test_real_png_bombs_are_refused_before_decoding(tmp_path, no_decoder, width, height, depth, color):
    path = tmp_path / "bomb.png"
    path.write_bytes(hostile.png_bomb(width, height, depth, color))
    info = im.image_info(path.read_bytes())
    assert (info.width, info.height) == (width, height)
    with pytest.raises(InputError, match="refused before decoding"):
        load_image(path)
    assert path.stat().st_size < 1 << 20  # small file, huge image


def test_png_bomb_within_budget_decodes(tmp_path):
    path = tmp_path / "ok.png"
    path.write_bytes(hostile.png_bomb(3000, 2000, 16, 6))
    img = load_image(path)
    assert img.shape == (2000, 3000, 3) and img.dtype == np.uint8 and not img.any()


@FAST
@given(st.binary(min_size=0, max_size=64), st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8", b"BM", b"II*\x00",
                                                           b"MM\x00*", b"RIFF\x00\x00\x00\x00WEBP", b"P6", b"Pf"]))
def test_truncated_and_garbled_headers_are_typed(tail, magic):
    with pytest.raises(InputError):
        decode_image(magic + tail)


# ----------------------------------------------------------------------------- EXIF orientation
def _exif_app1(orientation: int) -> bytes:
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1) + struct.pack("<HHII", 0x0112, 3, 1, orientation)
    body = b"Exif\x00\x00" + tiff + struct.pack("<I", 0)
    return b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_like_opencv(tmp_path, orientation):
    rng = np.random.default_rng(orientation)
    stored = (rng.random((30, 50, 3)) * 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", stored, [cv2.IMWRITE_JPEG_QUALITY, 100])
    data = buf.tobytes()
    data = data[:2] + _exif_app1(orientation) + data[2:]
    path = tmp_path / "phone.jpg"
    path.write_bytes(data)
    got = load_image(path)
    reference = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)  # OpenCV's own EXIF handling
    assert got.shape == reference.shape
    np.testing.assert_array_equal(got, reference)
    assert got.shape[:2] == ((50, 30) if orientation >= 5 else (30, 50))


def test_exif_orientation_reaches_the_reconstructor_path_call(tmp_path, shared_data):
    """A phone photo stored lying on its side (orientation 6) is read upright from its path."""
    photo = cv2.imread(str(sorted((shared_data / "photos").glob("*.jpg"))[0]))
    stored = cv2.rotate(photo, cv2.ROTATE_90_COUNTERCLOCKWISE)  # what the sensor wrote
    ok, buf = cv2.imencode(".jpg", stored, [cv2.IMWRITE_JPEG_QUALITY, 98])
    data = buf.tobytes()
    path = tmp_path / "phone.jpg"
    path.write_bytes(data[:2] + _exif_app1(6) + data[2:])
    upright = load_image(path)
    assert upright.shape == photo.shape
    assert np.abs(upright.astype(int) - photo.astype(int)).mean() < 4
    pytest.importorskip("onnxruntime")
    from smirk_edge.reconstructor import Reconstructor

    with Reconstructor(backend="onnxruntime", threads=1) as rec:  # the embedded default model
        from_path, from_array = rec(str(path)), rec(photo)
    assert len(from_path) == len(from_array) >= 1
    for a, b in zip(from_path, from_array):
        np.testing.assert_allclose(a.box, b.box, atol=0.03 * photo.shape[1])


def test_png_exif_chunk(tmp_path):
    img = np.zeros((10, 20, 3), np.uint8)
    img[:, :5] = 255
    ok, buf = cv2.imencode(".png", img)
    data = buf.tobytes()
    tiff = b"MM\x00*" + struct.pack(">I", 8) + struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1, 8, 0) + b"\0" * 4
    chunk = struct.pack(">I", len(tiff)) + b"eXIf" + tiff + struct.pack(">I", zlib.crc32(b"eXIf" + tiff))
    with_exif = data[:33] + chunk + data[33:]
    np.testing.assert_array_equal(decode_image(with_exif), apply_orientation(img, 8))
    assert decode_image(with_exif, orient=False).shape == img.shape


# ----------------------------------------------------------------------------- conversions
@pytest.mark.parametrize("dtype,channels", [(np.uint16, 4), (np.uint16, 3), (np.uint16, 1), (np.float32, 3),
                                            (np.float64, 4), (np.float16, 3)])
def test_frame_conversion_needs_no_full_size_temporaries(dtype, channels):
    h, w = 2000, 2400
    shape = (h, w) if channels == 1 else (h, w, channels)
    frame = np.full(shape, 0.25 if np.dtype(dtype).kind == "f" else 30000, dtype)
    tracemalloc.start()
    try:
        out = im.as_bgr_uint8(frame)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    out_bytes = h * w * 3
    # the output (plus, for grey, the one-channel stage) and blocks of about 1 M values
    assert peak <= out_bytes * (1.4 if channels == 1 else 1.05) + 9 * (1 << 20), (peak, frame.nbytes)
    expect = 64 if np.dtype(dtype).kind == "f" else 30000 // 257
    assert out.shape == (h, w, 3) and int(out[0, 0, 0]) == expect


def test_conversion_values_match_the_documented_table():
    rng = np.random.default_rng(3)
    u16 = rng.integers(0, 65536, (37, 29, 4), dtype=np.uint16)
    np.testing.assert_array_equal(im.as_bgr_uint8(u16), (u16[:, :, :3] // 257).astype(np.uint8))
    f = rng.random((37, 29, 3)).astype(np.float64) * 1.4 - 0.2
    np.testing.assert_array_equal(im.as_bgr_uint8(f), np.clip(f.astype(np.float32) * 255 + 0.5, 0, 255).astype(np.uint8))
    bad = np.zeros((5, 5, 4), np.float32)
    bad[4, 4, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        im.as_bgr_uint8(bad)


# ----------------------------------------------------------------------------- file names (bytes)
names = st.binary(min_size=1, max_size=40).filter(lambda b: b"/" not in b and b"\x00" not in b
                                                 and b not in (b".", b".."))


@FAST
@given(raw=names)
def test_any_file_name_loads_and_saves(tmp_path_factory, raw):
    d = tmp_path_factory.mktemp("names")
    path = os.path.join(os.fsencode(d), raw + b".png")
    img = np.full((8, 9, 3), 7, np.uint8)
    ok, buf = cv2.imencode(".png", img)
    with open(path, "wb") as f:
        f.write(buf.tobytes())
    spath = os.fsdecode(path)  # lone surrogates when not UTF-8: what os.listdir gives
    np.testing.assert_array_equal(load_image(spath), img)
    out = os.fsdecode(os.path.join(os.fsencode(d), b"out-" + raw + b".jpg"))
    save_image(out, img)
    assert load_image(out).shape == img.shape
    with opencv_readable_path(spath) as p:
        p.encode("utf-8")  # never a surrogate str for OpenCV
        assert cv2.imread(p) is not None
    text = display_path(spath)
    text.encode("utf-8")  # printable
    assert sorted(os.listdir(d)) == sorted([os.fsdecode(raw + b".png"), os.fsdecode(b"out-" + raw + b".jpg")])


def test_atomic_write_leaves_old_file_when_it_fails(tmp_path, monkeypatch):
    target = tmp_path / "r.json"
    target.write_text("old")

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OutputError, match="No space"):
        atomic_write(target, "new")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["r.json"]


def test_encoder_refusal_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(im.cv2, "imencode", lambda *a, **k: (False, None))
    with pytest.raises(OutputError, match="returned False"):
        save_image(tmp_path / "x.jpg", np.zeros((4, 4, 3), np.uint8))
    assert not os.listdir(tmp_path)


# ----------------------------------------------------------------------------- archives that lie
def _face_model_npz() -> bytes:
    import io

    buf = io.BytesIO()
    payload = dict(random_face_model_arrays(nx=4, ny=4))
    payload.update(format=np.array(fmt.FORMAT_NAME), format_version=np.array(fmt.FORMAT_VERSION, np.int32),
                   model_id=np.array("t"), notice=np.array(""))
    np.savez(buf, **payload)
    return buf.getvalue()


@FAST
@given(shape=st.lists(st.integers(1, 10**6), min_size=1, max_size=4), payload=st.integers(0, 4096),
       member=st.sampled_from(["shapedirs", "v_template", "faces", "format"]))
def test_npz_members_that_lie_about_their_shape(shape, payload, member):
    data = hostile.npz_lying_header(tuple(shape), payload, member)
    with pytest.raises(FaceModelError) as err:
        FaceModel.load(data)
    assert len(str(err.value)) < 600
    if member == "format":  # a second 'format' entry: an archive that lies by duplicating names
        assert "same name" in str(err.value)
    elif 4 * int(np.prod(shape)) > payload:  # the entry lies: caught from its header, before allocating
        assert "declares an array" in str(err.value)


def test_npz_zip_bomb_is_refused_from_the_zip_directory(monkeypatch):
    from smirk_edge import npz_guard

    monkeypatch.setattr(npz_guard, "MAX_ARRAY_BYTES", 1 << 20)
    data = hostile.npz_zip_bomb(8 << 20)
    assert len(data) < 100_000
    with pytest.raises(FaceModelError, match="uncompressed bytes"):
        FaceModel.load(data)


@FAST
@given(cut=st.integers(0, 10**6), flip=st.integers(0, 10**6))
def test_damaged_face_model_archives(cut, flip):
    data = bytearray(_face_model_npz())
    data[flip % len(data)] ^= 0xFF
    data = bytes(data[: max(1, len(data) - cut % len(data))])
    try:
        FaceModel.load(data)
    except FaceModelError as exc:
        assert len(str(exc)) < 1000
    # a flip inside padding can leave the model intact: loading then succeeds


def test_face_model_error_does_not_quote_the_file():
    junk = b"PK\x03\x04" + os.urandom(3 << 20)
    with pytest.raises(FaceModelError) as err:
        FaceModel.load(junk)
    assert len(str(err.value)) < 500 and "bytes>" in str(err.value)


def test_npy_header_that_lies(tmp_path):
    from smirk_edge.face_model.convert import read_eyelid

    p = tmp_path / "l_eyelid.npy"
    p.write_bytes(hostile._npy_header((5023, 3, 10**6)) + b"\0" * 100)
    with pytest.raises(FaceModelError, match="declares an array"):
        read_eyelid(p, 5023, "left")
    p.write_bytes(hostile._npy_header((5023, 3)) + b"\0" * 100)
    with pytest.raises(FaceModelError, match="holds only"):
        read_eyelid(p, 5023, "left")


# ----------------------------------------------------------------------------- pickles
@FAST
@given(vertices=st.integers(1000, 20000), columns=st.integers(20_000, 60_000), depth=st.integers(0, 2))
def test_pickles_of_shared_reference_lists(tmp_path_factory, vertices, columns, depth):
    from smirk_edge.face_model.convert import read_flame_model

    row = [0.0] * columns
    sd = [[row] * 3] * vertices
    for _ in range(depth):
        sd = [sd[0]] * vertices  # deeper sharing, same declared shape per level
    d = hostile.flame_dict(v_template=[[0.0, 0.0, 0.0]] * vertices, shapedirs=sd)
    p = tmp_path_factory.mktemp("pkl") / "generic_model.pkl"
    p.write_bytes(pickle.dumps(d, protocol=2))
    with pytest.raises((UnsafeFileError, FaceModelError)) as err:
        read_flame_model(p)
    assert len(str(err.value)) < 1200


ragged = st.recursive(st.floats(allow_nan=False, allow_infinity=False, width=32),
                      lambda inner: st.lists(inner, min_size=0, max_size=4), max_leaves=30)


@FAST
@given(value=ragged, key=st.sampled_from(["v_template", "shapedirs", "f", "weights", "kintree_table"]))
def test_pickles_of_ragged_or_odd_lists(tmp_path_factory, value, key):
    from smirk_edge.face_model.convert import read_flame_model

    p = tmp_path_factory.mktemp("pkl") / "generic_model.pkl"
    p.write_bytes(pickle.dumps(hostile.flame_dict(**{key: value}), protocol=2))
    with pytest.raises(FaceModelError):
        read_flame_model(p)


def test_valid_list_pickle_still_reads(tmp_path):
    from smirk_edge.face_model.convert import read_flame_model

    p = tmp_path / "generic_model.pkl"
    p.write_bytes(pickle.dumps(hostile.flame_dict(), protocol=2))
    out = read_flame_model(p)
    assert out["shapedirs"].shape == (4, 3, fmt.N_SHAPE) and out["faces"].shape == (2, 3)


# ----------------------------------------------------------------------------- manifests
@FAST
@given(depth=st.integers(33, 200_000), where=st.sampled_from(["metadata", "attrs"]))
def test_deeply_nested_manifests(depth, where):
    raw = hostile.manifest_deep(depth)
    with pytest.raises(BundleError, match="deep"):
        parse_manifest_text(raw, "manifest.json")


@FAST
@given(digits=st.integers(31, 20_000), sign=st.sampled_from(["", "-"]))
def test_huge_numbers_in_manifests(digits, sign):
    raw = b'{"schema": "smirk-edge-bundle", "schema_version": ' + sign.encode() + b"7" * digits + b"}"
    with pytest.raises(BundleError, match="digits"):
        parse_manifest_text(raw, "manifest.json")


@pytest.fixture
def small_bundle(tmp_path):
    fm = tmp_path / "src" / "face_model.npz"
    fm.parent.mkdir()
    fmt.save(fm, random_face_model_arrays(nx=4, ny=4), model_id="t")
    w = BundleWriter(tmp_path / "b")
    w.add("face_model.npz", "face-model", "face_model", fm)
    return w.write().root


@pytest.mark.parametrize("value", ["false", "true", 0, 1, None, [], "no"])
def test_degraded_must_be_a_boolean(small_bundle, value):
    m = json.loads((small_bundle / MANIFEST).read_text())
    m["artifacts"][0]["attrs"] = {"degraded": value}
    (small_bundle / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match="degraded must be true or false"):
        Bundle(small_bundle)
    m["artifacts"][0]["attrs"] = {"degraded": False}
    (small_bundle / MANIFEST).write_text(json.dumps(m))
    assert Bundle(small_bundle).artifacts[0].attrs["degraded"] is False


def test_symlink_loop_among_artifacts(small_bundle):
    m = json.loads((small_bundle / MANIFEST).read_text())
    m["artifacts"][0]["files"][0]["path"] = "loop_a"
    (small_bundle / MANIFEST).write_text(json.dumps(m))
    os.symlink("loop_b", small_bundle / "loop_a")
    os.symlink("loop_a", small_bundle / "loop_b")
    b = Bundle(small_bundle)
    with pytest.raises(BundleError, match="symbolic-link loop"):
        b.main_path(b.artifacts[0])


@FAST
@given(field=st.sampled_from(["name", "kind", "role", "precision", "path"]), size=st.integers(300, 200_000))
def test_huge_manifest_values_give_short_messages(small_bundle, field, size):
    m = json.loads((small_bundle / MANIFEST).read_text())
    art = m["artifacts"][0]
    if field == "path":
        art["files"][0]["path"] = "x" * size
    else:
        art[field] = "y" * size
    (small_bundle / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError) as err:
        Bundle(small_bundle)
    assert len(str(err.value)) < 600
