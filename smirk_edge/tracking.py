"""Stage *track*: faces followed across video frames on the pipeline's stages, checked every frame.

:class:`Tracker` keeps per-stream state: the tracks, each with the landmark box of its next crop,
its filters (:class:`~smirk_edge.smoothing.StreamSmoothing`) and its identity lock. One
:meth:`Tracker.step`:

1. a frame of another size than the last ends every track (tracking restarts on this frame);
2. the full detector runs on the first frame, when nothing is tracked, every ``redetect_every``
   frames, and whenever a track fails its check; detections are matched to tracks by IoU;
3. otherwise each track is *checked*: the detector runs on the region around the track (a small
   image, far cheaper than the whole frame). A track whose region holds no face is ended (its
   face has left or is hidden) and the frame is re-detected (``detector.detect_region`` when the
   detector has it: BlazeFace's short-range model alone on the 128 px region); the detection's score is the track's
   confidence (:attr:`Face.score <smirk_edge.results.Face.score>`), its eye keypoints the track's
   roll;
4. each track is cropped from its box: the box of its last predicted landmarks pulled toward the
   box the check found (the landmark -> box loop alone has a fixed point smaller than the face,
   so without the detector's anchor the box shrinks frame after frame; see docs/video.md), and
   turned upright as a detected face's crop is, when the face is rolled past the crop policy's
   ``align_roll`` (a tilted head in an upright crop is what the encoder never saw in training);
5. encode, smooth (:func:`smirk_edge.pipeline.smooth`), decode, project, and move each track's
   box to the box of its predicted landmarks.

An ended track is remembered for :data:`LOST_FRAMES` frames (its id, identity lock, last box and
velocity): while one is remembered the full detector runs every :data:`REACQUIRE_EVERY` frames,
and a new detection near a remembered track's predicted box takes that track's id back (two faces
crossing: the detector sees one while they overlap, then both again, each with its own id).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, ContextManager

import cv2
import numpy as np

from .crop import DETECTOR_TO_LANDMARK_BOX
from .image import as_bgr_uint8
from .pipeline import StageTimer, Stages, image_affines, landmark_boxes, smooth
from .results import FrameResult
from .smoothing import AffineFilter, IdentityLock, OneEuroConfig, OneEuroFilter, StreamSmoothing

__all__ = ["Track", "Tracker", "box_iou"]

SMOOTHED = ("pose", "shape", "expression", "eyelid", "jaw", "affine")
CHECK_REGION = 2.2
"""Side of the region a track's check runs the detector on, in track-box sides."""
CHECK_SIZE = 128
"""The region is resampled to at most this many pixels a side before detection."""
MIN_IOU = 0.3
"""A detection belongs to a track when their landmark boxes overlap by at least this IoU."""
ANCHOR_WEIGHT = 0.5
"""Weight of the checked detection's box in the next crop box (the rest: the landmark box)."""
AGREE_IOU = 0.5
"""Below this IoU between the landmark box and the checked detection, the detection's box is used alone."""
LOST_FRAMES = 30
"""An ended track is remembered this many frames; a detection near its predicted box revives it."""
REACQUIRE_EVERY = 2
"""While a track is remembered, the full detector runs every this many frames."""
REVIVE_DISTANCE = 0.8
"""A detection revives a remembered track when its centre is within this many box sides of the
track's predicted centre and its size within a factor of 1.6."""


class Track:
    """One followed face: stable ``id``, the landmark ``box`` of its next crop, its filters.

    ``score``: the latest detector score of the face (full detection or the track's check);
    ``roll``: the face's in-image roll from that detection's eye keypoints (degrees counter-clockwise).
    """

    def __init__(self, track_id: int, box: np.ndarray, smoothing: StreamSmoothing | OneEuroConfig, score: float = 1.0,
                 roll: float = 0.0):
        s = StreamSmoothing.of(smoothing)
        self.id = track_id
        self.box = np.asarray(box, np.float64)  # 478-landmark-equivalent box for the next crop
        self.score = float(score)
        self.roll = float(roll)
        self.age = 0
        self.velocity = np.zeros(2)  # box-centre pixels per frame (exponential mean)
        self.lost_at = -1  # frame count when ended (remembered tracks)
        self.filters: dict[str, Any] = {
            "pose": OneEuroFilter(s.pose), "expression": OneEuroFilter(s.expression),
            "eyelid": OneEuroFilter(s.expression), "jaw": OneEuroFilter(s.expression),
            "shape": IdentityLock(s.identity_frames), "affine": AffineFilter(s.landmarks)}


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two ``(4,)`` boxes x0, y0, x1, y1."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def fuse_boxes(landmark_box: np.ndarray, detected_box: np.ndarray, weight: float = ANCHOR_WEIGHT) -> np.ndarray:
    """The next crop box: ``landmark_box`` pulled toward ``detected_box`` (centre and side, by
    ``weight``); the detected box alone when the two disagree (IoU below :data:`AGREE_IOU`)."""
    if box_iou(landmark_box, detected_box) < AGREE_IOU:
        return np.asarray(detected_box, np.float64)
    return (1.0 - weight) * np.asarray(landmark_box, np.float64) + weight * np.asarray(detected_box, np.float64)


class Tracker:
    """Per-stream state of :meth:`Reconstructor.stream <smirk_edge.Reconstructor.stream>`.

    Args:
        stages: the bound pipeline stages (``Reconstructor.stages``).
        smoothing: the filters of every track (a :class:`StreamSmoothing`, or one
            :class:`OneEuroConfig` for every signal).
        redetect_every: run the full detector every N frames even while every track passes its check.
        max_faces: at most this many tracks.
        lock: held during each step (the Reconstructor's, so a stream and direct calls on one
            Reconstructor never run its engines at the same time); None for no lock.

    Attributes:
        counts: ``detections`` (full-frame detector runs), ``checks`` (per-track region checks),
            ``lost`` (tracks ended by a failed check), ``restarts`` (frame-size changes).

    Tracks are cropped with the stages' crop policy: turned upright past its ``align_roll``, as
    detected faces are.
    """

    def __init__(self, stages: Stages, smoothing: StreamSmoothing | OneEuroConfig = StreamSmoothing(),
                 redetect_every: int = 15, max_faces: int = 8, lock: ContextManager[Any] | None = None):
        self.stages = stages
        self.smoothing = StreamSmoothing.of(smoothing)
        self.redetect_every = int(redetect_every)
        self.max_faces = int(max_faces)
        self.lock = lock
        self.policy = stages.policy
        self.tracks: list[Track] = []
        self.lost: list[Track] = []  # ended tracks remembered for LOST_FRAMES frames
        self.frames = 0
        self.next_id = 0
        self.frame_shape: tuple[int, int] | None = None
        self.since_detect = 0
        self.counts = {"detections": 0, "checks": 0, "lost": 0, "restarts": 0, "revived": 0}

    def step(self, frame: np.ndarray, index: int, stamp: float | None = None) -> FrameResult:
        """Faces of frame ``index`` (timestamp ``stamp`` seconds, or None for the nominal frame rate)."""
        with self.lock if self.lock is not None else nullcontext():
            return self._step(frame, index, stamp)

    def reset(self) -> None:
        """End every track and forget the ended ones (the next frame is detected afresh)."""
        self.tracks = []
        self.lost = []

    def _forget(self, tr: Track) -> None:
        tr.lost_at = self.frames
        self.lost = [t for t in self.lost if t.id != tr.id] + [tr]

    def _predicted(self, tr: Track) -> np.ndarray:
        shift = tr.velocity * (self.frames - tr.lost_at)
        return tr.box + np.r_[shift, shift]

    def _revive(self, box: np.ndarray, score: float, roll: float = 0.0) -> Track | None:
        """The remembered track a new detection continues (nearest predicted centre), or None."""
        best, best_d = None, REVIVE_DISTANCE
        b = np.asarray(box, np.float64)
        side_b = max(b[2] - b[0], b[3] - b[1])
        for tr in self.lost:
            p = self._predicted(tr)
            side = max(p[2] - p[0], p[3] - p[1])
            if not (side > 0 and 1 / 1.6 <= side_b / side <= 1.6):
                continue
            d = np.hypot((b[0] + b[2] - p[0] - p[2]) / 2, (b[1] + b[3] - p[1] - p[3]) / 2) / side
            if d < best_d:
                best, best_d = tr, d
        if best is not None:
            self.lost.remove(best)
            best.box, best.score, best.roll, best.velocity = b, float(score), float(roll), np.zeros(2)
            best.filters["affine"] = AffineFilter(self.smoothing.landmarks)  # the face moved while unseen
            self.counts["revived"] += 1
        return best

    def _detect(self, img: np.ndarray, timer: StageTimer) -> None:
        det = self.stages.detect(img, timer)
        self.counts["detections"] += 1
        self.since_detect = 0
        self.match(det.boxes, det.scores, det.rolls)

    def _step(self, frame: np.ndarray, index: int, stamp: float | None) -> FrameResult:
        timer = StageTimer()
        stages = self.stages
        img = as_bgr_uint8(frame)
        h, w = img.shape[:2]
        self.frames += 1
        self.lost = [t for t in self.lost if self.frames - t.lost_at <= LOST_FRAMES]
        if self.frame_shape != (h, w):
            if self.tracks:
                self.counts["restarts"] += 1
            self.tracks, self.lost = [], []
            self.frame_shape = (h, w)
        reacquire = bool(self.lost) and len(self.tracks) < self.max_faces \
            and self.since_detect + 1 >= REACQUIRE_EVERY
        if not self.tracks or self.since_detect + 1 >= self.redetect_every or reacquire:
            self._detect(img, timer)
        else:
            self.since_detect += 1
            with timer("check"):
                lost = self.check(img)
            if lost:
                self._detect(img, timer)
        if not self.tracks:
            return FrameResult([], timer.finish(), frame_index=index)
        crops, params = stages.encode_crops(img, np.array([tr.box for tr in self.tracks]),
                                            np.array([tr.roll for tr in self.tracks]), timer, self.policy)
        with timer("smooth"):
            raw = image_affines(params["cam"], [t.matrix for t in crops.transforms], self.policy.size)
            affines = np.array([smooth(tr.filters, params, i, a, stamp) for i, (tr, a) in enumerate(zip(self.tracks, raw))])
        boxes = np.array([tr.box for tr in self.tracks])
        faces = stages.faces(params, crops, boxes, np.array([tr.score for tr in self.tracks]), timer, affines,
                             [tr.id for tr in self.tracks])
        with timer("decode"):  # the frame's decode and 105-landmark projection, read here first
            new_boxes = landmark_boxes(np.array([f.landmarks105 for f in faces]),
                                       np.array([f.params.pose for f in faces]))
        keep = []
        for tr, f, new_box in zip(self.tracks, faces, new_boxes):
            side = min(new_box[2] - new_box[0], new_box[3] - new_box[1])
            cx, cy = (new_box[0] + new_box[2]) / 2, (new_box[1] + new_box[3]) / 2
            if side >= 8 and np.all(np.isfinite(new_box)) and -0.25 * w <= cx <= 1.25 * w and -0.25 * h <= cy <= 1.25 * h:
                move = (new_box[:2] + new_box[2:] - tr.box[:2] - tr.box[2:]) / 2
                tr.velocity = 0.5 * tr.velocity + 0.5 * move
                tr.box = new_box
                tr.age += 1
                f.box = new_box.astype(np.float32)
                keep.append((tr, f))
        self.tracks = [tr for tr, _ in keep]
        timings = timer.finish()
        faces = [f for _, f in keep]
        for f in faces:
            f.timings = dict(timings)
        return FrameResult(faces, timings, frame_index=index)

    def check(self, img: np.ndarray) -> bool:
        """Run the detector on each track's region; move each box toward what it finds, end the
        tracks whose region holds no face. True when a track was ended."""
        taken: list[np.ndarray] = []
        kept = []
        for tr in self.tracks:
            self.counts["checks"] += 1
            found = self._check_one(img, tr.box, taken)
            if found is None:
                self.counts["lost"] += 1
                self._forget(tr)
                continue
            box, score, roll = found
            taken.append(box)
            tr.box = fuse_boxes(tr.box, box)
            tr.score, tr.roll = score, roll
            kept.append(tr)
        lost = len(kept) < len(self.tracks)
        self.tracks = kept
        return lost

    def _check_one(self, img: np.ndarray, box: np.ndarray, taken: list[np.ndarray]
                   ) -> tuple[np.ndarray, float, float] | None:
        """The detection in the track's region: its landmark box, score and roll (None: no face there)."""
        h, w = img.shape[:2]
        cx, cy = (box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0
        side = CHECK_REGION * max(box[2] - box[0], box[3] - box[1])
        if not (np.isfinite(side) and side >= 4):
            return None
        out = int(min(CHECK_SIZE, max(32, round(side))))
        k = out / side
        m = np.array([[k, 0.0, out / 2.0 - k * cx], [0.0, k, out / 2.0 - k * cy]])
        region = cv2.warpAffine(img, m, (out, out), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        detector = self.stages.detector
        det = getattr(detector, "detect_region", detector.detect)(region)
        best, best_iou = None, MIN_IOU
        n = len(np.asarray(det.scores).reshape(-1))
        raw_kps = np.asarray(getattr(det, "keypoints", ()), np.float64)
        usable = raw_kps.size >= 4 * n and n > 0 and raw_kps.size % n == 0
        kps = raw_kps.reshape(n, -1, 2) if usable else None
        for i, (b, s) in enumerate(zip(np.asarray(det.boxes, np.float64).reshape(-1, 4),
                                       np.asarray(det.scores).reshape(-1))):
            image_box = np.r_[(b[:2] - m[:, 2]) / k, (b[2:] - m[:, 2]) / k]
            lm_box = DETECTOR_TO_LANDMARK_BOX.apply(image_box)
            if any(box_iou(lm_box, t) > 0.5 for t in taken):
                continue  # another track's face
            v = box_iou(lm_box, box)
            if v > best_iou:  # roll from the eyes (subject's right -> left), as a full detection's
                eyes = kps[i, 1] - kps[i, 0] if kps is not None else np.array([1.0, 0.0])  # (no keypoints: upright)
                # (the region is only scaled, so its angles are the image's)
                best, best_iou = (lm_box, float(s), float(np.degrees(np.arctan2(-eyes[1], eyes[0])))), v
        return best

    def match(self, boxes: np.ndarray, scores: np.ndarray | None = None, rolls: np.ndarray | None = None) -> None:
        """Greedy IoU matching of detections to tracks (best pairs first); unmatched tracks are
        dropped, new faces added. ``rolls``: each detection's in-image roll (degrees; None: 0)."""
        scores = np.ones(len(boxes)) if scores is None else np.asarray(scores, np.float64)
        rolls = np.zeros(len(boxes)) if rolls is None else np.asarray(rolls, np.float64).reshape(-1)
        pairs = sorted(((box_iou(tr.box, b), ti, bi) for ti, tr in enumerate(self.tracks)
                        for bi, b in enumerate(boxes)), reverse=True)
        track_of: dict[int, Track] = {}
        used: set[int] = set()
        for v, ti, bi in pairs:
            if v <= MIN_IOU:
                break
            if ti in used or bi in track_of:
                continue
            used.add(ti)
            track_of[bi] = self.tracks[ti]
        for ti, old in enumerate(self.tracks):
            if ti not in used:
                self._forget(old)
        matched: list[Track] = []
        for bi, b in enumerate(boxes):
            tracked = track_of.get(bi)
            if tracked is not None:
                tracked.box = fuse_boxes(tracked.box, np.asarray(b, np.float64))
                tracked.score, tracked.roll = float(scores[bi]), float(rolls[bi])
                matched.append(tracked)
                continue
            revived = self._revive(b, float(scores[bi]), float(rolls[bi]))  # box, score and roll set there
            if revived is None:
                revived = Track(self.next_id, b, self.smoothing, float(scores[bi]), float(rolls[bi]))
                self.next_id += 1
            matched.append(revived)
        self.tracks = matched[: self.max_faces]
