"""Only what is read is computed: a face's vertices, landmarks and head pose are decoded and
projected when first read, and equal what the eager stages (decode, project, head_poses) give."""

from __future__ import annotations

import copy
import pickle
import threading

import cv2
import numpy as np
import pytest

from smirk_edge import pipeline as P
from smirk_edge.results import DEFERRED_FIELDS, Deferred, Face

pytestmark = pytest.mark.onnxruntime


@pytest.fixture(scope="module")
def rec():
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install 'smirk-edge[onnxruntime]')")
    from smirk_edge import Reconstructor

    with Reconstructor(backend="onnxruntime", precision="fp32", threads=1, refine=False) as r:
        yield r


@pytest.fixture(scope="module")
def group_photo(shared_data):
    return cv2.imread(str(shared_data / "photos" / "2008_002506.jpg"))


class Counting:
    """Wraps a FaceModel and counts its decode calls."""

    def __init__(self, fm):
        self.fm, self.calls = fm, 0

    def __getattr__(self, name):
        return getattr(self.fm, name)

    def decode(self, **kw):
        self.calls += 1
        return self.fm.decode(**kw)


def eager(rec, faces):
    """What the stages computed before outputs were deferred: decode, image_affines, project, head_poses."""
    params = {k: np.stack([getattr(f.params, k) for f in faces]) for k in ("pose", "cam", "shape", "expression",
                                                                            "eyelid", "jaw")}
    geometry = P.decode(rec.face_model, params)
    affines = P.image_affines(params["cam"], [f.crop_matrix for f in faces], rec.stages.policy.size)
    projected = P.project(geometry, affines)
    poses = P.head_poses(params["pose"], [f.crop_matrix for f in faces])
    return geometry, projected, poses


def assert_equal_to_eager(rec, faces):
    geometry, projected, poses = eager(rec, faces)
    for i, f in enumerate(faces):
        np.testing.assert_array_equal(f.vertices, geometry.vertices[i])
        np.testing.assert_array_equal(f.vertices_image, projected.vertices[i])
        np.testing.assert_array_equal(f.landmarks68, projected.landmarks68[i])
        np.testing.assert_array_equal(f.landmarks105, projected.landmarks105[i])
        np.testing.assert_array_equal(f.head_pose, poses[i])
        assert f.vertices.dtype == f.landmarks68.dtype == f.head_pose.dtype == np.float32


def test_nothing_is_decoded_until_read(rec, group_photo, monkeypatch):
    counting = Counting(rec.face_model)
    monkeypatch.setattr(rec.stages, "face_model", counting)
    faces = rec(group_photo)
    assert len(faces) == 3 and counting.calls == 0
    assert all(f.pending() == DEFERRED_FIELDS for f in faces)
    assert faces.timings["decode"] == 0.0  # nothing decoded in the call
    _ = [f.params.expression for f in faces]  # parameters only: still nothing
    assert counting.calls == 0
    lm = faces[1].landmarks68  # the whole frame decodes once, only the 68 points are projected
    assert lm.shape == (68, 2) and counting.calls == 1
    assert faces[0].pending() == ("vertices", "vertices_image", "landmarks68", "landmarks105", "head_pose")
    _ = [f.vertices for f in faces] + [f.landmarks68 for f in faces]
    assert counting.calls == 1 and all(f.pending() == ("vertices_image", "landmarks105", "head_pose") for f in faces)
    assert_equal_to_eager(rec, faces)  # (decodes with rec.face_model, not the counted one)
    assert counting.calls == 1


@pytest.mark.parametrize("refine", [True, "auto"])
def test_values_equal_the_eager_stages_with_refine(group_photo, refine):
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install 'smirk-edge[onnxruntime]')")
    from smirk_edge import Reconstructor

    with Reconstructor(backend="onnxruntime", precision="fp32", threads=1, refine=refine,
                       refine_threshold=0.05) as r:
        faces = r(group_photo)
        assert len(faces) == 3
        assert_equal_to_eager(r, faces)


def test_a_stream_decodes_once_per_frame_and_projects_no_vertices(rec, group_photo, monkeypatch):
    seen = []
    real = rec.stages.faces

    def capturing(params, crops, boxes, scores, timer, affines=None, track_ids=None, geometry=None):
        seen.append(({k: v.copy() for k, v in params.items()}, np.array(affines)))  # smoothed parameters, affines
        return real(params, crops, boxes, scores, timer, affines, track_ids, geometry)

    monkeypatch.setattr(rec.stages, "faces", capturing)
    frames = [np.roll(group_photo, 3 * k, axis=1) for k in range(3)]
    for res in rec.stream(frames, on_error="raise"):
        assert len(res) == 3 and res.timings["decode"] > 0  # the tracker reads the 105 points
        assert all(f.pending() == ("vertices", "vertices_image", "landmarks68", "head_pose") for f in res)
        params, affines = seen[-1]
        geometry = P.decode(rec.face_model, params)
        projected = P.project(geometry, affines)
        poses = P.head_poses(params["pose"], [f.crop_matrix for f in res])
        for i, f in enumerate(res):
            np.testing.assert_array_equal(f.vertices, geometry.vertices[i])
            np.testing.assert_array_equal(f.vertices_image, projected.vertices[i])
            np.testing.assert_array_equal(f.landmarks68, projected.landmarks68[i])
            np.testing.assert_array_equal(f.landmarks105, projected.landmarks105[i])
            np.testing.assert_array_equal(f.head_pose, poses[i])


def test_plain_geometry_is_used_as_given(rec, group_photo):
    """The eager path (a decode and projection computed elsewhere, e.g. on a GPU) still assembles as before."""
    faces = rec(group_photo)
    geometry, projected, poses = eager(rec, faces)
    crops = P.Crops([P.CropTransform(f.crop_matrix) for f in faces], np.zeros((3, 3, 4, 4), np.float32))
    params = {k: np.stack([getattr(f.params, k) for f in faces]) for k in ("pose", "cam", "shape", "expression",
                                                                            "eyelid", "jaw")}
    out = P.assemble(params, geometry, projected, crops, np.stack([f.box for f in faces]), np.ones(3),
                     rec.face_model.faces)
    for i, f in enumerate(out):
        assert f.pending() == ("head_pose",)
        assert f.vertices is not None and np.shares_memory(f.vertices, geometry.vertices)
        np.testing.assert_array_equal(f.landmarks68, faces[i].landmarks68)
        np.testing.assert_array_equal(f.head_pose, poses[i])


def test_copies_and_pickles_compute_first(rec, group_photo):
    faces = rec(group_photo)
    f = faces[0]
    for other in (pickle.loads(pickle.dumps(f)), copy.deepcopy(f), copy.copy(f)):
        assert other.pending() == () and not any(isinstance(v, Deferred) for v in vars(other).values())
        np.testing.assert_array_equal(other.vertices_image, f.vertices_image)
    json_doc = faces[1].to_dict(include_vertices=True)
    assert len(json_doc["vertices"]) == rec.face_model.n_vertices and faces[1].pending() == ()


def test_readers_on_threads_share_one_decode(rec, group_photo, monkeypatch):
    counting = Counting(rec.face_model)
    monkeypatch.setattr(rec.stages, "face_model", counting)
    faces = rec(group_photo)
    got: list = [None] * 6
    start = threading.Barrier(6)

    def read(k):
        start.wait()
        got[k] = faces[k % 3].vertices_image

    threads = [threading.Thread(target=read, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counting.calls == 1
    for k in range(3):
        np.testing.assert_array_equal(got[k], got[k + 3])


def test_setting_a_field_replaces_its_deferred_value(rec, group_photo):
    f = rec(group_photo)[0]
    f.landmarks68 = np.zeros((68, 2), np.float32)
    assert "landmarks68" not in f.pending() and not f.landmarks68.any()
    with pytest.raises(AttributeError):
        Face.landmarks68  # noqa: B018 - a field without a class default


def test_the_refine_check_decode_is_shared_with_the_faces(group_photo, monkeypatch):
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install 'smirk-edge[onnxruntime]')")
    from smirk_edge import Reconstructor

    with Reconstructor(backend="onnxruntime", precision="fp32", threads=1, refine="auto", refine_threshold=1.0) as r:
        counting = Counting(r.face_model)
        monkeypatch.setattr(r.stages, "face_model", counting)
        faces = r(group_photo)
        assert counting.calls == 1 and faces.timings["decode"] > 0  # the check decoded in the call
        assert all(f.pending() == DEFERRED_FIELDS for f in faces)
        _ = [(f.vertices, f.vertices_image, f.landmarks68) for f in faces]
        assert counting.calls == 1  # the faces reuse the check's decode
        assert_equal_to_eager(r, faces)


def test_batch_faces_equal_single_calls(rec, group_photo):
    other = np.ascontiguousarray(group_photo[:, ::-1])
    batched = rec.batch([group_photo, other])
    for img, got in zip([group_photo, other], batched):
        single = rec(img)
        assert len(got) == len(single) and all(f.pending() == DEFERRED_FIELDS for f in got)
        for a, b in zip(got, single):
            np.testing.assert_allclose(a.landmarks68, b.landmarks68, atol=1e-3)
        assert_equal_to_eager(rec, got)


def test_each_face_owns_its_rows(rec, group_photo):
    """A face's parameters, box and crop matrix are its rows of one batch copy: writing into one face
    changes no other face, no later result and nothing of the caller's."""
    faces = rec(group_photo)
    assert len(faces) >= 2
    before = [(f.params.expression.copy(), f.box.copy(), f.crop_matrix.copy(), f.head_pose.copy()) for f in faces[1:]]
    faces[0].params.expression[:] = 99.0
    faces[0].box[:] = -1.0
    faces[0].crop_matrix[:] = 0.0
    faces[0].head_pose[:] = 0.0
    for f, (e, b, m, h) in zip(faces[1:], before):
        np.testing.assert_array_equal(f.params.expression, e)
        np.testing.assert_array_equal(f.box, b)
        np.testing.assert_array_equal(f.crop_matrix, m)
        np.testing.assert_array_equal(f.head_pose, h)
    again = rec(group_photo)
    assert not np.any(again[0].params.expression == 99.0) and again[0].box[0] != -1.0


def test_a_batch_of_faces_gives_the_garbage_collector_little_to_track(rec, group_photo, monkeypatch):
    """Each face of a batch costs a handful of GC-tracked objects (its record, its parameters and one
    small object per deferred field: no closures), so that ``rec.batch`` of hundreds of faces does
    not set off collections that scan every object of the process (tens of ms with torch loaded)."""
    import gc

    seen = {}
    orig = P.assemble

    def keep(*a, **k):
        seen["args"] = (a, k)
        return orig(*a, **k)

    monkeypatch.setattr(P, "assemble", keep)
    rec.batch([group_photo] * 4)
    a, k = seen["args"]
    n = len(a[3])  # the crops of the frame
    assert n >= 2
    gc.collect()
    gc.disable()
    try:
        before = len(gc.get_objects())
        faces = orig(*a, **k)
        per_face = (len(gc.get_objects()) - before) / n
    finally:
        gc.enable()
    assert len(faces) == n and per_face <= 10, per_face
    assert all(f.pending() == DEFERRED_FIELDS for f in faces)
    np.testing.assert_array_equal(faces[0].landmarks68, rec(group_photo)[0].landmarks68)
