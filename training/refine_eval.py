"""What the refine pass buys: 68-point NME on human-annotated photos with refine always / never /
adaptive (``refine="auto"`` at several thresholds), through the public :class:`~smirk_edge.Reconstructor`.

Data: a ``landmarks68`` folder (``../shared/data/landmarks68``: 300-W AFW / HELEN crops with their
68 annotated points, see its README). Each photo goes through ``Reconstructor(image)`` (detector,
crop, encoder, refine as configured); the face whose 68-point box overlaps the annotation most is
scored with :func:`smirk_edge.training.evaluate.landmark_nme` (mean point distance / sqrt(w * h)
of the annotated box). A photo where no face is found counts as a miss (reported, not scored).
The share of faces encoded twice is counted from the encoder calls.

``python -m smirk_edge.training.refine_eval --subset afw --json out.json``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np


def load_subset(root: Path, subset: str, limit: int | None = None) -> list[tuple[Path, np.ndarray]]:
    """``(image path, (68, 2) annotated points)`` of one subset folder, sorted by name."""
    out = []
    for js in sorted((root / subset).glob("*.json"))[:limit]:
        pts = np.asarray(json.loads(js.read_text(encoding="utf-8"))["landmarks68"], np.float64)
        out.append((js.with_suffix(".jpg"), pts))
    return out


def run_config(samples: Sequence[tuple[Path, np.ndarray]], refine: Any, threshold: float, bundle=None,
               backend: str = "onnxruntime", threads: int = 2) -> dict:
    """NME of one refine setting over ``samples``."""
    import cv2

    from smirk_edge import Reconstructor
    from smirk_edge.tracking import box_iou

    from .evaluate import landmark_nme

    rec = Reconstructor(bundle, backend=backend, precision="fp32", refine=refine, refine_threshold=threshold,
                        threads=threads)
    encoded = {"faces": 0, "calls": 0}
    real = rec.stages.encode_batch

    def counting(batch, timer):
        encoded["faces"] += len(batch)
        encoded["calls"] += 1
        return real(batch, timer)

    rec.stages.encode_batch = counting  # type: ignore[method-assign]
    nme, missed, first_pass, ms = [], 0, 0, []
    try:
        for path, gt in samples:
            img = cv2.imread(str(path), cv2.IMREAD_COLOR)
            t0 = time.perf_counter()
            res = rec(img)
            ms.append((time.perf_counter() - t0) * 1e3)
            first_pass += len(res.faces)
            if not res.faces:
                missed += 1
                continue
            gbox = np.r_[gt.min(0), gt.max(0)]
            best = max(res.faces, key=lambda f: box_iou(np.r_[f.landmarks68.min(0), f.landmarks68.max(0)], gbox))
            nme.append(float(landmark_nme(best.landmarks68[None], gt[None])[0]))
    finally:
        rec.close()
    arr = np.asarray(nme)
    faces = first_pass
    return {"refine": refine, "threshold": threshold if refine == "auto" else None, "n": int(arr.size),
            "missed": missed, "nme68": float(arr.mean()), "nme68_median": float(np.median(arr)),
            "nme68_p90": float(np.percentile(arr, 90)),
            "re_encoded_share": (encoded["faces"] - faces) / max(faces, 1),
            "ms_mean": float(np.mean(ms))}


def table(rows: Sequence[dict]) -> str:
    lines = ["| refine | threshold (1 - IoU) | faces scored | missed | NME68 mean | median | p90 | "
             "faces encoded twice | ms / photo (mean) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['refine']} | {'-' if r['threshold'] is None else r['threshold']} | {r['n']} | "
                     f"{r['missed']} | {r['nme68'] * 100:.3f}% | {r['nme68_median'] * 100:.3f}% | "
                     f"{r['nme68_p90'] * 100:.3f}% | {r['re_encoded_share'] * 100:.0f}% | {r['ms_mean']:.1f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m smirk_edge.training.refine_eval", description=__doc__.split("\n")[0])
    p.add_argument("--root", default=None, help="landmarks68 folder (default: ../shared/data/landmarks68)")
    p.add_argument("--subset", default="afw", help="afw or helen_train (default afw)")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--thresholds", default="0.1,0.15,0.2,0.25,0.3", help="refine='auto' thresholds")
    p.add_argument("--bundle", default=None, help="bundle (default: the embedded default model)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None, help="write the rows here")
    args = p.parse_args(argv)
    root = Path(args.root) if args.root else Path(__file__).resolve().parents[1].parent / "shared" / "data" / "landmarks68"
    if not (root / args.subset).is_dir():
        print(f"no {args.subset} folder under {root}", file=sys.stderr)
        return 2
    samples = load_subset(root, args.subset, args.limit)
    configs: list[tuple[Any, float]] = [(True, 0.0), (False, 0.0)]
    configs += [("auto", float(t)) for t in args.thresholds.split(",") if t.strip()]
    rows = []
    for refine, thr in configs:
        rows.append(run_config(samples, refine, thr, args.bundle, threads=args.threads))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"subset": args.subset, "root": str(root), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
