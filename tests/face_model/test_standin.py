"""The shipped stand-in face model (smirk_edge/assets/standin_face_model.npz).

Fast checks on the committed file only (no ../shared data needed). Slot numbers follow the
table in docs/standin_face_model.md. Left = the subject's left = +x.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from smirk_edge import camera
from smirk_edge.face_model import MEDIAPIPE_105_INDICES, FaceModel, standin_path

SMILE, MOUTH_OPEN, PUCKER, FROWN, SURPRISE = 0, 1, 2, 3, 4
L_CORNER, R_CORNER, L_BROW, R_BROW, L_SQUINT, R_SQUINT = 8, 9, 10, 11, 12, 13
# MediaPipe vertices used below (vertex index = MediaPipe landmark index)
MOUTH_CORNER_L, MOUTH_CORNER_R = 291, 61
UPPER_LIP_MID, LOWER_LIP_MID = 13, 14
L_LID_UP, L_LID_LO, R_LID_UP, R_LID_LO = 386, 374, 159, 145
L_BROW_V, R_BROW_V = 334, 105


@pytest.fixture(scope="module")
def model() -> FaceModel:
    return FaceModel.standin()


def expr(i: int, value: float = 1.0) -> np.ndarray:
    e = np.zeros((1, 50), np.float32)
    e[0, i] = value
    return e


def point_mesh_distance(p: np.ndarray, v: np.ndarray, f: np.ndarray) -> float:
    """Distance from ``p (3,)`` to the triangle mesh ``(v, f)`` (sampled barycentric grid + vertices)."""
    g = np.linspace(0, 1, 21)
    a, b = np.meshgrid(g, g)
    keep = a + b <= 1
    bc = np.stack([1 - a[keep] - b[keep], a[keep], b[keep]], 1)  # (K, 3)
    pts = np.einsum("kc,fcd->fkd", bc, v[f]).reshape(-1, 3)
    return float(np.min(np.linalg.norm(pts - p, axis=1)))


def test_file_and_slots(model):
    assert standin_path().stat().st_size < 3_000_000
    assert model.model_id.startswith("smirk-edge-standin")
    assert "non-commercial" in model.notice
    a = model.arrays
    assert a["shapedirs"].shape[2] == 300 and a["exprdirs"].shape[2] == 50
    assert np.abs(a["shapedirs"][..., 0]).max() > 0  # learnt identity in the leading slots
    assert np.abs(a["exprdirs"][..., :16]).reshape(-1, 16).max(0).min() > 1e-3  # every semantic slot moves
    assert model.n_vertices == 468
    assert np.array_equal(model.parents, [-1, 0, 1, 1, 1])


def test_size_units_and_origin(model):
    v = model.v_template
    width = np.ptp(v[:, 0])
    assert 0.12 <= width <= 0.18
    centre = 0.5 * (v.min(0) + v.max(0))
    assert np.allclose(centre[:2], 0.0, atol=1e-4)
    # y up, z toward the camera, x to the subject's left
    assert v[10, 1] > v[1, 1] > v[152, 1]  # forehead above nose tip above chin
    assert v[1, 2] > v[234, 2]  # nose tip nearer the camera than the face side
    assert v[263, 0] > 0 > v[33, 0]  # MediaPipe "left eye" corner on +x


def test_neutral_projects_centred_in_crop(model):
    g = model.decode()
    px = camera.project(g.vertices, np.array([[7.0, 0.0, 0.0]]))[0]
    assert px[:, :2].min() > 0 and px[:, :2].max() < camera.CROP_SIZE
    centre = 0.5 * (px[:, :2].min(0) + px[:, :2].max(0))
    assert np.allclose(centre, camera.CROP_SIZE / 2, atol=1.0)
    assert np.ptp(px[:, 0]) > 0.4 * camera.CROP_SIZE  # fills the crop sensibly


def test_mesh_is_oriented_manifold_with_holes(model):
    f = model.faces
    directed = Counter((int(t[k]), int(t[(k + 1) % 3])) for t in f for k in range(3))
    assert max(directed.values()) == 1  # consistent orientation, no duplicate faces
    undirected = Counter(tuple(sorted(e)) for e in directed)
    assert max(undirected.values()) == 2  # manifold edges
    boundary = [e for e, c in undirected.items() if c == 1]
    bverts = {v for e in boundary for v in e}
    for hole in ([13, 14, 78, 308], [159, 145], [386, 374]):  # mouth and both eyes are holes
        assert set(hole) <= bverts
    v = model.v_template
    n = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    assert np.mean(n[:, 2] > 0) > 0.95  # counter-clockwise seen from +z


def test_landmarks_lie_on_surface(model):
    rng = np.random.default_rng(0)
    a = model.arrays
    for name in ("lmk_bary_coords", "dynamic_lmk_bary_coords", "full_lmk_bary_coords", "mp_lmk_bary_coords"):
        b = a[name]
        assert b.min() >= -1e-6 and np.allclose(b.sum(-1), 1.0, atol=1e-5)
    for seed in range(2):
        g = model.decode(shape=rng.standard_normal((1, 300)).astype(np.float32),
                         expression=rng.standard_normal((1, 50)).astype(np.float32),
                         pose=rng.uniform(-0.5, 0.5, (1, 3)).astype(np.float32),
                         jaw=np.array([[0.2, 0.05, 0.0]], np.float32),
                         eyelid=rng.uniform(0, 1, (1, 2)).astype(np.float32))
        v = g.vertices[0]
        for p in np.concatenate([g.landmarks68[0], g.landmarks105[0]]):
            assert point_mesh_distance(p, v, model.faces) < 1e-3
        # the 105 are exactly the MediaPipe-indexed vertices
        assert np.allclose(g.landmarks105[0], v[MEDIAPIPE_105_INDICES], atol=1e-6)


def test_asymmetric_components(model):
    v0 = model.decode().vertices[0]

    def moved(i, vert):
        return float(np.linalg.norm(model.decode(expression=expr(i)).vertices[0][vert] - v0[vert]))

    assert moved(L_CORNER, MOUTH_CORNER_L) > 5 * max(moved(L_CORNER, MOUTH_CORNER_R), 1e-4)
    assert moved(R_CORNER, MOUTH_CORNER_R) > 5 * max(moved(R_CORNER, MOUTH_CORNER_L), 1e-4)
    assert moved(L_BROW, L_BROW_V) > 5 * max(moved(L_BROW, R_BROW_V), 1e-4)
    assert moved(R_BROW, R_BROW_V) > 5 * max(moved(R_BROW, L_BROW_V), 1e-4)
    assert moved(L_SQUINT, L_LID_LO) > 5 * max(moved(L_SQUINT, R_LID_LO), 1e-4)
    assert moved(R_SQUINT, R_LID_LO) > 5 * max(moved(R_SQUINT, L_LID_LO), 1e-4)
    # raising means +y; the corner of a smile goes up on both sides
    d = model.decode(expression=expr(L_CORNER)).vertices[0] - v0
    assert d[MOUTH_CORNER_L, 1] > 0.003
    s = model.decode(expression=expr(SMILE)).vertices[0] - v0
    assert s[MOUTH_CORNER_L, 1] > 0 and s[MOUTH_CORNER_R, 1] > 0
    assert abs(s[MOUTH_CORNER_L, 1] - s[MOUTH_CORNER_R, 1]) < 1e-4  # symmetric


def test_lips_separate(model):
    def gap(**kw):
        v = model.decode(**kw).vertices[0]
        return float(v[UPPER_LIP_MID, 1] - v[LOWER_LIP_MID, 1])

    closed = gap()
    assert closed < 0.002
    assert gap(jaw=np.array([0.3, 0.0, 0.0], np.float32)) > closed + 0.015
    assert gap(expression=expr(MOUTH_OPEN)) > closed + 0.005
    # jaw opening moves the 68-point lower inner lip, not the upper one
    g0 = model.decode().landmarks68[0]
    g1 = model.decode(jaw=np.array([0.3, 0.0, 0.0], np.float32)).landmarks68[0]
    assert g0[66, 1] - g1[66, 1] > 0.01 and abs(g0[62, 1] - g1[62, 1]) < 0.002


def test_eyelids_close_each_eye(model):
    def opening(eyelid, up, lo):
        v = model.decode(eyelid=np.array(eyelid, np.float32)).vertices[0]
        return float(np.linalg.norm(v[up] - v[lo]))

    assert opening([0, 0], L_LID_UP, L_LID_LO) > 0.004
    assert opening([1, 0], L_LID_UP, L_LID_LO) < 0.0005
    assert opening([1, 0], R_LID_UP, R_LID_LO) > 0.004  # the other eye stays open
    assert opening([0, 1], R_LID_UP, R_LID_LO) < 0.0005
    assert opening([0, 1], L_LID_UP, L_LID_LO) > 0.004


def test_rig(model):
    a = model.arrays
    assert np.allclose(a["lbs_weights"].sum(1), 1.0, atol=1e-5)
    assert np.allclose(a["J_regressor"].sum(1), 1.0, atol=1e-5)  # affine: joints follow the face
    assert not np.any(a["posedirs"])  # documented: no pose correctives
    J = a["J_regressor"] @ model.v_template
    v = model.v_template
    jaw, le, re = J[2], J[3], J[4]
    assert jaw[2] < v[1, 2] - 0.06 and v[152, 1] < jaw[1] < v[168, 1]  # behind the face, mid height
    assert le[0] > 0.02 and re[0] < -0.02 and le[2] < v[386, 2]  # eyeballs behind the lids
    w = a["lbs_weights"][:, 2]
    assert w[[14, 17, 152]].min() > 0.9 and w[[13, 0, 1]].max() < 0.1


def test_contour_follows_yaw(model):
    a = model.arrays
    rows = a["dynamic_lmk_faces_idx"]
    assert np.array_equal(rows[0], a["full_lmk_faces_idx"][:17])
    # positive yaw turns the +x side away: its contour points (iBUG 10..17) slide to the silhouette
    assert np.any(rows[30, 9:] != rows[0, 9:]) and np.any(rows[40 + 29, :8] != rows[0, :8])
    # v2 (re-fitted to human annotations): a turning head moves its contour steadily, row to row
    T, F = a["v_template"], a["faces"]
    P = np.einsum("rkc,rkcd->rkd", a["dynamic_lmk_bary_coords"], T[F[rows]])
    order = list(range(78, 39, -1)) + list(range(0, 40))  # yaw -39 .. +39
    assert np.linalg.norm(np.diff(P[order], axis=0), axis=-1).max() < 0.005
    yaw = np.array([[0.0, np.radians(30.0), 0.0]], np.float32)
    turned = model.decode(pose=yaw).landmarks68[0]
    # the far-side points now sit at the silhouette: at least as far out as the frontal points would
    frontal_pts = model.landmarks(model.decode(pose=yaw).vertices, a["dynamic_lmk_faces_idx"][0],
                                  a["dynamic_lmk_bary_coords"][0])[0]
    assert np.all(turned[10:16, 0] >= frontal_pts[10:16, 0] - 1e-5)
    assert np.any(turned[10:16, 0] > frontal_pts[10:16, 0] + 0.002)
