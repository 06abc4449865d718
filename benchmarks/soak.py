"""Soak harness: ``Reconstructor.stream()`` over many frames, RSS sampled over time.

    python -m smirk_edge.benchmarks.soak --bundle B --frames 100000 --bad-every 997 -o runs/soak.json
    python -m smirk_edge.benchmarks.soak --video clip.mp4 --canvas 1280x720 \
        --frames 3000 --bad-every 0 -o runs/memory.json      # a 720p camera: peak RSS of the stream

Loops real photos (``--images``, default ../shared/data/photos) as a video, or the frames of a
video file (``--video``, decoded one at a time as a camera delivers them, restarted at its end),
optionally centred on a canvas of ``--canvas WxH`` (scaled to fit, black around it) so that a small
clip reads as a 720p camera. Injects a bad frame every ``--bad-every`` frames (wrong shape, wrong
dtype, NaN floats, empty; 0: none) and records resident memory every ``--sample-every`` frames.
Writes a JSON report: frames, faces, bad frames reported, RSS before the Reconstructor is made,
after warm-up and at the end, growth in percent, the process's peak RSS (``VmHWM``), frames per
second. Only a few frames are held at a time, so the peak is the Reconstructor's and the stream's,
not a preloaded video's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
import warnings
from pathlib import Path

import numpy as np


def rss_mb() -> float:
    """Current resident set size in MiB (Linux /proc; falls back to the peak from getrusage)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


BAD_FRAMES = [
    np.zeros((10, 10, 2), np.uint8),
    np.zeros((0, 0, 3), np.uint8),
    np.zeros((48, 64, 3), np.int64),
    np.full((48, 64, 3), np.nan, np.float32),
]


def main(argv=None) -> int:
    import cv2

    from smirk_edge.reconstructor import Reconstructor

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default=None, help="a bundle folder (default: the shipped default model)")
    p.add_argument("--images", nargs="*", default=None)
    p.add_argument("--video", default=None, help="a video file to loop instead of the photos")
    p.add_argument("--canvas", default=None, metavar="WxH",
                   help="centre each frame on a canvas of this size (e.g. 1280x720)")
    p.add_argument("--frames", type=int, default=100_000)
    p.add_argument("--bad-every", type=int, default=997)
    p.add_argument("--sample-every", type=int, default=1000)
    p.add_argument("--warmup", type=int, default=2000, help="frames before the RSS baseline is taken")
    p.add_argument("--backend", default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--redetect-every", type=int, default=15)
    p.add_argument("-o", "--output", default="soak.json")
    args = p.parse_args(argv)

    canvas = None
    if args.canvas:
        try:
            cw, ch = (int(v) for v in args.canvas.lower().split("x"))
            if cw <= 0 or ch <= 0:
                raise ValueError
        except ValueError:
            print(f"--canvas takes WxH (e.g. 1280x720), got {args.canvas!r}", file=sys.stderr)
            return 2
        canvas = (cw, ch)

    def on_canvas(frame):
        if canvas is None:
            return frame
        cw, ch = canvas
        h, w = frame.shape[:2]
        s = min(cw / w, ch / h)
        nw, nh = max(1, round(w * s)), max(1, round(h * s))
        out = np.zeros((ch, cw, 3), np.uint8)
        x0, y0 = (cw - nw) // 2, (ch - nh) // 2
        out[y0:y0 + nh, x0:x0 + nw] = cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_LINEAR)
        return out

    if args.video:
        cap = cv2.VideoCapture(str(args.video))
        ok, first = cap.read()
        if not ok:
            print(f"cannot read frames from {args.video}", file=sys.stderr)
            return 2

        def good_frames():
            frame = first
            while True:
                yield on_canvas(frame)
                ok, frame = cap.read()
                if not ok:  # loop: start the clip again
                    cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                    ok, frame = cap.read()
                    if not ok:
                        return
    else:
        paths = [Path(x) for x in args.images] if args.images else \
            sorted((Path(__file__).resolve().parents[2] / "shared" / "data" / "photos").glob("*.jpg"))
        images = [cv2.imread(str(x)) for x in paths]
        images = [on_canvas(im) for im in images if im is not None]
        if not images:
            print("no images to loop over", file=sys.stderr)
            return 2

        def good_frames():
            i = 0
            while True:  # hold each photo for 30 frames, like a camera pointed at a scene
                yield images[(i // 30) % len(images)]
                i += 1

    def frames():
        good = good_frames()
        for i in range(args.frames):
            if args.bad_every and i % args.bad_every == args.bad_every - 1:
                yield BAD_FRAMES[(i // args.bad_every) % len(BAD_FRAMES)]
            else:
                frame = next(good, None)
                if frame is None:
                    return
                yield frame

    rss_before = rss_mb()
    load0 = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    rec = Reconstructor(args.bundle, backend=args.backend, threads=args.threads, redetect_every=args.redetect_every)
    samples, faces, start = [], 0, time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bad frames are counted from rec.errors
        i = -1
        for i, result in enumerate(rec.stream(frames())):
            faces += len(result)
            if i % args.sample_every == 0:
                samples.append((i, rss_mb(), time.perf_counter() - start))
    elapsed = time.perf_counter() - start
    n_frames = i + 1
    samples.append((n_frames, rss_mb(), elapsed))
    base = next((r for i, r, _ in samples if i >= args.warmup), samples[0][1])
    end = samples[-1][1]
    expected_bad = args.frames // args.bad_every if args.bad_every else 0
    from smirk_edge.system import describe

    from .runs import peak_rss_mb

    info = describe(probe=False)
    report = {
        "suite": "memory-stream", "run_id": time.strftime("soak-%Y%m%dT%H%M%S", time.gmtime(time.time() - elapsed)),
        "frames": n_frames, "faces": faces, "bad_frames_injected": expected_bad,
        "bad_frames_reported": len(rec.errors), "rss_mb_before_reconstructor": round(rss_before, 1),
        "rss_mb_after_warmup": round(base, 1),
        "rss_mb_end": round(end, 1), "rss_growth_percent": round(100 * (end - base) / base, 2),
        "peak_rss_mb": peak_rss_mb(), "source": str(args.video) if args.video else "photos",
        "canvas": args.canvas, "threads": args.threads,
        "fps": round(n_frames / elapsed, 1), "engine": rec.engine, "bundle": str(args.bundle or "default"),
        "model": {k: rec.model.get(k) for k in ("variant", "checkpoint_sha256")},
        "machine": info, "versions": info.pop("packages", None),
        "loadavg_start": load0,
        "samples": [{"frame": i, "rss_mb": round(r, 1), "seconds": round(t, 1)} for i, r, t in samples],
    }
    rec.close()
    Path(args.output).write_text(json.dumps(report, indent=1))
    print(f"soak: {report['frames']} frames, {report['bad_frames_reported']}/{expected_bad} bad frames reported, "
          f"RSS {report['rss_mb_after_warmup']} -> {report['rss_mb_end']} MiB "
          f"({report['rss_growth_percent']:+.2f}%), peak {report['peak_rss_mb']} MiB, "
          f"{report['fps']} frames/s on {report['engine']}")
    ok = report["bad_frames_reported"] == expected_bad and report["rss_growth_percent"] <= 5.0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
