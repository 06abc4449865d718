"""Video outputs that survive a long run: per-frame JSON Lines, an optional overlay video, a summary.

:func:`reconstruct_video` runs :meth:`Reconstructor.stream <smirk_edge.Reconstructor.stream>` on a
:class:`~smirk_edge.sources.FrameSource` and writes, per source ``NAME`` in the output folder:

* ``NAME.jsonl``: one JSON object per frame, written and flushed as the frame is made
  (``{"frame", "time", "faces": [...], "errors": [...], "timings_ms": {...}}``), so an interrupt
  or a crash loses at most the frame being made, and memory does not grow with the video's length;
* ``NAME.overlay.mp4`` (unless ``overlay=False``): H.264 when this OpenCV build can write it,
  else MPEG-4 part 2 (``mp4v``); the summary names the codec used;
* ``NAME.json``: the video summary (frames, faces, dropped frames, whether the file was
  truncated, codec, mean per-stage milliseconds, tracker counts), written atomically (temporary
  file + ``os.replace``), also when the run is interrupted.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = ["JsonlWriter", "OverlayWriter", "reconstruct_video", "write_json_atomic"]

CODECS = (("avc1", "H.264"), ("H264", "H.264"), ("mp4v", "MPEG-4 part 2"))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as JSON to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


class JsonlWriter:
    """Append one JSON object per line to ``path``, flushed after every line."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._f = open(self.path, "w", encoding="utf-8")
        self.lines = 0

    def write(self, obj: dict) -> None:
        self._f.write(json.dumps(obj, separators=(",", ":")) + "\n")
        self._f.flush()
        self.lines += 1

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()


class OverlayWriter:
    """An overlay video opened at the first frame with the first codec of :data:`CODECS` that
    this OpenCV build can write; later frames of another size are resized to the first."""

    def __init__(self, path: str | os.PathLike, fps: float):
        self.path = Path(path)
        self.fps = float(fps)
        self.codec: str | None = None
        self.size: tuple[int, int] | None = None
        self._writer = None
        self._scratch: Path | None = None  # where OpenCV writes when the path is not safe for it

    def _open(self, w: int, h: int) -> None:
        import tempfile

        import cv2

        from .fileio import is_opencv_safe

        target = self.path
        if not is_opencv_safe(target):  # a name that is not UTF-8 never reaches OpenCV
            self._scratch = Path(tempfile.mkdtemp(prefix="smirk-edge-")) / "overlay.mp4"
            target = self._scratch
        for fourcc, name in CODECS:
            wr = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*fourcc), self.fps, (w, h))
            if wr.isOpened():
                self._writer, self.codec, self.size = wr, f"{name} ({fourcc})", (w, h)
                return
            wr.release()
        from .errors import InputError

        raise InputError(f"{self.path}: this OpenCV build cannot write any of {[c for c, _ in CODECS]}; "
                         "use --no-overlay")

    def write(self, frame: np.ndarray) -> None:
        import cv2

        h, w = frame.shape[:2]
        if self._writer is None:
            self._open(w, h)
        if (w, h) != self.size:
            frame = cv2.resize(frame, self.size, interpolation=cv2.INTER_AREA)
        self._writer.write(frame)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        if self._scratch is not None:
            import shutil

            shutil.move(str(self._scratch), self.path)
            shutil.rmtree(self._scratch.parent, ignore_errors=True)
            self._scratch = None


def _frame_record(index: int, stamp: float, faces) -> dict:
    return {"frame": index, "time": round(float(stamp), 4), "faces": [f.to_dict() for f in faces],
            "errors": [f"{type(e).__name__}: {e}" for e in faces.errors],
            "timings_ms": {k: round(v, 3) for k, v in faces.timings.items()}}


def reconstruct_video(rec, source, out: str | os.PathLike, stem: str, overlay: bool = True,
                      show_progress: bool = True, on_frame: Callable[[int, Any], None] | None = None) -> dict:
    """Run ``rec.stream`` over ``source`` (a :class:`~smirk_edge.sources.FrameSource`) and write
    ``stem.jsonl``, ``stem.overlay.mp4`` (``overlay``) and the summary ``stem.json`` in ``out``.

    Returns the summary. Frames that fail are reported in their JSONL line and counted; a
    ``KeyboardInterrupt`` stops the run, the summary is still written (``"interrupted": true``) and
    the interrupt is raised again.
    """
    from .draw import draw

    out = Path(out)
    jsonl = JsonlWriter(out / f"{stem}.jsonl")
    video = OverlayWriter(out / f"{stem}.overlay.mp4", source.fps) if overlay else None
    stage_sums: dict[str, float] = {}
    n_frames = n_faces = n_failed = 0
    interrupted = False
    holder: list[np.ndarray] = []
    t0 = time.perf_counter()

    def tee():
        for frame in source:
            holder.append(frame)
            yield frame

    stream = rec.stream(tee(), timestamps=source.timestamps())
    try:
        for index, faces in enumerate(stream):
            frame = holder.pop() if holder else None
            holder.clear()
            jsonl.write(_frame_record(index, source.last_stamp, faces))
            n_frames += 1
            n_faces += len(faces)
            n_failed += bool(faces.errors)
            for k, v in faces.timings.items():
                stage_sums[k] = stage_sums.get(k, 0.0) + v
            if video is not None and frame is not None and frame.ndim == 3 and frame.shape[2] == 3 \
                    and frame.dtype == np.uint8:
                video.write(draw(frame, faces))
            if on_frame is not None:
                on_frame(index, faces)
            if show_progress:
                elapsed = time.perf_counter() - t0
                total = source.max_frames or source.expected_frames
                print(f"\r{stem}: frame {index + 1}{f'/{total}' if total else ''} faces {len(faces)} "
                      f"{(index + 1) / max(elapsed, 1e-9):.1f} fps dropped {source.dropped}",
                      end="", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if show_progress and n_frames:
            print(file=sys.stderr)
        jsonl.close()
        if video is not None:
            video.close()
        summary = {**source.info(), "frames": n_frames, "faces": n_faces, "failed_frames": n_failed,
                   "interrupted": interrupted, "results": jsonl.path.name,
                   "overlay": video.path.name if video is not None and video.codec else None,
                   "overlay_codec": video.codec if video is not None else None,
                   "mean_ms": {k: round(v / n_frames, 3) for k, v in stage_sums.items()} if n_frames else {},
                   "tracker": dict(stream.tracker.counts), "elapsed_s": round(time.perf_counter() - t0, 3),
                   "engine": rec.engine, "model": rec.model}
        write_json_atomic(out / f"{stem}.json", summary)
    if interrupted:
        raise KeyboardInterrupt
    return summary
