"""Photo augmentations for the faces cameras actually see: turned heads, occluders, light, blur.

Two kinds, both applied to a training crop ``(S, S, 3)`` float32 BGR in [0, 1] whose landmarks are
known in crop pixels:

* :func:`profile` — *3D face profiling* (the way 300W-LP was made from 300-W): the photo's own
  MediaPipe mesh (478 points with depth) is rotated about the head centre to a larger yaw and
  another pitch, and the photo is re-rendered by a piecewise-affine warp over a triangulation of
  the mesh and of fixed anchor points around it (the background is warped to fill the space the
  face leaves or takes). Triangles are painted far-to-near, so the side that turns away is hidden
  by the near side. Landmarks move *exactly* with the pixels: the 478 points are the rotated mesh,
  and any other point (the annotated 68) is carried through the triangle it lies in.
* :func:`occlude_and_degrade` — hands, hair strands, glasses, masks and microphones drawn over the
  face, strong side light, blur and low resolution. Landmark targets do not change: the encoder is
  asked for the face under the occluder.

Randomness comes only from the ``numpy.random.Generator`` passed in (the data loader's per-item
generator), so an item is the same in any worker.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

N_MESH = 468

#: MediaPipe face-oval indices in order around the face (the outline the occluders are placed on).
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
             152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)
#: a few MediaPipe points used to place occluders: eye centres-ish, nose tip, mouth corners, chin
_RIGHT_EYE, _LEFT_EYE, _NOSE, _MOUTH_R, _MOUTH_L, _CHIN, _FOREHEAD = 159, 386, 4, 61, 291, 152, 10


@dataclass
class Profiled:
    """Result of :func:`profile`: the warped ``image``, the rotated ``landmarks478 (478, 3)`` crop
    pixels (x, y, depth), the yaw change ``delta_yaw`` / ``delta_pitch`` in degrees, and
    ``carry(points (K, 2)) -> (K, 2)`` mapping other crop points with the warp (NaN outside it)."""

    image: np.ndarray
    landmarks478: np.ndarray
    delta_yaw: float
    delta_pitch: float
    carry: object


def _rotation_model(yaw_deg: float, pitch_deg: float) -> np.ndarray:
    """Rotation in the model frame (x right, y up, z toward the camera): yaw about y, then pitch about x."""
    a, b = np.radians(yaw_deg), np.radians(pitch_deg)
    ry = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rx @ ry


def source_yaw(landmarks478: np.ndarray) -> float:
    """Yaw in degrees (the annotation's convention) of a face from its MediaPipe points ``(478, 3)``."""
    from .annotate import _standin, fit_similarity, yaw_degrees

    model = np.asarray(landmarks478[:N_MESH], np.float64) * np.array([1.0, -1.0, -1.0])
    _, rot, _, _ = fit_similarity(_standin().v_template, model[None])
    return float(yaw_degrees(rot)[0])


def _anchors(centre: np.ndarray, radius: float, size: int) -> np.ndarray:
    ang = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    ring = centre + 1.6 * radius * np.stack([np.cos(ang), np.sin(ang)], 1)
    e = float(size)
    border = np.array([[-1, -1], [e / 2, -1], [e, -1], [e, e / 2], [e, e], [e / 2, e], [-1, e], [-1, e / 2]],
                      np.float64)
    return np.concatenate([ring, border])


def profile(image: np.ndarray, landmarks478: np.ndarray, delta_yaw: float, delta_pitch: float = 0.0) -> Profiled:
    """Re-render a face crop turned by ``delta_yaw`` / ``delta_pitch`` degrees (see the module docstring).

    Args:
        image: ``(S, S, 3)`` float32 crop.
        landmarks478: ``(478, 3)`` crop pixels with MediaPipe depth in crop pixels (smaller = closer).
        delta_yaw, delta_pitch: degrees, in the yaw convention of the annotations (positive yaw
            turns the face as the stand-in's positive yaw does).
    """
    from scipy.spatial import Delaunay

    S = image.shape[0]
    P = np.asarray(landmarks478, np.float64)
    mesh = P[:N_MESH]
    lo, hi = mesh[:, :2].min(0), mesh[:, :2].max(0)
    width = float(max(hi[0] - lo[0], hi[1] - lo[1], 1.0))
    centre = np.array([mesh[:, 0].mean(), mesh[:, 1].mean(), mesh[:, 2].mean() + 0.5 * width])
    rm = _rotation_model(delta_yaw, delta_pitch)
    flip = np.diag([1.0, -1.0, -1.0])
    ri = flip @ rm @ flip  # the same rotation in the image frame (x right, y down, z away)
    Q = (P - centre) @ ri.T + centre
    anchors = _anchors(centre[:2], width / 2.0, S)
    src2 = np.concatenate([mesh[:, :2], anchors])
    dst2 = np.concatenate([Q[:N_MESH, :2], anchors])
    tri = Delaunay(src2)
    simp = tri.simplices  # (T, 3)
    far = float(Q[:, 2].max() + 10.0 * width)
    depth_v = np.concatenate([Q[:N_MESH, 2], np.full(len(anchors), far)])
    order = np.argsort(-depth_v[simp].max(1), kind="stable")  # far first (anchors and mixed first)
    # affine target -> source per triangle
    T = dst2[simp]  # (T, 3, 2)
    M = np.concatenate([T, np.ones(T.shape[:2] + (1,))], 2)  # (T, 3, 3)
    det = np.linalg.det(M)
    ok = np.abs(det) > 1e-6
    A = np.zeros((len(simp), 3, 2))
    A[ok] = np.linalg.solve(M[ok], src2[simp][ok])  # [x y 1] @ A = source
    ids = np.full((S, S), -1.0, np.float32)
    scale = 16
    for k in order:
        if ok[k]:
            cv2.fillConvexPoly(ids, np.round(T[k] * scale).astype(np.int32), float(k), lineType=cv2.LINE_8,
                               shift=4)
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float64)
    idx = ids.astype(np.int64)
    inside = idx >= 0
    idx[~inside] = 0
    Ak = A[idx]  # (S, S, 3, 2)
    mx = xx * Ak[..., 0, 0] + yy * Ak[..., 1, 0] + Ak[..., 2, 0]
    my = xx * Ak[..., 0, 1] + yy * Ak[..., 1, 1] + Ak[..., 2, 1]
    mx[~inside], my[~inside] = xx[~inside], yy[~inside]
    out = cv2.remap(image, mx.astype(np.float32), my.astype(np.float32), cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_REFLECT)

    src_tri = src2[simp]  # (T, 3, 2)
    e1, e2 = src_tri[:, 1] - src_tri[:, 0], src_tri[:, 2] - src_tri[:, 0]
    den = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    good_t = np.abs(den) > 1e-9

    def carry(points: np.ndarray) -> np.ndarray:
        q = np.asarray(points, np.float64).reshape(-1, 2)
        d = q[:, None, :] - src_tri[None, :, 0]  # (K, T, 2)
        with np.errstate(divide="ignore", invalid="ignore"):
            b1 = (d[..., 0] * e2[:, 1] - d[..., 1] * e2[:, 0]) / den
            b2 = (e1[:, 0] * d[..., 1] - e1[:, 1] * d[..., 0]) / den
        b0 = 1 - b1 - b2
        hit = good_t & (b0 >= -1e-9) & (b1 >= -1e-9) & (b2 >= -1e-9)
        res = np.full_like(q, np.nan)
        k_ok = hit.any(1)
        t_of = hit.argmax(1)
        for k in np.flatnonzero(k_ok):
            t = t_of[k]
            res[k] = dst2[simp[t]].T @ np.array([b0[k, t], b1[k, t], b2[k, t]])
        return res

    return Profiled(out.astype(np.float32), Q.astype(np.float32), float(delta_yaw), float(delta_pitch), carry)


def sample_profile_angles(yaw_src: float, rng: np.random.Generator, max_yaw: float = 80.0,
                          min_step: float = 15.0, max_pitch: float = 20.0) -> tuple[float, float]:
    """A yaw change that turns the face further from frontal (away from the side the photo shows
    least: the far cheek of a turned face was never seen) up to ``max_yaw``, and a pitch change.

    Returns ``(delta_yaw, delta_pitch)`` degrees; ``delta_yaw`` is 0 when the face is already turned
    past ``max_yaw - min_step``."""
    sign = np.sign(yaw_src) if abs(yaw_src) >= 5.0 else (1.0 if rng.random() < 0.5 else -1.0)
    room = max_yaw - abs(yaw_src)
    if room < min_step:
        dy = 0.0
    else:
        dy = float(sign * rng.uniform(min_step, room))
    return dy, float(rng.uniform(-max_pitch, max_pitch))


# ------------------------------------------------------------------------------------- occluders


def _skin_colour(image: np.ndarray, lm: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    S = image.shape[0]
    p = np.clip(np.round(lm[[_NOSE, 50, 280]]).astype(int), 0, S - 1)  # nose tip and cheeks
    c = image[p[:, 1], p[:, 0]].mean(0)
    return np.clip(c * rng.uniform(0.8, 1.2, 3), 0, 1)


def _rot(pts: np.ndarray, angle: float, centre: np.ndarray) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return (pts - centre) @ np.array([[c, s], [-s, c]]) + centre


def _draw_hand(canvas, mask, lm, rng, image):
    col = _skin_colour(image, lm, rng)
    face_w = float(np.ptp(lm[:N_MESH, 0]))
    target = lm[rng.choice([_MOUTH_R, _MOUTH_L, _CHIN, _RIGHT_EYE, _LEFT_EYE, 50, 280])]
    ang = rng.uniform(0, 2 * np.pi)
    palm = target + rng.uniform(0.2, 0.6) * face_w * np.array([np.cos(ang), np.sin(ang)])
    axes = (int(0.28 * face_w * rng.uniform(0.8, 1.2)), int(0.36 * face_w * rng.uniform(0.8, 1.2)))
    deg = float(np.degrees(ang)) + 90
    for tgt, val in ((canvas, tuple(float(v) for v in col)), (mask, 1.0)):
        cv2.ellipse(tgt, (int(palm[0]), int(palm[1])), axes, deg, 0, 360, val, -1, cv2.LINE_AA)
    d = (target - palm) / (np.linalg.norm(target - palm) + 1e-6)
    n = np.array([-d[1], d[0]])
    for k in range(rng.integers(2, 5)):
        base = palm + d * axes[1] * 0.6 + n * (k - 1.5) * 0.13 * face_w
        tip = base + d * rng.uniform(0.25, 0.45) * face_w
        th = max(2, int(0.1 * face_w))
        shade = tuple(float(v) for v in np.clip(col * rng.uniform(0.85, 1.05), 0, 1))
        for tgt, val in ((canvas, shade), (mask, 1.0)):
            cv2.line(tgt, tuple(int(v) for v in base), tuple(int(v) for v in tip), val, th, cv2.LINE_AA)


def _draw_hair(canvas, mask, lm, rng, image):
    dark = rng.uniform(0.02, 0.45) * np.array([rng.uniform(0.6, 1.0), rng.uniform(0.7, 1.0), 1.0])
    face_w = float(np.ptp(lm[:N_MESH, 0]))
    top = lm[_FOREHEAD]
    side = 1 if rng.random() < 0.5 else -1
    n = int(rng.integers(6, 30))
    for _ in range(n):
        x0 = top[0] + side * rng.uniform(-0.3, 0.6) * face_w
        p0 = np.array([x0, top[1] - rng.uniform(0.1, 0.4) * face_w])
        p1 = p0 + np.array([-side * rng.uniform(0.0, 0.4), rng.uniform(0.3, 0.6)]) * face_w
        p2 = p1 + np.array([-side * rng.uniform(-0.2, 0.3), rng.uniform(0.2, 0.6)]) * face_w
        t = np.linspace(0, 1, 12)[:, None]
        curve = ((1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2).astype(np.int32)
        th = int(max(1, rng.uniform(0.01, 0.05) * face_w))
        col = tuple(float(v) for v in np.clip(dark * rng.uniform(0.7, 1.3), 0, 1))
        cv2.polylines(canvas, [curve], False, col, th, cv2.LINE_AA)
        cv2.polylines(mask, [curve], False, 1.0, th, cv2.LINE_AA)


def _draw_glasses(canvas, mask, lm, rng, image):
    face_w = float(np.ptp(lm[:N_MESH, 0]))
    col = tuple(float(v) for v in rng.uniform(0.0, 0.5, 3))
    th = max(1, int(rng.uniform(0.015, 0.04) * face_w))
    sun = rng.random() < 0.35
    centres = [lm[_RIGHT_EYE], lm[_LEFT_EYE]]
    axes = (int(0.16 * face_w * rng.uniform(0.9, 1.3)), int(0.11 * face_w * rng.uniform(0.9, 1.3)))
    ang = float(np.degrees(np.arctan2(*(centres[1] - centres[0])[::-1])))
    for c in centres:
        cc = (int(c[0]), int(c[1] + 0.02 * face_w))
        if sun:
            cv2.ellipse(canvas, cc, axes, ang, 0, 360, tuple(0.6 * v for v in col), -1, cv2.LINE_AA)
            cv2.ellipse(mask, cc, axes, ang, 0, 360, 0.85, -1, cv2.LINE_AA)
        cv2.ellipse(canvas, cc, axes, ang, 0, 360, col, th, cv2.LINE_AA)
        cv2.ellipse(mask, cc, axes, ang, 0, 360, 1.0, th, cv2.LINE_AA)
    a, b = centres[0] + (centres[1] - centres[0]) * 0.35, centres[0] + (centres[1] - centres[0]) * 0.65
    for tgt, val in ((canvas, col), (mask, 1.0)):
        cv2.line(tgt, tuple(int(v) for v in a), tuple(int(v) for v in b), val, th, cv2.LINE_AA)


def _draw_mask(canvas, mask, lm, rng, image):
    oval = lm[list(FACE_OVAL), :2]
    nose_y = lm[_NOSE, 1] - rng.uniform(0.0, 0.08) * float(np.ptp(lm[:N_MESH, 1]))
    low = oval[oval[:, 1] >= nose_y]
    if len(low) < 3:
        return
    left, right = oval[np.argmin(oval[:, 0])], oval[np.argmax(oval[:, 0])]
    poly = np.concatenate([[[left[0], nose_y]], low[np.argsort(np.arctan2(low[:, 1] - nose_y, low[:, 0] - lm[_NOSE, 0]))],
                           [[right[0], nose_y]]])
    hull = cv2.convexHull(poly.astype(np.float32)).astype(np.int32)
    col = tuple(float(v) for v in (rng.uniform(0.75, 1.0, 3) if rng.random() < 0.6 else rng.uniform(0.0, 0.4, 3)))
    cv2.fillConvexPoly(canvas, hull, col, cv2.LINE_AA)
    cv2.fillConvexPoly(mask, hull, 1.0, cv2.LINE_AA)


def _draw_microphone(canvas, mask, lm, rng, image):
    face_w = float(np.ptp(lm[:N_MESH, 0]))
    mouth = (lm[_MOUTH_R] + lm[_MOUTH_L]) / 2
    head = mouth + np.array([rng.uniform(-0.3, 0.3), rng.uniform(0.05, 0.35)]) * face_w
    r = int(rng.uniform(0.1, 0.2) * face_w)
    col = tuple(float(v) for v in rng.uniform(0.0, 0.3, 3))
    end = head + np.array([rng.uniform(-0.4, 0.4), 1.0]) * face_w
    for tgt, val in ((canvas, col), (mask, 1.0)):
        cv2.line(tgt, tuple(int(v) for v in head), tuple(int(v) for v in end), val, max(2, int(0.08 * face_w)),
                 cv2.LINE_AA)
        cv2.circle(tgt, (int(head[0]), int(head[1])), r, val, -1, cv2.LINE_AA)


OCCLUDERS = {"hand": _draw_hand, "hair": _draw_hair, "glasses": _draw_glasses, "mask": _draw_mask,
             "microphone": _draw_microphone}


def occlude(image: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator, kind: str | None = None) -> np.ndarray:
    """Draw one occluder (``kind`` from :data:`OCCLUDERS`, random when None) over the face.

    ``image``: ``(S, S, 3)`` float32 BGR [0, 1]; ``landmarks``: ``(478, 2+)`` crop pixels."""
    kind = kind or list(OCCLUDERS)[int(rng.integers(len(OCCLUDERS)))]
    canvas = np.zeros_like(image)
    mask = np.zeros(image.shape[:2], np.float32)
    OCCLUDERS[kind](canvas, mask, np.asarray(landmarks, np.float64)[:, :2], rng, image)
    mask = cv2.GaussianBlur(mask, (3, 3), 0)[..., None]
    # a little shading so flat occluders are not trivially separable
    shade = 1.0 + rng.uniform(-0.15, 0.15) * np.linspace(-1, 1, image.shape[0], dtype=np.float32)[:, None, None]
    return (image * (1 - mask) + canvas * shade * mask).astype(np.float32)


def side_light(image: np.ndarray, rng: np.random.Generator, strength: float = 0.7) -> np.ndarray:
    """Strong light from one side: a multiplicative ramp (1 - s .. 1 + s) across a random direction."""
    S = image.shape[0]
    ang = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32) / (S - 1) - 0.5
    ramp = (np.cos(ang) * xx + np.sin(ang) * yy) * 2  # -1 .. 1
    s = rng.uniform(0.3, strength)
    gain = 1 + s * np.tanh(2.0 * ramp)
    return np.clip(image * gain[..., None], 0, 1).astype(np.float32)


def blur(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gaussian (defocus) or linear (motion) blur."""
    if rng.random() < 0.5:
        sigma = rng.uniform(0.8, 3.0)
        return cv2.GaussianBlur(image, (0, 0), sigma)
    k = int(rng.integers(5, 15))
    kern = np.zeros((k, k), np.float32)
    kern[k // 2] = 1.0 / k
    m = cv2.getRotationMatrix2D((k / 2 - 0.5, k / 2 - 0.5), rng.uniform(0, 180), 1.0)
    kern = cv2.warpAffine(kern, m, (k, k))
    kern /= max(kern.sum(), 1e-6)
    return cv2.filter2D(image, -1, kern)


def low_resolution(image: np.ndarray, rng: np.random.Generator, min_side: int = 24, max_side: int = 80) -> np.ndarray:
    """Down to a ``min_side..max_side`` pixel crop and back (a face far from the camera), with JPEG."""
    S = image.shape[0]
    side = int(rng.integers(min_side, max_side + 1))
    small = cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA)
    if rng.random() < 0.5:
        ok, enc = cv2.imencode(".jpg", np.clip(small * 255, 0, 255).astype(np.uint8),
                               [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(25, 80))])
        if ok:
            small = cv2.imdecode(enc, cv2.IMREAD_COLOR).astype(np.float32) / 255.0
    return cv2.resize(small, (S, S), interpolation=cv2.INTER_LINEAR)


def occlude_and_degrade(image: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator, cfg) -> np.ndarray:
    """Apply each of occlusion, side light, blur and low resolution with its probability in ``cfg``
    (:class:`~smirk_edge.training.config.CropAugmentConfig`: ``occlusion``, ``side_light``,
    ``blur``, ``low_res``)."""
    out = image
    if rng.random() < cfg.occlusion:
        out = occlude(out, landmarks, rng)
        if rng.random() < 0.25:
            out = occlude(out, landmarks, rng)
    if rng.random() < cfg.side_light:
        out = side_light(out, rng)
    if rng.random() < cfg.blur:
        out = blur(out, rng)
    if rng.random() < cfg.low_res:
        out = low_resolution(out, rng)
    return out


# ------------------------------------------------------------------------------------- contact sheet


def contact_sheet(dataset, path, count: int = 16, columns: int = 8, seed: int = 0, tile: int = 160,
                  index: int | None = None):
    """PNG grid of training views from ``dataset`` (a :class:`~smirk_edge.training.data.FaceCropDataset`)
    as the trainer sees them, with their landmark targets drawn: the 105 MediaPipe-indexed points
    (cyan), annotated 68 points (green) and mesh-derived 68 points (red). ``index`` fixes one face
    (a sheet of one photo's augmentations); else faces are drawn in turn."""
    from pathlib import Path

    from smirk_edge.camera import ndc_to_pixels

    S = dataset.size
    tiles = []
    for k in range(count):
        i = index if index is not None else k % len(dataset)
        v = dataset.crop(dataset.table.read(i), i, np.random.default_rng([seed, k]))
        img = np.ascontiguousarray((v["image"].transpose(1, 2, 0)[..., ::-1] * 255).clip(0, 255).astype(np.uint8))
        for (x, y) in ndc_to_pixels(v["landmarks105"], S):
            cv2.circle(img, (int(round(x)), int(round(y))), 1, (255, 220, 0), -1)
        for (x, y), r in zip(ndc_to_pixels(v["landmarks68"], S), v["real68"]):
            cv2.circle(img, (int(round(x)), int(round(y))), 2, (0, 220, 0) if r else (0, 0, 230), -1)
        tiles.append(cv2.resize(img, (tile, tile), interpolation=cv2.INTER_AREA))
    rows = [np.concatenate(tiles[r:r + columns] + [np.zeros_like(tiles[0])] * max(0, r + columns - len(tiles)), 1)
            for r in range(0, len(tiles), columns)]
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    ok, enc = cv2.imencode(out.suffix or ".png", np.concatenate(rows, 0), [cv2.IMWRITE_JPEG_QUALITY, 88])
    if not ok:
        raise OSError(f"could not encode {out}")
    out.write_bytes(enc.tobytes())
    return out
