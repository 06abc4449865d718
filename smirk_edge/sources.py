"""Frame sources for video: files, cameras and network streams, as plain iterators of BGR frames.

``open_source(spec)`` takes what a user types: a camera index (``"0"``), an RTSP / HTTP(S) URL
(``rtsp://...``, ``http://host/stream.mjpg``) or a video file, and returns a :class:`FrameSource`,
an iterator of ``(H, W, 3)`` uint8 BGR frames to pass to :meth:`Reconstructor.stream
<smirk_edge.Reconstructor.stream>`::

    from smirk_edge.sources import open_source

    with open_source("rtsp://camera.local/stream", max_frames=1000) as src:
        for faces in rec.stream(src, timestamps=src.timestamps()):
            ...

Files are read frame by frame, none dropped. Live sources (cameras, URLs) use a *latest-frame*
policy: a reader thread keeps only the newest frame, so a consumer slower than the source sees
fresh frames and the older ones are dropped and counted (:attr:`FrameSource.dropped`), instead of
an ever-growing delay. A failed read on a live source is retried (a camera loop never dies on one
bad frame); the source ends after ``max_failures`` failed reads in a row. Timestamps are the
frame's position in the file (files) or the arrival time (live).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import InputError

__all__ = ["FrameSource", "is_live_spec", "open_source"]

LIVE_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://", "rtmp://", "udp://", "tcp://")


def is_live_spec(spec: str) -> bool:
    """True for a camera index (``"0"``) or a stream URL; False for anything else (a file path)."""
    s = str(spec).strip()
    return s.isdigit() or s.lower().startswith(LIVE_SCHEMES)


class FrameSource:
    """An iterator of BGR frames from a file, a camera or a stream URL (see the module docstring).

    Args:
        spec: camera index (int or digit string), URL, or path of a video file.
        max_frames: stop after this many frames (None: until the source ends).
        live: the latest-frame policy; default: True for cameras and URLs, False for files.
        max_failures: a live source ends after this many failed reads in a row.
        open_timeout_s: how long to wait for a live source's first frame.

    Attributes:
        name: the spec as given. ``fps``: the source's nominal frame rate (30 when it states none).
        frames_read: frames delivered so far. ``dropped``: live frames skipped by the
        latest-frame policy. ``failures``: failed reads. ``expected_frames``: a file's stated
        frame count (None for live sources). ``end_reason``: why iteration stopped
        (``"end"``, ``"max_frames"``, ``"failures"``, ``"closed"``), None while running.
        ``truncated``: a file that ended before its stated frame count.
    """

    def __init__(self, spec: int | str, max_frames: int | None = None, live: bool | None = None,
                 max_failures: int = 50, open_timeout_s: float = 20.0):
        import cv2

        if max_frames is not None and (isinstance(max_frames, bool) or int(max_frames) < 1):
            raise InputError(f"max_frames must be >= 1 or None, got {max_frames!r}")
        self.name = str(spec)
        s = self.name.strip()
        self.is_camera = isinstance(spec, int) or s.isdigit()
        self.live = is_live_spec(s) if live is None else bool(live)
        if not self.live and not self.is_camera and not Path(s).is_file():
            raise InputError(f"{s}: no such file (a camera is a number such as 0, a stream a URL such as rtsp://...)")
        self.max_frames = None if max_frames is None else int(max_frames)
        self.max_failures = int(max_failures)
        self.open_timeout_s = float(open_timeout_s)
        self.frames_read = self.dropped = self.failures = 0
        self.end_reason: str | None = None
        self.last_stamp: float = 0.0
        self._cap = cv2.VideoCapture(int(s)) if self.is_camera else cv2.VideoCapture(s)
        if not self._cap.isOpened():
            self._cap.release()
            raise InputError(f"{s}: cannot open {'camera' if self.is_camera else 'stream' if self.live else 'video'}")
        fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if 0.5 < fps < 1000 else 30.0
        count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.expected_frames = count if (not self.live and count > 0) else None
        self._lock = threading.Condition()
        self._latest: tuple[int, np.ndarray, float] | None = None
        self._seq = 0
        self._stop = threading.Event()
        self._reader_done = False
        self._thread: threading.Thread | None = None
        self._t0 = time.monotonic()
        if self.live:
            self._thread = threading.Thread(target=self._read_live, name=f"smirk-edge source {s}", daemon=True)
            self._thread.start()

    # -- reading ---------------------------------------------------------------------------
    def _read_live(self) -> None:
        failures = 0
        try:
            while not self._stop.is_set():
                ok, frame = self._cap.read()
                if not ok or frame is None or frame.size == 0:
                    failures += 1
                    with self._lock:
                        self.failures += 1
                    if failures >= self.max_failures:
                        break
                    time.sleep(0.01)
                    continue
                failures = 0
                with self._lock:
                    self._seq += 1
                    self._latest = (self._seq, frame, time.monotonic() - self._t0)
                    self._lock.notify_all()
        finally:
            with self._lock:
                self._reader_done = True
                self._lock.notify_all()

    def _next_live(self, last_seq: int) -> tuple[int, np.ndarray, float] | None:
        deadline = time.monotonic() + (self.open_timeout_s if last_seq == 0 else max(self.open_timeout_s, 5.0))
        with self._lock:
            while self._latest is None or self._latest[0] <= last_seq:
                if self._reader_done or self._stop.is_set():
                    return None
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._lock.wait(min(left, 0.5))
            return self._latest

    def __iter__(self) -> Iterator[np.ndarray]:
        last_seq = 0
        try:
            while self.max_frames is None or self.frames_read < self.max_frames:
                if self.live:
                    got = self._next_live(last_seq)
                    if got is None:
                        self.end_reason = "closed" if self._stop.is_set() else "failures" if self.failures else "end"
                        return
                    seq, frame, stamp = got
                    self.dropped += seq - last_seq - 1
                    last_seq = seq
                else:
                    ok, frame = self._cap.read()
                    if not ok or frame is None:
                        self.end_reason = "end"
                        return
                    stamp = self.frames_read / self.fps
                self.frames_read += 1
                self.last_stamp = float(stamp)
                yield frame
            self.end_reason = "max_frames"
        finally:
            if self.end_reason is None:
                self.end_reason = "closed"

    def timestamps(self) -> Iterator[float]:
        """Seconds of each frame as it is yielded (pass as ``stream(src, timestamps=src.timestamps())``)."""
        while True:
            yield self.last_stamp

    @property
    def truncated(self) -> bool:
        return (self.expected_frames is not None and self.end_reason == "end"
                and self.frames_read < self.expected_frames)

    def info(self) -> dict:
        """What the source did, JSON-ready."""
        return {"source": self.name, "live": self.live, "fps": self.fps, "frames_read": self.frames_read,
                "expected_frames": self.expected_frames, "dropped": self.dropped, "failed_reads": self.failures,
                "end_reason": self.end_reason, "truncated": self.truncated}

    # -- life cycle ------------------------------------------------------------------------
    def close(self) -> None:
        """Stop reading and release the capture."""
        self._stop.set()
        with self._lock:
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self._cap.release()

    def __enter__(self) -> "FrameSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_source(spec: int | str, max_frames: int | None = None, **keywords) -> FrameSource:
    """A :class:`FrameSource` for a camera index, a stream URL or a video file."""
    return FrameSource(spec, max_frames, **keywords)
