"""Build the stand-in FLAME-format face model from cached MediaPipe landmarks (numpy only).

Input: the cache written by :mod:`collect` (``topology.npz``, ``utkface.npz``,
``expressive.npz``, ``photos.npz``). Output: a face-model ``.npz`` in the layout of
:mod:`smirk_edge.face_model.format` (V = 468 MediaPipe vertices).

Steps (see docs/standin_face_model.md for the full account):

1. Landmarks -> model frame (x = image right = subject's left, y up, z toward the camera),
   generalised Procrustes (similarity) to a common mean, near-frontal faces kept, the mean
   put in a canonical frame (symmetry plane x = 0, face-oval plane facing +z), made exactly
   left/right symmetric and scaled to metres (outer eye corners 90 mm apart); origin at the
   centre of the landmark bounding box.
2. Mesh: 3-cliques of MediaPipe's tessellation, spurious caps removed, consistently oriented.
3. Expression-heavy directions: generalised eigenvectors of (expressive-set covariance,
   UTKFace covariance). Identity = PCA of UTKFace residuals with those directions projected
   out; coefficient 1 = one standard deviation.
4. Expressions: semantic slots (class means of the expressive set, symmetrised; left/right
   halves of them; procedural ones built by harmonic interpolation of hand-set displacements),
   then data-driven PCA slots.
5. Joints, skinning weights, J_regressor, eyelid shapes, landmark embeddings (68 fitted to
   dlib annotations, 105 = MediaPipe vertices), dynamic contour table.

Everything is deterministic (fixed file order, no randomness in the fit).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from smirk_edge.face_model import format as fmt

from . import mesh as M

MODEL_ID = "smirk-edge-standin-v1"
EYE_CORNER_DISTANCE_M = 0.090  # adult exocanthion-to-exocanthion distance (~88-93 mm)
MAX_POSE_DEG = 20.0

# ----------------------------------------------------------------- MediaPipe vertex groups
# Upper / lower eyelid margins (corner to corner, same direction) of each eye. "Right" is the
# subject's right eye (-x, image left in a frontal view).
R_UPPER_LID = [33, 246, 161, 160, 159, 158, 157, 173, 133]
R_LOWER_LID = [33, 7, 163, 144, 145, 153, 154, 155, 133]
L_UPPER_LID = [263, 466, 388, 387, 386, 385, 384, 398, 362]
L_LOWER_LID = [263, 249, 390, 373, 374, 380, 381, 382, 362]
# Inner lip contours (corner 78 -> corner 308).
UPPER_INNER_LIP = [78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308]
LOWER_INNER_LIP = [78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308]
UPPER_OUTER_LIP = [61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291]
LOWER_OUTER_LIP = [61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291]
R_BROW = [70, 63, 105, 66, 107, 46, 53, 52, 65, 55]
L_BROW = [300, 293, 334, 296, 336, 276, 283, 282, 295, 285]
MOUTH_CORNERS = (61, 291)  # subject's right, left (outer)
CHIN = 152
FOREHEAD = 10
NOSE_TIP = 1
FACE_SIDES = (234, 454)  # widest face-oval points, near the ears (right, left)

# dlib / iBUG 68-point left-right mirror pairs (0-based).
IBUG_MIRROR = np.array(
    [16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0,
     26, 25, 24, 23, 22, 21, 20, 19, 18, 17,
     27, 28, 29, 30, 35, 34, 33, 32, 31,
     45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40,
     54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55,
     64, 63, 62, 61, 60, 67, 66, 65], np.int64)
# 68-point landmarks that sit on a hole boundary: (ibug index, MediaPipe boundary polyline).
# Fitting them to the matching lid / lip margin keeps eyelid closure and jaw opening moving
# them with the right side of the hole.
IBUG_ON_BOUNDARY = {
    37: R_UPPER_LID, 38: R_UPPER_LID, 40: R_LOWER_LID, 41: R_LOWER_LID,
    43: L_UPPER_LID, 44: L_UPPER_LID, 46: L_LOWER_LID, 47: L_LOWER_LID,
    61: UPPER_INNER_LIP, 62: UPPER_INNER_LIP, 63: UPPER_INNER_LIP,
    65: LOWER_INNER_LIP, 66: LOWER_INNER_LIP, 67: LOWER_INNER_LIP,
}
IBUG_ON_VERTEX = {36: 33, 39: 133, 42: 362, 45: 263, 60: 78, 64: 308}


# ----------------------------------------------------------------- alignment
def similarity_align(A: np.ndarray, B: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Least-squares similarity transform of points ``A (N, 3)`` onto ``B (N, 3)``.

    Returns:
        ``(aligned A (N, 3), rotation (3, 3), scale)``.
    """
    ma, mb = A.mean(0), B.mean(0)
    a, b = A - ma, B - mb
    U, S, Vt = np.linalg.svd(a.T @ b)
    d = np.sign(np.linalg.det(U @ Vt))
    D = np.diag([1.0, 1.0, d])
    R = (U @ D @ Vt).T
    s = float((S * np.diag(D)).sum() / (a ** 2).sum())
    return s * (a @ R.T) + mb, R, s


def to_model_frame(lmk_px: np.ndarray) -> np.ndarray:
    """MediaPipe pixels ``(N, 468, 3)`` (x right, y down, z away) -> x right, y up, z toward camera."""
    return lmk_px.astype(np.float64) * np.array([1.0, -1.0, -1.0])


def gpa(X: np.ndarray, ref: np.ndarray, iters: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Generalised Procrustes: ``X (N, V, 3)`` aligned to their mean; returns (aligned, rotations)."""
    ref = ref - ref.mean(0)
    for _ in range(iters):
        out = [similarity_align(x, ref) for x in X]
        Y = np.stack([o[0] for o in out])
        new = Y.mean(0)
        new -= new.mean(0)
        # keep the reference's scale so the iteration does not shrink
        new *= np.sqrt((ref ** 2).sum() / (new ** 2).sum())
        ref = new
    out = [similarity_align(x, ref) for x in X]
    return np.stack([o[0] for o in out]), np.stack([o[1] for o in out])


def mirror_map(verts: np.ndarray) -> np.ndarray:
    """Index of each vertex's left/right mirror ``(V,)`` for a template symmetric about x = 0.

    Greedy mutual-nearest matching of ``(-x, y, z)``; vertices within 1 mm of the plane x = 0
    map to themselves.
    """
    V = len(verts)
    refl = verts * np.array([-1.0, 1.0, 1.0])
    d = np.linalg.norm(refl[:, None] - verts[None], axis=2)
    mir = -np.ones(V, np.int64)
    scale = np.ptp(verts[:, 0])
    for i in np.where(np.abs(verts[:, 0]) < 0.005 * scale)[0]:
        mir[i] = i
    order = np.argsort(d, axis=None)
    for flat in order:
        i, j = divmod(int(flat), V)
        if mir[i] >= 0 or mir[j] >= 0:
            continue
        if i == j:
            mir[i] = i
        else:
            mir[i], mir[j] = j, i
        if (mir >= 0).all():
            break
    return mir


def canonical_frame(mean: np.ndarray, oval: list[int]) -> np.ndarray:
    """Rotation ``(3, 3)`` putting a mean face in the model frame.

    x: average direction of the left-minus-right pair vectors (outer eye corners, mouth
    corners, face sides); z: normal of the best plane through the face-oval ring, toward the
    camera; y = z cross x.
    """
    pairs = [(263, 33), (291, 61), (454, 234), (362, 133), (300, 70)]
    x = sum(mean[a] - mean[b] for a, b in pairs)
    x /= np.linalg.norm(x)
    P = mean[oval] - mean[oval].mean(0)
    z = np.linalg.svd(P)[2][2]
    if z @ (mean[NOSE_TIP] - mean[oval].mean(0)) < 0:
        z = -z
    z = z - (z @ x) * x
    z /= np.linalg.norm(z)
    y = np.cross(z, x)
    return np.stack([x, y, z])


def symmetrize(field_: np.ndarray, mirror: np.ndarray) -> np.ndarray:
    """Left/right symmetric part of a per-vertex field ``(V, 3, ...)``."""
    refl = field_[mirror].copy()
    refl[:, 0] *= -1
    return 0.5 * (field_ + refl)


def person_keys(names: np.ndarray) -> np.ndarray:
    """Person of each expressive image from LFW-style names (``Person_Name_0003.jpg``);
    other names are their own person."""
    return np.array([re.sub(r"_\d+\.\w+$", "", str(n)) for n in names])


def within_person(res: np.ndarray, person: np.ndarray) -> np.ndarray:
    """Offsets ``(M, D)`` of each image from its person's mean, for people with >= 2 images."""
    out = []
    for p in sorted(set(person.tolist())):
        idx = np.where(person == p)[0]
        if len(idx) > 1:
            out.append(res[idx] - res[idx].mean(0))
    return np.concatenate(out, 0)


def remove_pose(res: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """Remove the part of residuals ``(N, D)`` explained by head pose ``(N, 2)`` (yaw, pitch, deg).

    MediaPipe's landmarks of a turned or tilted head keep pose-dependent non-rigid distortions
    after rigid alignment; a quadratic regression on yaw and pitch takes them out.
    """
    y, p = pose[:, 0] / 10.0, pose[:, 1] / 10.0
    X = np.stack([np.ones_like(y), y, p, y * y, p * p, y * p], 1)
    coef, *_ = np.linalg.lstsq(X, res, rcond=None)
    return res - X[:, 1:] @ coef[1:]


def pose_angles(R: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Yaw and pitch in degrees of rotations ``(N, 3, 3)`` that map a face to the template."""
    yaw = np.degrees(np.arcsin(np.clip(-R[:, 2, 0], -1, 1)))
    pitch = np.degrees(np.arctan2(R[:, 2, 1], R[:, 2, 2]))
    return yaw, pitch


# ----------------------------------------------------------------- the builder
@dataclass
class Build:
    """Everything the builder produces (arrays in metres, V = 468)."""

    template: np.ndarray
    faces: np.ndarray
    mirror: np.ndarray
    arrays: dict = field(default_factory=dict)
    expression_names: list = field(default_factory=list)
    stats: dict = field(default_factory=dict)


def smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3 - 2 * t)


def side_weight(verts: np.ndarray, side: int, width: float = 0.012) -> np.ndarray:
    """Smooth 0..1 weight ``(V,)``: 1 on the subject's ``side`` (+1 left = +x, -1 right), 0.5 at x = 0."""
    return smoothstep((side * verts[:, 0] + width) / (2 * width))


def fit_template_and_data(cache: Path, topo: dict) -> dict:
    """Step 1: align all landmark sets; canonical, symmetric, metric template."""
    utk = np.load(cache / "utkface.npz")
    ex = np.load(cache / "expressive.npz")
    U = to_model_frame(utk["lmk"])
    E = to_model_frame(ex["lmk"])
    oval = sorted(set(topo["face_oval"].ravel().tolist()))
    # first pass: GPA on UTKFace, canonical frame of the mean
    Yu, Ru = gpa(U, U[0])
    mean = Yu.mean(0)
    Rc = canonical_frame(mean, oval)
    mean = (mean - mean.mean(0)) @ Rc.T
    # keep near-frontal faces (pose of each face relative to the canonical mean)
    Ru = np.stack([similarity_align(x, mean)[1] for x in U])
    yaw, pitch = pose_angles(Ru)
    keep = (np.abs(yaw) < MAX_POSE_DEG) & (np.abs(pitch) < MAX_POSE_DEG)
    Yu, _ = gpa(U[keep], mean)
    mean = Yu.mean(0)
    Rc = canonical_frame(mean, oval)
    mean = (mean - mean.mean(0)) @ Rc.T
    mirror = mirror_map(mean)
    mean = symmetrize(mean, mirror)
    scale = EYE_CORNER_DISTANCE_M / np.linalg.norm(mean[263] - mean[33])
    mean *= scale
    lo, hi = mean.min(0), mean.max(0)
    mean -= 0.5 * (lo + hi)
    mean[:, 0] = np.where(mirror == np.arange(len(mean)), 0.0, mean[:, 0])
    # final alignment of every face to the metric template (scale included)
    Yu = np.stack([similarity_align(x, mean)[0] for x in U[keep]])
    upose = pose_angles(np.stack([similarity_align(x, mean)[1] for x in U[keep]]))
    Re = np.stack([similarity_align(x, mean)[1] for x in E])
    eyaw, epitch = pose_angles(Re)
    ekeep = (np.abs(eyaw) < MAX_POSE_DEG) & (np.abs(epitch) < MAX_POSE_DEG)
    Ye = np.stack([similarity_align(x, mean)[0] for x in E[ekeep]])
    return {"template": mean, "mirror": mirror, "utk": Yu, "expr": Ye,
            "utk_pose": np.stack(upose, 1), "expr_pose": np.stack([eyaw[ekeep], epitch[ekeep]], 1),
            "emotion": ex["emotion"][ekeep], "person": person_keys(ex["name"][ekeep]), "n_utk_total": len(U), "n_utk": int(keep.sum()),
            "n_expr_total": len(E), "n_expr": int(ekeep.sum())}


# ----------------------------------------------------------------- local deformations
class Local:
    """Harmonic displacement fields on the template mesh (the tool for hand-set shapes)."""

    def __init__(self, verts: np.ndarray, faces: np.ndarray):
        self.verts = verts
        self.faces = faces
        self.L = M.laplacian(len(verts), faces)

    def field(self, targets: dict[int, np.ndarray], hops: int, zero: list[int] = ()) -> np.ndarray:
        """Displacement ``(V, 3)``: ``targets`` fixed, vertices more than ``hops`` edges away and
        ``zero`` fixed at 0, harmonic in between."""
        src = list(targets)
        dist = M.graph_distance(len(self.verts), self.faces, src)
        far = [int(i) for i in np.where(dist > hops)[0]]
        fixed = sorted(set(src) | set(far) | (set(zero) - set(src)))
        vals = np.array([targets.get(i, np.zeros(3)) for i in fixed], float)
        return M.harmonic(self.L, np.array(fixed), vals)


def ring_profile(n: int, power: float = 0.7) -> np.ndarray:
    """``(n,)`` weights 0 at both ends of a corner-to-corner contour, 1 in the middle."""
    return np.sin(np.linspace(0, np.pi, n)) ** power


def close_lips(verts: np.ndarray, loc: Local, gap: float = 0.0006) -> np.ndarray:
    """Template with the inner lip contours brought together (``gap`` metres apart)."""
    targets = {}
    for u, l in zip(UPPER_INNER_LIP[1:-1], LOWER_INNER_LIP[1:-1]):
        mid = 0.5 * (verts[u] + verts[l])
        targets[u] = mid + [0, gap / 2, 0] - verts[u]
        targets[l] = mid - [0, gap / 2, 0] - verts[l]
    return verts + loc.field(targets, hops=4, zero=[MOUTH_CORNERS[0], MOUTH_CORNERS[1], 78, 308])


def procedural_expressions(T: np.ndarray, loc: Local, mirror: np.ndarray) -> dict[str, np.ndarray]:
    """Hand-set expression shapes ``name -> (V, 3)`` metres at coefficient 1 (a clear, strong
    expression). Left = subject's left = +x."""
    out: dict[str, np.ndarray] = {}
    mx = 0.5 * (T[MOUTH_CORNERS[0]] + T[MOUTH_CORNERS[1]])
    lips = sorted(set(UPPER_INNER_LIP + LOWER_INNER_LIP + UPPER_OUTER_LIP + LOWER_OUTER_LIP))

    # lips apart without jaw: upper lip up, lower lip down, corners still
    t = {}
    for ring, dy in ((UPPER_INNER_LIP, 0.004), (UPPER_OUTER_LIP, 0.0025),
                     (LOWER_INNER_LIP, -0.006), (LOWER_OUTER_LIP, -0.004)):
        for v, p in zip(ring, ring_profile(len(ring))):
            t[v] = np.array([0.0, dy * p, 0.0])
    out["mouth_open"] = loc.field(t, hops=4)

    # pucker: lips gather toward the mouth centre and push forward
    t = {v: np.array([-0.4 * (T[v, 0] - mx[0]), -0.15 * (T[v, 1] - mx[1]), 0.008]) for v in lips}
    out["pucker"] = loc.field(t, hops=4)

    # mouth-corner raise / lower per side (a smirk): corner up, out and back
    for side, name in ((+1, "left"), (-1, "right")):
        c_out = MOUTH_CORNERS[1] if side > 0 else MOUTH_CORNERS[0]
        c_in = 308 if side > 0 else 78
        for kind, d in (("corner_raise", [0.003, 0.0055, -0.002]), ("corner_lower", [0.001, -0.0045, -0.0005])):
            disp = np.array([side * d[0], d[1], d[2]])
            other = [mirror[c_out], mirror[c_in]]
            f = loc.field({c_out: disp, c_in: disp}, hops=5, zero=other)
            out[f"{name}_{kind}"] = f * side_weight(T, side, 0.01)[:, None]

    # brow raise per side: brow up, lid margins still
    for side, name, brow, lids in ((+1, "left", L_BROW, L_UPPER_LID), (-1, "right", R_BROW, R_UPPER_LID)):
        t = {v: np.array([0.0, 0.008, 0.001]) for v in brow}
        f = loc.field(t, hops=6, zero=lids + L_LOWER_LID + R_LOWER_LID)
        out[f"{name}_brow_raise"] = f * side_weight(T, side, 0.008)[:, None]

    # squint per side: lower lid up, upper lid slightly down, cheek under the eye up
    for side, name, up, lo in ((+1, "left", L_UPPER_LID, L_LOWER_LID), (-1, "right", R_UPPER_LID, R_LOWER_LID)):
        t = {}
        for v, p in zip(lo[1:-1], ring_profile(len(lo))[1:-1]):
            t[v] = np.array([0.0, 0.0028 * p, 0.0008 * p])
        for v, p in zip(up[1:-1], ring_profile(len(up))[1:-1]):
            t[v] = np.array([0.0, -0.0015 * p, 0.0])
        f = loc.field(t, hops=4, zero=[lo[0], lo[-1]])
        out[f"{name}_squint"] = f * side_weight(T, side, 0.008)[:, None]

    # frown: brows down and together (corrugator), both sides
    t = {}
    for brow in (L_BROW, R_BROW):
        xs = np.abs(T[brow, 0])
        inner = 1 - (xs - xs.min()) / (np.ptp(xs) + 1e-9)
        for v, w in zip(brow, inner):
            t[v] = np.array([-np.sign(T[v, 0]) * 0.003 * w, -0.0035 - 0.0015 * w, 0.0005])
    out["frown"] = loc.field(t, hops=5, zero=L_UPPER_LID + R_UPPER_LID)
    return out


# ----------------------------------------------------------------- statistics
def expression_subspace(ru: np.ndarray, re: np.ndarray, class_means: list[np.ndarray],
                        within: np.ndarray, k: int = 5, k_within: int = 6) -> np.ndarray:
    """Orthonormal basis ``(3V, m)`` of expression-heavy directions.

    The top ``k`` eigenvectors of ``C_expressive - C_utkface`` (directions that vary much more
    in the expressive set than among mostly-neutral faces), the per-emotion mean offsets and the
    top ``k_within`` principal directions of within-person offsets (same person, different
    expressions: identity cancels).
    """
    mu = ru.mean(0)
    Cu = (ru - mu).T @ (ru - mu) / len(ru)
    Ce = (re - mu).T @ (re - mu) / len(re)
    lam, W = np.linalg.eigh(Ce - Cu)
    W = W[:, ::-1][:, :k]
    Wp, _ = pca(within, k_within)
    Q, _ = np.linalg.qr(np.concatenate([W, Wp] + [m[:, None] / np.linalg.norm(m) for m in class_means], 1))
    return Q


def pca(X: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Principal directions of rows ``X (N, D)`` about their mean: ``(D, n)`` unit columns and std ``(n,)``.

    Signs are fixed so the largest-magnitude entry of each column is positive (deterministic).
    """
    Xc = X - X.mean(0)
    _, S, Vt = np.linalg.svd(Xc, full_matrices=False)
    comps = Vt[:n].T
    sign = np.sign(comps[np.argmax(np.abs(comps), axis=0), np.arange(comps.shape[1])])
    return comps * sign, S[:n] / np.sqrt(len(X))


# ----------------------------------------------------------------- rig
def affine_weights(verts: np.ndarray, support: list[int], target: np.ndarray) -> np.ndarray:
    """Minimum-norm weights ``(V,)`` on ``support`` with ``sum w = 1`` and ``sum w v = target``.

    Affine (weights sum to one), so the regressed joint moves with translations of the face.
    """
    P = verts[support]  # (K, 3)
    A = np.concatenate([P.T, np.ones((1, len(support)))], 0)  # (4, K)
    b = np.concatenate([target, [1.0]])
    w = A.T @ np.linalg.solve(A @ A.T, b)
    out = np.zeros(len(verts))
    out[support] = w
    return out


def rig(T: np.ndarray, faces: np.ndarray, loc: Local, topo: dict) -> dict[str, np.ndarray]:
    """Joints, J_regressor ``(5, V)``, skinning weights ``(V, 5)`` and eyelid shapes ``(V, 3)``."""
    V = len(T)
    sides = list(FACE_SIDES)
    side_mid = T[sides].mean(0)
    # jaw hinge (temporomandibular joint): midline, a little below the widest face-oval points
    # (which sit in front of the ears) and 1.5 cm behind them
    jaw = np.array([0.0, side_mid[1] - 0.010, side_mid[2] - 0.015])
    # head/neck pivot: below and behind the hinge (top of the spine)
    neck = np.array([0.0, jaw[1] - 0.035, jaw[2] - 0.025])
    eyes = []
    for ring in (L_UPPER_LID + L_LOWER_LID, R_UPPER_LID + R_LOWER_LID):
        c = T[sorted(set(ring))].mean(0)
        eyes.append(c + [0.0, 0.0, -0.011])  # eyeball radius ~12 mm behind the lid opening
    joints = np.stack([neck, neck, jaw, eyes[0], eyes[1]])
    oval = sorted(set(topo["face_oval"].ravel().tolist()))
    head_support = sorted(set(oval) | {NOSE_TIP, 6, 168, 2})
    Jreg = np.stack([
        affine_weights(T, head_support, joints[0]),
        affine_weights(T, head_support, joints[1]),
        affine_weights(T, head_support, joints[2]),
        affine_weights(T, sorted(set(L_UPPER_LID + L_LOWER_LID + L_BROW)), joints[3]),
        affine_weights(T, sorted(set(R_UPPER_LID + R_LOWER_LID + R_BROW)), joints[4]),
    ])

    # jaw skinning weight: harmonic field, 1 on the lower lip and the lower jaw line,
    # 0 on the upper lip and everything above the nose base
    ones = LOWER_INNER_LIP[1:-1] + LOWER_OUTER_LIP[2:-2] + [152, 148, 176, 149, 150, 136, 172, 377, 400, 378, 379, 365, 397]
    zeros = UPPER_INNER_LIP[1:-1] + [int(i) for i in np.where(T[:, 1] > T[2, 1])[0]]
    zeros = sorted(set(zeros) - set(ones))
    fixed = np.array(ones + zeros)
    w_jaw = np.clip(M.harmonic(loc.L, fixed, np.r_[np.ones(len(ones)), np.zeros(len(zeros))]), 0, 1)
    lbs = np.zeros((V, 5))
    lbs[:, 2] = w_jaw
    lbs[:, 1] = 1 - w_jaw

    # eyelids: the upper margin closes onto the lower margin; the lid skin above follows
    lids = {}
    for name, up, lo, brow in (("l_eyelid", L_UPPER_LID, L_LOWER_LID, L_BROW),
                               ("r_eyelid", R_UPPER_LID, R_LOWER_LID, R_BROW)):
        t = {u: T[l] - T[u] for u, l in zip(up[1:-1], lo[1:-1])}
        lids[name] = loc.field(t, hops=3, zero=lo + [up[0], up[-1]] + brow)
    return {"joints": joints, "J_regressor": Jreg, "lbs_weights": lbs, **lids}


# ----------------------------------------------------------------- landmarks
def vertex_triangle(faces: np.ndarray, v: int) -> tuple[int, np.ndarray]:
    """A triangle containing vertex ``v`` and the one-hot barycentric that selects it."""
    i = int(np.where((faces == v).any(1))[0][0])
    b = (faces[i] == v).astype(float)
    return i, b


def point_on_polyline(T: np.ndarray, faces: np.ndarray, p: np.ndarray, line: list[int]
                      ) -> tuple[int, np.ndarray]:
    """Nearest point to ``p`` on a boundary polyline, as (triangle owning that edge, barycentric)."""
    best = None
    for a, b in zip(line[:-1], line[1:]):
        e = T[b] - T[a]
        t = float(np.clip((p - T[a]) @ e / (e @ e), 0, 1))
        d = np.linalg.norm(T[a] + t * e - p)
        if best is None or d < best[0]:
            best = (d, a, b, t)
    _, a, b, t = best
    i = int(np.where((faces == a).any(1) & (faces == b).any(1))[0][0])
    bc = np.zeros(3)
    bc[list(faces[i]).index(a)] = 1 - t
    bc[list(faces[i]).index(b)] = t
    return i, bc


def fit_68(T: np.ndarray, faces: np.ndarray, cache: Path, max_yaw: float = 15.0
           ) -> tuple[np.ndarray, np.ndarray, dict]:
    """68 iBUG points as barycentric points on the template, fitted to dlib annotations.

    For every annotated face: locate each dlib point in the 2D-projected MediaPipe mesh of that
    face (front-most triangle, nearest point when outside), carry the barycentric to the
    template; the median over faces (contour points: near-frontal faces only) is symmetrised
    with the iBUG mirror pairs and snapped onto the surface. Points on eyelid / inner-lip
    margins are snapped onto that margin; eye and mouth corners are the corner vertices.

    Returns:
        ``(faces_idx (68,), bary (68, 3), info)``.
    """
    ph = np.load(cache / "photos.npz")
    mp, dl = ph["mp"].astype(float), ph["dlib"].astype(float)
    yaws = []
    pts = np.zeros((len(mp), 68, 3))
    for n in range(len(mp)):
        X = to_model_frame(mp[n][None])[0]
        R = similarity_align(X, T)[1]
        yaws.append(pose_angles(R[None])[0][0])
        for k in range(68):
            i, b = M.locate_2d(dl[n, k], mp[n, :, :2], faces, -mp[n, :, 2])
            pts[n, k] = b @ T[faces[i]]
    yaws = np.array(yaws)
    frontal = np.abs(yaws) < max_yaw
    med = np.median(pts, axis=0)
    med[:17] = np.median(pts[frontal][:, :17], axis=0)
    refl = med[IBUG_MIRROR] * [-1, 1, 1]
    sym = 0.5 * (med + refl)
    fi = np.zeros(68, np.int64)
    bc = np.zeros((68, 3))
    for k in range(68):
        if k in IBUG_ON_VERTEX:
            fi[k], bc[k] = vertex_triangle(faces, IBUG_ON_VERTEX[k])
        elif k in IBUG_ON_BOUNDARY:
            fi[k], bc[k] = point_on_polyline(T, faces, sym[k], IBUG_ON_BOUNDARY[k])
        else:
            fi[k], bc[k], _ = M.closest_point_on_mesh(sym[k], T, faces)
    return fi, bc, {"n_faces": len(mp), "n_frontal": int(frontal.sum())}


def dynamic_contour(T: np.ndarray, faces: np.ndarray, fi: np.ndarray, bc: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Yaw-dependent jaw contour ``(79, 17)`` triangles and ``(79, 17, 3)`` barycentrics.

    Row r is yaw ``r`` degrees for r = 0..39 and ``-(r - 39)`` for r = 40..78. A head turned by
    positive yaw (rotation about +y) swings its +x side (subject's left) away from the camera.
    Each far-side contour point (iBUG 10..17 for positive yaw, 1..8 for negative) slides along
    its horizontal template line (constant y, from its frontal position toward the midline) to
    the point that is outermost in the rotated, orthographic view: the silhouette. Near-side
    points and the chin keep their frontal positions.
    """
    P = np.einsum("lk,lkc->lc", bc[:17], T[faces[fi[:17]]])
    dyn_f = np.zeros((fmt.N_YAW_BINS, 17), np.int64)
    dyn_b = np.zeros((fmt.N_YAW_BINS, 17, 3))
    lines = []
    for k in range(17):
        xs = np.linspace(P[k, 0], 0.0, 120)[1:]
        tri, bar, z = M.raycast_front(np.stack([xs, np.full_like(xs, P[k, 1])], 1), T, faces)
        ok = tri >= 0
        lines.append((np.r_[P[k, 0], xs[ok]], np.r_[P[k, 2], z[ok]],
                      np.r_[fi[k], tri[ok]], np.concatenate([bc[k][None], bar[ok]])))
    for r in range(fmt.N_YAW_BINS):
        yaw = r if r < 40 else -(r - 39)
        th = np.radians(yaw)
        for k in range(17):
            far = (yaw > 0 and k >= 9) or (yaw < 0 and k <= 7)
            x, z, tri, bar = lines[k]
            j = 0
            if far:
                side = 1.0 if yaw > 0 else -1.0
                j = int(np.argmax(side * (np.cos(th) * x + np.sin(th) * z)))
            dyn_f[r, k], dyn_b[r, k] = tri[j], bar[j]
    return dyn_f, dyn_b


# ----------------------------------------------------------------- assembly
SEMANTIC = [
    # (slot name, source, description)
    ("smile", "data", "both mouth corners up and back, lips parted: mean 'happiness' offset, symmetrised"),
    ("mouth_open", "hand", "lips apart without the jaw: upper lip up 4 mm, lower lip down 6 mm"),
    ("pucker", "hand", "lips gathered toward the mouth centre and pushed 8 mm forward"),
    ("frown", "hand", "brows down 3.5-5 mm and drawn together (corrugator)"),
    ("surprise", "data+hand", "mean 'surprise' offset (symmetrised) plus both brows raised"),
    ("sadness", "data", "mean 'sadness' offset, symmetrised"),
    ("disgust", "data", "mean 'disgust' offset, symmetrised"),
    ("anger", "data", "mean 'anger' offset, symmetrised (open, tense mouth)"),
    ("left_corner_raise", "hand", "subject's LEFT (+x) mouth corner up 5.5 mm, out 3 mm (smirk); right side still"),
    ("right_corner_raise", "hand", "subject's RIGHT (-x) mouth corner up 5.5 mm, out 3 mm; left side still"),
    ("left_brow_raise", "hand", "subject's LEFT (+x) brow up 8 mm"),
    ("right_brow_raise", "hand", "subject's RIGHT (-x) brow up 8 mm"),
    ("left_squint", "hand", "subject's LEFT (+x) lower lid up 2.8 mm, upper lid down 1.5 mm"),
    ("right_squint", "hand", "subject's RIGHT (-x) lower lid up 2.8 mm, upper lid down 1.5 mm"),
    ("left_corner_lower", "hand", "subject's LEFT (+x) mouth corner down 4.5 mm"),
    ("right_corner_lower", "hand", "subject's RIGHT (-x) mouth corner down 4.5 mm"),
]
N_IDENTITY = 50
N_DATA_EXPRESSION = 24


def build(cache: str | os.PathLike) -> Build:
    """Run steps 1-5 on a collect cache; returns the model arrays and build statistics."""
    cache = Path(cache)
    topo = dict(np.load(cache / "topology.npz"))
    d = fit_template_and_data(cache, topo)
    T0, mirror = d["template"], d["mirror"]
    faces = M.orient(M.remove_spurious(M.triangles_from_edges(topo["tesselation"])), T0)
    loc0 = Local(T0, faces)
    T = close_lips(T0, loc0)
    T = symmetrize(T, mirror)
    loc = Local(T, faces)
    V = len(T)

    # ---- identity
    ru = remove_pose((d["utk"] - T).reshape(len(d["utk"]), -1), d["utk_pose"])
    re = remove_pose((d["expr"] - T).reshape(len(d["expr"]), -1), d["expr_pose"])
    em = d["emotion"]
    base = re[em == "neutral"].mean(0)
    classes = ["happiness", "surprise", "sadness", "disgust", "anger"]
    means = {c: re[em == c].mean(0) - base for c in classes}
    within = within_person(re, d["person"])
    Q = expression_subspace(ru, re, [means[c] for c in classes], within)
    ru_id = ru - (ru @ Q) @ Q.T
    U_id, s_id = pca(ru_id, N_IDENTITY)
    shapedirs = np.zeros((V, 3, fmt.N_SHAPE))
    shapedirs[:, :, :N_IDENTITY] = (U_id * s_id).reshape(V, 3, N_IDENTITY)

    # ---- expressions: semantic slots
    proc = procedural_expressions(T, loc, mirror)
    data = {c: symmetrize(means[c].reshape(V, 3), mirror) for c in classes}
    sem = {
        "smile": data["happiness"], "surprise": data["surprise"] + 0.8 * (
            proc["left_brow_raise"] + proc["right_brow_raise"]),
        "sadness": data["sadness"], "disgust": data["disgust"], "anger": data["anger"],
        **{k: v for k, v in proc.items()},
    }
    names = [s[0] for s in SEMANTIC]
    exprdirs = np.zeros((V, 3, fmt.N_EXPRESSION))
    for i, n in enumerate(names):
        exprdirs[:, :, i] = sem[n]
    # ---- expressions: data-driven slots (within-person offsets minus the semantic directions)
    B_sem, _ = np.linalg.qr(exprdirs[:, :, :len(names)].reshape(3 * V, -1))
    r = within - (within @ B_sem) @ B_sem.T
    U_ex, s_ex = pca(r, N_DATA_EXPRESSION)
    n0 = len(names)
    exprdirs[:, :, n0:n0 + N_DATA_EXPRESSION] = (U_ex * s_ex).reshape(V, 3, N_DATA_EXPRESSION)
    names += [f"data_pc{i + 1}" for i in range(N_DATA_EXPRESSION)]
    names += ["unused"] * (fmt.N_EXPRESSION - len(names))

    # ---- rig and landmarks
    rg = rig(T, faces, loc, topo)
    fi68, bc68, info68 = fit_68(T, faces, cache)
    dyn_f, dyn_b = dynamic_contour(T, faces, fi68, bc68)
    mp = [vertex_triangle(faces, int(v)) for v in fmt.MEDIAPIPE_105_INDICES]

    arrays = {
        "v_template": T.astype(np.float32),
        "shapedirs": shapedirs.astype(np.float32),
        "exprdirs": exprdirs.astype(np.float32),
        "posedirs": np.zeros((V, 3, fmt.N_POSE_FEATURES), np.float32),
        "J_regressor": rg["J_regressor"].astype(np.float32),
        "parents": np.array([-1, 0, 1, 1, 1], np.int32),
        "lbs_weights": rg["lbs_weights"].astype(np.float32),
        "l_eyelid": rg["l_eyelid"].astype(np.float32),
        "r_eyelid": rg["r_eyelid"].astype(np.float32),
        "faces": faces.astype(np.int32),
        "lmk_faces_idx": fi68[17:].astype(np.int32),
        "lmk_bary_coords": bc68[17:].astype(np.float32),
        "dynamic_lmk_faces_idx": dyn_f.astype(np.int32),
        "dynamic_lmk_bary_coords": dyn_b.astype(np.float32),
        "full_lmk_faces_idx": fi68.astype(np.int32),
        "full_lmk_bary_coords": bc68.astype(np.float32),
        "mp_lmk_faces_idx": np.array([m[0] for m in mp], np.int32),
        "mp_lmk_bary_coords": np.array([m[1] for m in mp], np.float32),
        "mp_landmark_indices": fmt.MEDIAPIPE_105_INDICES.copy(),
        "face_region_faces": np.arange(len(faces), dtype=np.int32),
    }
    stats = {k: v for k, v in d.items() if k.startswith("n_")}
    stats.update({"identity_std_mm": (s_id * 1000).round(2).tolist(),
                  "expression_pc_std_mm": (s_ex * 1000).round(2).tolist(),
                  "expression_subspace_dims": int(Q.shape[1]),
                  "n_within_person_images": int(len(within)),
                  "identity_variance_kept": float((s_id ** 2).sum() / (ru_id.var(0).sum())),
                  "photos_faces": info68["n_faces"], "photos_frontal": info68["n_frontal"],
                  "joints": rg["joints"].round(4).tolist(),
                  "n_expr_by_class": {c: int((em == c).sum()) for c in sorted(set(em.tolist()))}})
    return Build(template=T, faces=faces, mirror=mirror, arrays=arrays, expression_names=names,
                 stats=stats)
