"""Stage *track*: faces followed across video frames on the pipeline's stages.

:class:`Tracker` keeps per-stream state: the tracks, each with the landmark box of its next crop
and One-Euro filters for its parameters and its model -> image transform. One :meth:`Tracker.step`:
detect (on the first frame, when nothing is tracked, and every ``redetect_every`` frames;
detections are matched to tracks by IoU), crop each track from its box, encode, smooth
(:func:`smirk_edge.pipeline.smooth`), decode, project, and move each track's box to the box of
its predicted landmarks (a track whose box degenerates or leaves the frame is dropped).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, ContextManager

import numpy as np

from .image import as_bgr_uint8
from .pipeline import CropPolicy, StageTimer, Stages, image_affines, landmark_boxes, smooth
from .results import FrameResult
from .smoothing import OneEuroConfig, OneEuroFilter

__all__ = ["Track", "Tracker", "box_iou"]

SMOOTHED = ("pose", "shape", "expression", "eyelid", "jaw", "affine")


class Track:
    """One followed face: stable ``id``, the landmark ``box`` of its next crop, its filters."""

    def __init__(self, track_id: int, box: np.ndarray, config: OneEuroConfig):
        self.id = track_id
        self.box = box  # 478-landmark-equivalent box for the next crop
        self.filters = {k: OneEuroFilter(config) for k in SMOOTHED}


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two ``(4,)`` boxes x0, y0, x1, y1."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class Tracker:
    """Per-stream state of :meth:`Reconstructor.stream <smirk_edge.Reconstructor.stream>`.

    Args:
        stages: the bound pipeline stages (``Reconstructor.stages``).
        smoothing: One-Euro parameters of every track.
        redetect_every: run the detector every N frames even while tracking.
        max_faces: at most this many tracks.
        lock: held during each step (the Reconstructor's, so a stream and direct calls on one
            Reconstructor never run its engines at the same time); None for no lock.

    Tracks are cropped upright with the stages' crop scale.
    """

    def __init__(self, stages: Stages, smoothing: OneEuroConfig = OneEuroConfig(), redetect_every: int = 15,
                 max_faces: int = 8, lock: ContextManager[Any] | None = None):
        self.stages = stages
        self.smoothing = smoothing
        self.redetect_every = int(redetect_every)
        self.max_faces = int(max_faces)
        self.lock = lock
        self.policy = CropPolicy(stages.policy.scale, stages.policy.size, align_roll=None)
        self.tracks: list[Track] = []
        self.next_id = 0

    def step(self, frame: np.ndarray, index: int, stamp: float | None = None) -> FrameResult:
        """Faces of frame ``index`` (timestamp ``stamp`` seconds, or None for the nominal frame rate)."""
        with self.lock if self.lock is not None else nullcontext():
            return self._step(frame, index, stamp)

    def _step(self, frame: np.ndarray, index: int, stamp: float | None) -> FrameResult:
        timer = StageTimer()
        stages = self.stages
        img = as_bgr_uint8(frame)
        h, w = img.shape[:2]
        if not self.tracks or index % self.redetect_every == 0:
            self.match(stages.detect(img, timer).boxes)
        if not self.tracks:
            return FrameResult([], timer.finish(), frame_index=index)
        crops, params = stages.encode_crops(img, np.array([tr.box for tr in self.tracks]), None, timer, self.policy)
        with timer("smooth"):
            raw = image_affines(params["cam"], [t.matrix for t in crops.transforms], self.policy.size)
            affines = np.array([smooth(tr.filters, params, i, a, stamp) for i, (tr, a) in enumerate(zip(self.tracks, raw))])
        boxes = np.array([tr.box for tr in self.tracks])
        faces = stages.faces(params, crops, boxes, np.ones(len(self.tracks)), timer, affines,
                             [tr.id for tr in self.tracks])
        new_boxes = landmark_boxes(np.array([f.landmarks105 for f in faces]), np.array([f.params.pose for f in faces]))
        keep = []
        for tr, f, new_box in zip(self.tracks, faces, new_boxes):
            side = min(new_box[2] - new_box[0], new_box[3] - new_box[1])
            cx, cy = (new_box[0] + new_box[2]) / 2, (new_box[1] + new_box[3]) / 2
            if side >= 8 and -0.25 * w <= cx <= 1.25 * w and -0.25 * h <= cy <= 1.25 * h:
                tr.box = new_box
                f.box = new_box.astype(np.float32)
                keep.append((tr, f))
        self.tracks = [tr for tr, _ in keep]
        timings = timer.finish()
        faces = [f for _, f in keep]
        for f in faces:
            f.timings = dict(timings)
        return FrameResult(faces, timings, frame_index=index)

    def match(self, boxes: np.ndarray) -> None:
        """Greedy IoU matching of detections to tracks; unmatched tracks are dropped, new faces added."""
        matched: list[Track] = []
        free = list(self.tracks)
        for b in boxes:
            best, best_iou = None, 0.3
            for tr in free:
                v = box_iou(tr.box, b)
                if v > best_iou:
                    best, best_iou = tr, v
            if best is not None:
                free.remove(best)
                best.box = b
                matched.append(best)
            else:
                matched.append(Track(self.next_id, b, self.smoothing))
                self.next_id += 1
        self.tracks = matched[: self.max_faces]

