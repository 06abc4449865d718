"""Soak harness: ``Reconstructor.stream()`` over many frames, RSS sampled over time.

    python -m smirk_edge.benchmarks.soak --bundle B --frames 100000 --bad-every 997 -o runs/soak.json

Loops real photos (``--images``, default ../shared/data/photos) as a video, injects a bad frame
every ``--bad-every`` frames (wrong shape, wrong dtype, NaN floats, empty), and records resident
memory every ``--sample-every`` frames. Writes a JSON report: frames, faces, bad frames reported,
RSS after warm-up and at the end, growth in percent, frames per second.
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
    p.add_argument("--bundle", required=True)
    p.add_argument("--images", nargs="*", default=None)
    p.add_argument("--frames", type=int, default=100_000)
    p.add_argument("--bad-every", type=int, default=997)
    p.add_argument("--sample-every", type=int, default=1000)
    p.add_argument("--warmup", type=int, default=2000, help="frames before the RSS baseline is taken")
    p.add_argument("--backend", default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--redetect-every", type=int, default=15)
    p.add_argument("-o", "--output", default="soak.json")
    args = p.parse_args(argv)

    paths = [Path(x) for x in args.images] if args.images else \
        sorted((Path(__file__).resolve().parents[2] / "shared" / "data" / "photos").glob("*.jpg"))
    images = [cv2.imread(str(x)) for x in paths]
    images = [im for im in images if im is not None]
    if not images:
        print("no images to loop over", file=sys.stderr)
        return 2

    def frames():
        for i in range(args.frames):
            if args.bad_every and i % args.bad_every == args.bad_every - 1:
                yield BAD_FRAMES[(i // args.bad_every) % len(BAD_FRAMES)]
            else:
                # hold each photo for 30 frames, like a camera pointed at a scene
                yield images[(i // 30) % len(images)]

    rec = Reconstructor(args.bundle, backend=args.backend, threads=args.threads, redetect_every=args.redetect_every)
    samples, faces, start = [], 0, time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bad frames are counted from rec.errors
        for i, result in enumerate(rec.stream(frames())):
            faces += len(result)
            if i % args.sample_every == 0:
                samples.append((i, rss_mb(), time.perf_counter() - start))
    elapsed = time.perf_counter() - start
    samples.append((args.frames, rss_mb(), elapsed))
    base = next((r for i, r, _ in samples if i >= args.warmup), samples[0][1])
    end = samples[-1][1]
    expected_bad = args.frames // args.bad_every if args.bad_every else 0
    report = {
        "frames": args.frames, "faces": faces, "bad_frames_injected": expected_bad,
        "bad_frames_reported": len(rec.errors), "rss_mb_after_warmup": round(base, 1),
        "rss_mb_end": round(end, 1), "rss_growth_percent": round(100 * (end - base) / base, 2),
        "fps": round(args.frames / elapsed, 1), "engine": rec.engine, "bundle": str(args.bundle),
        "samples": [{"frame": i, "rss_mb": round(r, 1), "seconds": round(t, 1)} for i, r, t in samples],
    }
    rec.close()
    Path(args.output).write_text(json.dumps(report, indent=1))
    print(f"soak: {report['frames']} frames, {report['bad_frames_reported']}/{expected_bad} bad frames reported, "
          f"RSS {report['rss_mb_after_warmup']} -> {report['rss_mb_end']} MiB "
          f"({report['rss_growth_percent']:+.2f}%), {report['fps']} frames/s on {report['engine']}")
    ok = report["bad_frames_reported"] == expected_bad and report["rss_growth_percent"] <= 5.0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
