"""What every measured benchmark run shares: its inputs, its rows, its memory peak, its thread
setting, what the bundle says of its model.

Used by :mod:`.worker` (the SDK's paths), :mod:`.reference` (the official code's path) and
:mod:`.harness` (the parent), so none of them imports another.
"""

from __future__ import annotations

import json
import os
import resource
import sys

import numpy as np

from .stats import ROW_FIELDS, summarize

__all__ = ["PlacementFallback", "base_row", "load_inputs", "model_info", "peak_rss_mb", "row", "set_threads",
           "single"]


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MiB.

    Linux: ``VmHWM`` of ``/proc/self/status`` (the high-water mark of this process's own address
    space). ``getrusage``'s ``ru_maxrss`` is not used there: Linux carries it across ``exec``, so a
    worker started from a large parent would report the parent's peak. Elsewhere: ``getrusage``.
    """
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024.0, 1)
    except OSError:
        pass
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round((kb / 1024.0) if sys.platform != "darwin" else kb / 2**20, 1)


def load_inputs(path: str) -> tuple[list[np.ndarray], list[np.ndarray | None], dict]:
    """Frames and placement boxes saved by the parent (``inputs.npz``)."""
    with np.load(path, allow_pickle=False) as z:
        frames = [f for f in z["frames"]] if "frames" in z else []
        if not frames:
            frames = [z[k] for k in sorted(k for k in z.files if k.startswith("frame_"))]
        boxes = [None if not np.all(np.isfinite(b)) else b for b in z["boxes"]]
        meta = json.loads(str(z["meta"]))
    return frames, boxes, meta


def base_row(cfg: dict) -> dict:
    from smirk_edge.system import describe

    info = describe(probe=False)
    versions = info.pop("packages")
    return {"run_id": cfg["run_id"], "suite": cfg["kind"], "config": cfg["id"], "engine": cfg.get("engine"),
            "precision": cfg.get("precision"), "artifact": None, "artifact_bytes": None,
            "threads": cfg.get("threads"), "batch": 1, "mode": cfg.get("mode", "image"), "input": cfg["input_name"],
            "refine": cfg.get("refine"), "read": cfg.get("read"), "crop_source": None, "device": "cpu", "note": "",
            "model": cfg.get("model", {}), "accuracy": None, "versions": versions, "machine": info,
            "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def row(base: dict, stage: str, stats: dict, runs: int, warmup: int, **extra) -> dict:
    """One row: the configuration's base fields, the stage, its statistics; every ROW_FIELDS key present."""
    r = dict(base)
    r.update({"stage": stage, "runs": runs, "warmup": warmup, **stats, **extra})
    for k in ROW_FIELDS:
        r.setdefault(k, None)
    return r


def single(ms: float) -> dict:
    return summarize([ms])


class PlacementFallback:
    """Wraps the SDK's face detector: the real detection runs (and is timed) every time; when it finds
    no face, the known placement box of the synthetic input is returned instead, so the stages after
    detection are still measured. ``fallbacks`` counts how often that happened."""

    def __init__(self, detector):
        self.detector = detector
        self.box: np.ndarray | None = None
        self.fallbacks = 0
        self.calls = 0

    def detect(self, image):
        from smirk_edge.detector import Detections

        self.calls += 1
        det = self.detector.detect(image)
        if len(det) or self.box is None:
            return det
        self.fallbacks += 1
        return Detections(np.asarray([self.box], np.float32), np.ones(1, np.float32), np.zeros((1, 6, 2), np.float32))

    __call__ = detect


def set_threads(threads: int | None) -> None:
    if threads:
        import cv2

        cv2.setNumThreads(int(threads))


def model_info(bundle) -> dict:
    """Encoder variant, weights note, checkpoint hash and face model of a bundle (either metadata layout:
    the export toolchain's nested ``source_checkpoint`` / ``face_model``, or flat keys)."""
    meta = bundle.metadata
    src = meta.get("source_checkpoint") if isinstance(meta.get("source_checkpoint"), dict) else {}
    fm = meta.get("face_model") if isinstance(meta.get("face_model"), dict) else {}
    sha = src.get("sha256") or meta.get("checkpoint_sha256") or ""
    return {"encoder_variant": src.get("encoder_variant") or meta.get("encoder_variant"),
            "weights": meta.get("weights", "as exported (see the bundle's MODEL_CARD.md)"),
            "checkpoint_sha256": str(sha)[:16] or None,
            "face_model_id": fm.get("id") or meta.get("face_model_id"), "bundle": str(bundle.root)}
