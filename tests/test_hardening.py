"""Hardening: fuzzed frames, files, manifests and face models give typed errors only; engine
fallback; concurrency contract."""

import json
import os
import threading
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from factories import random_face_model_arrays
from smirk_edge.bundle import MANIFEST, Bundle
from smirk_edge.errors import BundleError, FaceModelError, InputError
from smirk_edge.face_model import FaceModel
from smirk_edge.image import as_bgr_uint8, decode_image

# CI budget; the long harness run sets SMIRK_EDGE_FUZZ_EXAMPLES (see docs/hardening.md)
CI_EXAMPLES = int(os.environ.get("SMIRK_EDGE_FUZZ_EXAMPLES", "60"))

DTYPES = [np.uint8, np.uint16, np.int8, np.int16, np.int32, np.int64, np.float16, np.float32, np.float64,
          np.bool_, np.complex64]


@st.composite
def frames(draw):
    dtype = draw(st.sampled_from(DTYPES))
    ndim = draw(st.integers(0, 4))
    shape = tuple(draw(st.lists(st.integers(0, 40), min_size=ndim, max_size=ndim)))
    if ndim == 3 and draw(st.booleans()):
        shape = shape[:2] + (draw(st.sampled_from([1, 3, 4])),)
    arr = draw(hnp.arrays(dtype, shape, elements=None if dtype != np.bool_ else st.booleans()))
    layout = draw(st.sampled_from(["c", "f", "strided"]))
    if layout == "f":
        arr = np.asfortranarray(arr)
    elif layout == "strided" and arr.ndim >= 2 and arr.shape[0] > 1:
        arr = arr[::2]
    return arr


@settings(max_examples=CI_EXAMPLES * 3, deadline=None)
@given(frames())
def test_any_array_is_converted_or_refused_with_input_error(arr):
    try:
        out = as_bgr_uint8(arr)
    except InputError:
        return
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3 and out.flags.c_contiguous


@settings(max_examples=CI_EXAMPLES * 3, deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes_as_image_files(data):
    try:
        img = decode_image(data)
    except InputError:
        return
    assert img.dtype == np.uint8 and img.shape[2] == 3


def _truncations():
    import cv2

    ok, jpg = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    data = jpg.tobytes()
    return [data[:n] for n in (0, 2, 10, 100, len(data) // 2)]


@pytest.mark.parametrize("data", _truncations())
def test_truncated_jpeg(data):
    try:
        img = decode_image(data)
    except InputError:
        return
    assert img.shape[2] == 3  # libjpeg may recover a partial image: that is a valid, documented outcome


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
                           lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4),
                           max_leaves=20)


def _reach(base, target):
    """The dict a mutation targets, or None when earlier mutations made it unreachable."""
    if target == "top":
        return base
    arts = base.get("artifacts")
    if not isinstance(arts, list) or not arts or not isinstance(arts[0], dict):
        return None
    if target == "artifact":
        return arts[0]
    files = arts[0].get("files")
    return files[0] if isinstance(files, list) and files and isinstance(files[0], dict) else None


@st.composite
def manifests(draw):
    base = {"schema": "smirk-edge-bundle", "schema_version": 1, "metadata": {}, "artifacts": [
        {"name": "e", "kind": "onnx", "role": "encoder", "precision": "fp32",
         "files": [{"path": "encoder.onnx", "sha256": "0" * 64, "bytes": 4}]}]}
    for _ in range(draw(st.integers(1, 4))):
        target = draw(st.sampled_from(["top", "artifact", "file"]))
        key = draw(st.sampled_from(["schema", "schema_version", "artifacts", "name", "kind", "role", "precision",
                                    "files", "path", "sha256", "bytes", "attrs", "metadata"]))
        value = draw(json_values)
        node = _reach(base, target)
        if isinstance(node, dict):
            node[key] = value
    return base


@settings(max_examples=CI_EXAMPLES * 2, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(manifests())
def test_random_manifests(tmp_path, m):
    (tmp_path / MANIFEST).write_text(json.dumps(m))
    (tmp_path / "encoder.onnx").write_bytes(b"abcd")
    try:
        b = Bundle(tmp_path)
    except BundleError:
        return
    for a in b.artifacts:  # a manifest that parses still cannot point outside or skip the hash check
        try:
            p = b.main_path(a)
        except BundleError:
            continue
        assert tmp_path.resolve() in p.resolve().parents


@st.composite
def broken_face_models(draw):
    arrays = random_face_model_arrays(nx=6, ny=7, seed=draw(st.integers(0, 3)))
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(sorted(arrays)))
        action = draw(st.sampled_from(["drop", "shape", "dtype", "nan", "index"]))
        a = arrays[key]
        if action == "drop":
            del arrays[key]
        elif action == "shape":
            arrays[key] = a.reshape(-1)[: max(1, a.size - 1)]
        elif action == "dtype":
            arrays[key] = a.astype(draw(st.sampled_from([np.float64, np.int64, np.complex64, np.bool_])))
        elif action == "nan" and a.dtype.kind == "f":
            arrays[key] = np.where(np.arange(a.size).reshape(a.shape) == 0, np.nan, a)
        elif action == "index" and a.dtype.kind == "i":
            arrays[key] = a + draw(st.integers(-10_000, 10_000))
    return arrays


@settings(max_examples=CI_EXAMPLES * 2, deadline=None)
@given(broken_face_models())
def test_random_face_models(arrays):
    try:
        m = FaceModel(arrays)
    except FaceModelError:
        return
    g = m.decode(pose=[0.1, 0.2, 0.0])
    assert np.isfinite(g.vertices).all() and np.isfinite(g.landmarks68).all()


@settings(max_examples=CI_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=4096))
def test_random_npz_bytes(tmp_path, data):
    p = tmp_path / "m.npz"
    p.write_bytes(data)
    with pytest.raises(FaceModelError):
        FaceModel.load(p)


# ---------------------------------------------------------------- engines: fallback and threads
torch = pytest.importorskip("torch", reason="building test bundles needs torch")
pytest.importorskip("onnxruntime", reason="needs onnxruntime")
from factories import make_tiny_bundle  # noqa: E402
from smirk_edge.reconstructor import Reconstructor  # noqa: E402
from smirk_edge.runtimes.registry import EngineFallbackWarning  # noqa: E402


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    b, _ = make_tiny_bundle(tmp_path_factory.mktemp("hard") / "b", openvino=True)
    return b.root


def test_fallback_when_the_preferred_artifact_is_broken(bundle_dir, tmp_path):
    import shutil

    pytest.importorskip("openvino")
    broken = tmp_path / "broken"
    shutil.copytree(bundle_dir, broken)
    with open(broken / "encoder.onnx", "r+b") as f:  # ONNX Runtime's (first-ranked) artifact: hash no longer matches
        f.seek(100)
        f.write(b"\x00\x01\x02\x03")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rec = Reconstructor(broken, backend="auto")
    fallbacks = [w for w in caught if issubclass(w.category, EngineFallbackWarning)]
    assert len(fallbacks) == 1 and "sha256" in str(fallbacks[0].message)
    assert "fell back" in rec.selection_reason
    faces = rec(np.zeros((64, 64, 3), np.uint8))
    assert faces == []
    assert rec.encoder.engine in ("openvino", "onnxruntime") and rec.artifact.name != "encoder.onnx"
    rec.close()


def test_explicit_backend_does_not_fall_back(bundle_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(bundle_dir, broken)
    (broken / "encoder.onnx").write_bytes(b"not onnx")
    with pytest.raises(Exception) as err:
        Reconstructor(broken, backend="onnxruntime")
    assert "encoder.onnx" in str(err.value)


def _photos(shared_data, n=3):
    import cv2

    return [cv2.imread(str(p)) for p in sorted((shared_data / "photos").glob("*.jpg"))[:n]]


def _summary(faces):
    return [np.concatenate([f.landmarks105.ravel(), f.params.expression]) for f in faces]


@pytest.mark.parametrize("shared_instance", [False, True])
def test_threads_give_serial_results(bundle_dir, shared_data, shared_instance):
    images = _photos(shared_data)
    with Reconstructor(bundle_dir, backend="onnxruntime", threads=1) as rec:
        serial = [_summary(rec(im)) for im in images]
        results: dict[tuple[int, int], list] = {}
        errors = []

        def work(tid):
            try:
                r = rec if shared_instance else Reconstructor(bundle_dir, backend="onnxruntime", threads=1)
                for i, im in enumerate(images):
                    results[(tid, i)] = _summary(r(im))
                if not shared_instance:
                    r.close()
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors
    for (tid, i), got in results.items():
        assert len(got) == len(serial[i])
        for a, b in zip(got, serial[i]):
            np.testing.assert_allclose(a, b, atol=1e-5)
