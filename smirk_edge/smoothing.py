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
