"""Video accuracy and steadiness of ``Reconstructor.stream`` against MediaPipe video-mode landmarks.

A harness over the public API: each clip is read with OpenCV and passed, frame by frame with its
timestamps, to :meth:`smirk_edge.Reconstructor.stream` (``--mode stream``), or each frame to
``rec(frame)`` (``--mode image``, the per-frame baseline). One JSON row per clip is written::

    python -m smirk_edge.benchmarks.video_accuracy --videos ../shared/data/videos \
        --ref /work/cache/video_ref --out rows.jsonl

References: one ``NAME.npz`` per clip ``NAME.mp4`` holding ``landmarks`` ``(T, 478, 2)`` image
pixels (NaN where MediaPipe found no face) and ``valid`` ``(T,)``, made by MediaPipe 0.10.21 face
mesh with ``static_image_mode=False`` (its video mode) outside this repository.

Measures, per clip (the face compared is the one nearest the reference face):

* ``nme``: per-frame 105-point NME (mean point distance / ``sqrt(w * h)`` of the reference 105-point
  box), mean / median / p95; ``max_run_above_10``: longest run of frames with NME > 10 % (a frame
  with a reference face and no face of ours counts as above);
* ``jitter``: mean over frames and points of the second difference ``|L[t+1] - 2 L[t] + L[t-1]|``
  divided by the face size (as above), for ours and for MediaPipe's, and their ratio;
* ``lag_frames``: the shift ``k`` (frames, parabolic sub-frame fit in [-4, 4]) that minimises the
  mean distance between our landmark centroid at ``t`` and MediaPipe's at ``t - k`` (> 0: ours lags);
* ``ms_per_frame`` and the mean per-stage milliseconds of the stream's results.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["clip_metrics", "face_size", "jitter", "lag_frames", "longest_run", "main", "nme"]


def face_size(ref105: np.ndarray) -> np.ndarray:
    """``(T,)`` sqrt(w * h) of each frame's reference 105-point box (NaN where there is no reference)."""
    w = np.nanmax(ref105[..., 0], -1) - np.nanmin(ref105[..., 0], -1)
    h = np.nanmax(ref105[..., 1], -1) - np.nanmin(ref105[..., 1], -1)
    return np.sqrt(w * h)


def nme(pred105: np.ndarray, ref105: np.ndarray) -> np.ndarray:
    """``(T,)`` per-frame NME of ``pred105 (T, 105, 2)`` against ``ref105`` (NaN rows propagate)."""
    return np.linalg.norm(pred105 - ref105, axis=-1).mean(-1) / face_size(ref105)


def jitter(lm: np.ndarray, size: np.ndarray) -> float:
    """Mean second difference of landmarks ``(T, K, 2)`` per face size ``(T,)`` (frames with NaN skipped)."""
    if len(lm) < 3:
        return float("nan")
    d2 = np.linalg.norm(lm[2:] - 2 * lm[1:-1] + lm[:-2], axis=-1).mean(-1) / size[1:-1]
    return float(np.nanmean(d2)) if np.isfinite(d2).any() else float("nan")


def longest_run(mask: np.ndarray) -> int:
    """Length of the longest run of True in a boolean ``(T,)`` array."""
    best = cur = 0
    for m in mask:
        cur = cur + 1 if m else 0
        best = max(best, cur)
    return best


def lag_frames(ours: np.ndarray, ref: np.ndarray, size: np.ndarray, max_shift: int = 4) -> float:
    """Sub-frame shift (frames) of our landmark centroids behind the reference's (> 0: ours later)."""
    a, b = ours.mean(1), ref.mean(1)
    ks = np.arange(-max_shift, max_shift + 1)
    cost = []
    for k in ks:
        if k >= 0:
            d = np.linalg.norm(a[k:] - b[:len(b) - k], axis=-1) / size[k:]
        else:
            d = np.linalg.norm(a[:k] - b[-k:], axis=-1) / size[:k]
        cost.append(np.nanmean(d) if np.isfinite(d).any() else np.inf)
    cost = np.asarray(cost)
    i = int(np.argmin(cost))
    if 0 < i < len(ks) - 1 and np.all(np.isfinite(cost[i - 1:i + 2])):
        c0, c1, c2 = cost[i - 1:i + 2]
        den = c0 - 2 * c1 + c2
        return float(ks[i] + (0.5 * (c0 - c2) / den if den > 0 else 0.0))
    return float(ks[i])


def pick_face(faces, ref105: np.ndarray | None) -> np.ndarray | None:
    """Our 105 landmarks of the face nearest the reference face (the largest when there is none)."""
    if not faces:
        return None
    if ref105 is None or not np.isfinite(ref105).all():
        f = max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
        return f.landmarks105
    c = ref105.mean(0)
    return min(faces, key=lambda f: float(np.linalg.norm(f.landmarks105.mean(0) - c))).landmarks105


def clip_metrics(ours: np.ndarray, ref105: np.ndarray) -> dict:
    """Metrics of our ``(T, 105, 2)`` landmarks (NaN where we gave no face) against the reference's."""
    size = face_size(ref105)
    has_ref = np.isfinite(ref105).all(axis=(1, 2))
    has_ours = np.isfinite(ours).all(axis=(1, 2))
    e = nme(ours, ref105)
    both = has_ref & has_ours
    above = has_ref & (~has_ours | (np.nan_to_num(e, nan=np.inf) > 0.10))
    return {
        "frames": int(len(ours)), "ref_frames": int(has_ref.sum()), "missed": int((has_ref & ~has_ours).sum()),
        "extra": int((~has_ref & has_ours).sum()),
        "nme_mean": float(np.mean(e[both])) if both.any() else None,
        "nme_median": float(np.median(e[both])) if both.any() else None,
        "nme_p95": float(np.percentile(e[both], 95)) if both.any() else None,
        "max_run_above_10": longest_run(above),
        "jitter": jitter(ours, size), "jitter_mediapipe": jitter(ref105, size),
        "lag_frames": lag_frames(ours, ref105, size),
        "_nme": e,
    }


def machine() -> dict:
    """CPU model and the SIMD flags that matter for the engines."""
    model, flags = platform.processor(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model.strip():
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    wanted = ["avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8"]
    return {"cpu": model, "flags": [f for f in wanted if f in flags], "cores": os.cpu_count()}


def read_clip(path: Path, max_frames: int | None) -> tuple[list[np.ndarray], float]:
    import cv2

    cap = cv2.VideoCapture(str(path))
    fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
    frames = []
    while max_frames is None or len(frames) < max_frames:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    cap.release()
    return frames, float(fps)


def run_clip(rec, path: Path, ref_path: Path, mode: str, max_frames: int | None) -> dict:
    ref = np.load(ref_path)
    idx = rec.face_model.mp_landmark_indices
    frames, fps = read_clip(path, max_frames)
    ref105 = ref["landmarks"][: len(frames)][:, idx].astype(np.float64)
    ours = np.full((len(frames), 105, 2), np.nan)
    stage: dict[str, float] = {}
    t0 = time.perf_counter()
    results = rec.stream(frames, timestamps=[i / fps for i in range(len(frames))]) if mode == "stream" \
        else (rec(f) for f in frames)
    for i, faces in enumerate(results):
        lm = pick_face(faces, ref105[i] if np.isfinite(ref105[i]).all() else None)
        if lm is not None:
            ours[i] = lm
        for k, v in faces.timings.items():
            stage[k] = stage.get(k, 0.0) + v
    wall = time.perf_counter() - t0
    row = clip_metrics(ours, ref105)
    row.update(clip=path.stem, mode=mode, fps=fps, ms_per_frame=1e3 * wall / max(1, len(frames)),
               stage_ms={k: v / max(1, len(frames)) for k, v in stage.items()})
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--videos", required=True, help="folder of .mp4 clips")
    p.add_argument("--ref", required=True, help="folder of MediaPipe video-mode references NAME.npz")
    p.add_argument("--out", required=True, help="JSON Lines file, one row per clip (appended)")
    p.add_argument("--mode", choices=["stream", "image"], default="stream")
    p.add_argument("--clips", nargs="*", default=None, help="clip names (default: every clip with a reference)")
    p.add_argument("--max-frames", type=int, default=None)
    p.add_argument("--bundle", default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--smoothing", default=None,
                   help='JSON: {"landmarks": [min_cutoff, beta], "pose": [..], "expression": [..], '
                        '"identity_frames": N} (default: the SDK\'s StreamSmoothing)')
    p.add_argument("--nme-out", default=None, help="optional .npz with every clip's per-frame NME")
    args = p.parse_args(argv)

    import smirk_edge

    keywords = {}
    if args.smoothing:
        from smirk_edge.smoothing import OneEuroConfig, StreamSmoothing

        spec = json.loads(args.smoothing)
        base = StreamSmoothing()
        keywords["smoothing"] = StreamSmoothing(
            **{k: OneEuroConfig(*spec[k]) if k in spec else getattr(base, k) for k in ("landmarks", "pose", "expression")},
            identity_frames=int(spec.get("identity_frames", base.identity_frames)))
    rec = smirk_edge.Reconstructor(args.bundle, threads=args.threads, **keywords)
    clips = sorted(Path(args.videos).glob("*.mp4"))
    if args.clips:
        clips = [c for c in clips if c.stem in set(args.clips)]
    info = {"machine": machine(), "engine": rec.engine, "smirk_edge": smirk_edge.__version__,
            "smoothing": repr(rec.options.smoothing)}
    per_frame = {}
    with open(args.out, "a", encoding="utf-8") as out:
        for clip in clips:
            ref = Path(args.ref) / f"{clip.stem}.npz"
            if not ref.is_file():
                print(f"{clip.stem}: no reference {ref}, skipped", file=sys.stderr)
                continue
            row = run_clip(rec, clip, ref, args.mode, args.max_frames)
            per_frame[clip.stem] = row.pop("_nme")
            row.update(info)
            out.write(json.dumps(row) + "\n")
            out.flush()
            print(f"{clip.stem:28s} nme {row['nme_mean'] or float('nan'):.4f} run>10% {row['max_run_above_10']:3d} "
                  f"jitter {row['jitter']:.5f} mp {row['jitter_mediapipe']:.5f} lag {row['lag_frames']:+.2f} "
                  f"missed {row['missed']} {row['ms_per_frame']:.1f} ms/frame", flush=True)
    if args.nme_out:
        np.savez(args.nme_out, **per_frame)
    rec.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
