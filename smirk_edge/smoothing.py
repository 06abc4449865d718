"""Temporal smoothing for video: the One-Euro filter (Casiez, Roussel, Vogel, CHI 2012).

A low-pass filter whose cutoff rises with the signal's speed: still faces are steadied
(low jitter), fast motion is followed with little lag. Works on numpy vectors of any shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class OneEuroConfig:
    """Filter parameters.

    Attributes:
        min_cutoff: cutoff frequency in Hz when still. Lower = steadier, more lag.
        beta: how fast the cutoff grows with speed (per unit of the signal per second).
        d_cutoff: cutoff in Hz of the speed estimate.
        fps: frame rate assumed when frames carry no timestamps.
    """

    min_cutoff: float = 1.0
    beta: float = 0.5
    d_cutoff: float = 1.0
    fps: float = 30.0

    def __post_init__(self):
        for name in ("min_cutoff", "d_cutoff", "fps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"OneEuroConfig.{name} must be > 0")
        if self.beta < 0:
            raise ValueError("OneEuroConfig.beta must be >= 0")


def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
    tau = 1.0 / (2.0 * math.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


class OneEuroFilter:
    """Filter a stream of same-shaped arrays. ``filter(x, t=None)`` returns the smoothed value."""

    def __init__(self, config: OneEuroConfig = OneEuroConfig()):
        self.config = config
        self.reset()

    def reset(self) -> None:
        self._x: np.ndarray | None = None
        self._dx: np.ndarray | None = None
        self._t: float | None = None

    def filter(self, x: np.ndarray, t: float | None = None) -> np.ndarray:
        x = np.asarray(x, np.float64)
        c = self.config
        if self._x is None or self._x.shape != x.shape:
            self._x, self._dx = x.copy(), np.zeros_like(x)
            self._t = t
            return x.astype(np.float32)
        dt = (t - self._t) if (t is not None and self._t is not None and t > self._t) else 1.0 / c.fps
        self._t = t
        dx = (x - self._x) / dt
        self._dx = self._dx + _alpha(c.d_cutoff, dt) * (dx - self._dx)
        cutoff = c.min_cutoff + c.beta * np.abs(self._dx)
        self._x = self._x + _alpha(cutoff, dt) * (x - self._x)
        return self._x.astype(np.float32)


@dataclass(frozen=True)
class StreamSmoothing:
    """Temporal filters of ``Reconstructor.stream``, one per kind of signal.

    Attributes:
        landmarks: One-Euro filter of the model -> image transform, i.e. of where the face lies
            in the image (landmarks, mesh). Its unit is the face size: ``beta`` is per face size
            per second, so one setting suits any resolution.
        pose: One-Euro filter of the head rotation (axis-angle radians).
        expression: One-Euro filter of expression, jaw and eyelids.
        identity_frames: identity lock: a track's shape is the running mean of its per-frame
            shape estimates over the first ``identity_frames`` frames, then an exponential mean
            with that window (refined as the track goes on, never jumping frame to frame); 1 turns
            the lock off (the raw per-frame shape).

    Defaults tuned on the 26 shared talking-face clips against MediaPipe video mode
    (``benchmarks/video_accuracy.py``; the measured settings are in docs/video.md): with the fast v6
    model and roll-aligned tracked crops, landmarks and pose at (1.5 Hz, beta 60 / 80) follow fast
    heads with 0.3 frames of lag and stay steadier than MediaPipe video mode (0.89x its jitter);
    the earlier (1.5, 30 / 40) lagged 0.4 frames and let one turning head stay more than 5 frames
    above 10 % error, (1.0, 8 / 6) a whole frame.
    """

    landmarks: OneEuroConfig = OneEuroConfig(min_cutoff=1.5, beta=60.0, d_cutoff=1.0)
    pose: OneEuroConfig = OneEuroConfig(min_cutoff=1.5, beta=80.0, d_cutoff=1.0)
    expression: OneEuroConfig = OneEuroConfig(min_cutoff=2.5, beta=1.0, d_cutoff=1.0)
    identity_frames: int = 60

    def __post_init__(self):
        for name in ("landmarks", "pose", "expression"):
            if not isinstance(getattr(self, name), OneEuroConfig):
                raise ValueError(f"StreamSmoothing.{name} must be a OneEuroConfig")
        if isinstance(self.identity_frames, bool) or not isinstance(self.identity_frames, int) \
                or self.identity_frames < 1:
            raise ValueError(f"StreamSmoothing.identity_frames must be an integer >= 1, got {self.identity_frames!r}")

    @classmethod
    def of(cls, value: "StreamSmoothing | OneEuroConfig") -> "StreamSmoothing":
        """``value`` as a StreamSmoothing (one OneEuroConfig is used for every signal)."""
        if isinstance(value, StreamSmoothing):
            return value
        return cls(value, value, value)


class IdentityLock:
    """Running mean of a track's shape estimates (window ``frames``); ``filter(x, t)`` like a filter."""

    def __init__(self, frames: int = 60):
        self.frames = int(frames)
        self.reset()

    def reset(self) -> None:
        self._mean: np.ndarray | None = None
        self.count = 0

    def filter(self, x: np.ndarray, t: float | None = None) -> np.ndarray:
        x = np.asarray(x, np.float64)
        if self._mean is None or self._mean.shape != x.shape:
            self._mean, self.count = x.copy(), 1
        else:
            self.count += 1
            self._mean += (x - self._mean) / min(self.count, self.frames)
        return self._mean.astype(np.float32)


# model-frame points (metres) whose image positions stand for a model -> image transform
_ANCHORS = np.array([[0.0, 0.0], [0.15, 0.0], [0.0, 0.15]])


class AffineFilter:
    """One-Euro filter of a ``(2, 3)`` model -> image affine in face-size units.

    The affine is represented by the image positions of three model points 15 cm apart, divided
    by the face size in pixels when the track started, so ``beta`` means the same at any
    resolution; the filtered points give the filtered affine back."""

    def __init__(self, config: OneEuroConfig = OneEuroConfig()):
        self._filter = OneEuroFilter(config)
        self._unit: float | None = None

    def reset(self) -> None:
        self._filter.reset()
        self._unit = None

    def filter(self, affine: np.ndarray, t: float | None = None) -> np.ndarray:
        a = np.asarray(affine, np.float64)
        pts = _ANCHORS @ a[:, :2].T + a[:, 2]
        if self._unit is None:
            self._unit = max(float(np.linalg.norm(pts[1] - pts[0])), 1e-6)
        q = self._filter.filter(pts / self._unit, t).astype(np.float64) * self._unit
        lin = np.linalg.solve(np.c_[_ANCHORS[1:] - _ANCHORS[0]], (q[1:] - q[0])).T
        return np.c_[lin, q[0] - lin @ _ANCHORS[0]]
