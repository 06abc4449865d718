"""The face-model .npz: save/load round trip and clear errors for bad files."""

import numpy as np
import pytest

from factories import random_face_model_arrays, random_params
from smirk_edge.errors import FaceModelError, InputError
from smirk_edge.face_model import FaceModel, format as fmt


def test_round_trip(tmp_path):
    arrays = random_face_model_arrays(seed=1)
    path = fmt.save(tmp_path / "m.npz", arrays, model_id="test-model", notice="made in a test")
    m = FaceModel.load(path)
    assert m.model_id == "test-model" and m.notice == "made in a test"
    for k, v in arrays.items():
        np.testing.assert_array_equal(m.arrays[k], v)
    # bytes work too (bundles hand files over as bytes after checking their hash)
    m2 = FaceModel.load(path.read_bytes())
    np.testing.assert_array_equal(m2.v_template, m.v_template)


def test_missing_and_misshaped_arrays_are_named():
    arrays = random_face_model_arrays()
    bad = dict(arrays)
    del bad["exprdirs"], bad["lbs_weights"]
    with pytest.raises(FaceModelError, match="missing arrays: exprdirs, lbs_weights"):
        FaceModel(bad)
    bad = dict(arrays, shapedirs=arrays["shapedirs"][:, :, :100])
    with pytest.raises(FaceModelError, match="'shapedirs' has shape"):
        FaceModel(bad)
    bad = dict(arrays, lbs_weights=arrays["lbs_weights"][:-1])
    with pytest.raises(FaceModelError, match="dimension V"):
        FaceModel(bad)
    bad = dict(arrays, faces=arrays["faces"] + 10_000)
    with pytest.raises(FaceModelError, match="out of range"):
        FaceModel(bad)
    bad = dict(arrays, v_template=np.full_like(arrays["v_template"], np.nan))
    with pytest.raises(FaceModelError, match="NaN"):
        FaceModel(bad)
    bad = dict(arrays, parents=np.array([0, 0, 1, 1, 1]))
    with pytest.raises(FaceModelError, match="parents"):
        FaceModel(bad)


def test_unreadable_files(tmp_path):
    with pytest.raises(FaceModelError, match="not found"):
        FaceModel.load(tmp_path / "nope.npz")
    (tmp_path / "junk.npz").write_bytes(b"\x00" * 100)
    with pytest.raises(FaceModelError, match="cannot read"):
        FaceModel.load(tmp_path / "junk.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(FaceModelError, match="not a smirk-edge face model"):
        FaceModel.load(tmp_path / "other.npz")


def test_pickled_arrays_are_refused(tmp_path):
    arrays = random_face_model_arrays()
    payload = dict(arrays, format=np.array(fmt.FORMAT_NAME), format_version=np.array(1), model_id=np.array("x"),
                   notice=np.array(""))
    payload["faces"] = np.array([{"evil": 1}], dtype=object)
    np.savez(tmp_path / "pickled.npz", **payload)
    with pytest.raises(FaceModelError, match="cannot read"):
        FaceModel.load(tmp_path / "pickled.npz")


def test_newer_format_version_says_upgrade(tmp_path):
    path = fmt.save(tmp_path / "m.npz", random_face_model_arrays(), model_id="m")
    data = dict(np.load(path))
    data["format_version"] = np.array(fmt.FORMAT_VERSION + 1)
    np.savez(path, **data)
    with pytest.raises(FaceModelError, match="upgrade smirk-edge"):
        FaceModel.load(path)


def test_decode_rejects_bad_parameters():
    m = FaceModel(random_face_model_arrays())
    with pytest.raises(InputError, match=r"shape must have shape \(B, 300\)"):
        m.decode(shape=np.zeros((2, 100)))
    with pytest.raises(InputError, match="batch size"):
        m.decode(shape=np.zeros((2, 300)), expression=np.zeros((3, 50)))
    with pytest.raises(InputError, match="NaN"):
        m.decode(pose=np.array([np.nan, 0, 0]))


def test_decode_shapes_and_dtypes():
    m = FaceModel(random_face_model_arrays())
    g = m.decode(**random_params(5))
    assert g.vertices.shape == (5, m.n_vertices, 3) and g.vertices.dtype == np.float32
    assert g.landmarks68.shape == (5, 68, 3) and g.landmarks105.shape == (5, 105, 3)
    single = m.decode(**{k: v[0] for k, v in random_params(5).items()})
    np.testing.assert_allclose(single.vertices[0], g.vertices[0], atol=1e-6)
