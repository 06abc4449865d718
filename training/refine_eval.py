"""What the refine pass buys: 68-point NME on human-annotated photos with refine always / never /
adaptive (``refine="auto"`` at several thresholds), through the public :class:`~smirk_edge.Reconstructor`.

Data: a ``landmarks68`` folder (``../shared/data/landmarks68``: 300-W AFW / HELEN crops with their
68 annotated points, see its README). Each photo goes through ``Reconstructor(image)`` (detector,
crop, encoder, refine as configured); the face whose 68-point box overlaps the annotation most is
scored with :func:`smirk_edge.training.evaluate.landmark_nme` (mean point distance / sqrt(w * h)
of the annotated box). A photo where no face is found counts as a miss (reported, not scored).
Encoder passes per face are counted from the encoder calls (1: one pass, 2: always refined).
Each setting is compared with ``refine=True`` face by face: the mean paired NME difference and its
95 % bootstrap interval (photos resampled). No time is measured here: the cost of each setting
comes from ``smirk-edge bench --refine on,off,auto``.

``python -m smirk_edge.training.refine_eval --subset afw --json out.json``
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np


def load_subset(root: Path, subset: str, limit: int | None = None,
                names: Sequence[str] | None = None) -> list[tuple[Path, np.ndarray]]:
    """``(image path, (68, 2) annotated points)`` of one subset folder, sorted by name; ``names``:
    keep only these photos (``SUBSET/NAME.jpg`` or a path ending so, as in a split file)."""
    keep = None if names is None else {"/".join(Path(n).parts[-2:]) for n in names}
    out = []
    files = sorted((root / subset).glob("*.json"))
    if keep is not None:
        files = [js for js in files if f"{subset}/{js.with_suffix('.jpg').name}" in keep]
    for js in files[:limit]:
        pts = np.asarray(json.loads(js.read_text(encoding="utf-8"))["landmarks68"], np.float64)
        out.append((js.with_suffix(".jpg"), pts))
    return out


def run_config(samples: Sequence[tuple[Path, np.ndarray]], refine: Any, threshold: float, bundle=None,
               backend: str = "onnxruntime", threads: int = 2) -> dict:
    """NME of one refine setting over ``samples`` (``per_photo``: each photo's NME, NaN when missed)."""
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
    per_photo, missed, found = [], 0, 0
    try:
        for path, gt in samples:
            img = cv2.imread(str(path), cv2.IMREAD_COLOR)
            res = rec(img)
            found += len(res.faces)
            if not res.faces:
                missed += 1
                per_photo.append(float("nan"))
                continue
            gbox = np.r_[gt.min(0), gt.max(0)]
            best = max(res.faces, key=lambda f: box_iou(np.r_[f.landmarks68.min(0), f.landmarks68.max(0)], gbox))
            per_photo.append(float(landmark_nme(best.landmarks68[None], gt[None])[0]))
    finally:
        rec.close()
    arr = np.asarray(per_photo)
    ok = arr[np.isfinite(arr)]
    return {"refine": refine, "threshold": threshold if refine == "auto" else None, "n": int(ok.size),
            "missed": missed, "nme68": float(ok.mean()), "nme68_median": float(np.median(ok)),
            "nme68_p90": float(np.percentile(ok, 90)),
            "re_encoded_share": (encoded["faces"] - found) / max(found, 1),
            "passes_per_face": encoded["faces"] / max(found, 1), "per_photo": per_photo}


def paired_difference(a: Sequence[float], b: Sequence[float], resamples: int = 2000, seed: int = 0) -> dict:
    """Mean of ``a - b`` over the photos both scored, with a 95 % bootstrap interval (photos resampled)."""
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    d = x[ok] - y[ok]
    if not d.size:
        return {"mean": float("nan"), "low": float("nan"), "high": float("nan"), "n": 0}
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, (resamples, d.size))].mean(1)
    return {"mean": float(d.mean()), "low": float(np.percentile(means, 2.5)),
            "high": float(np.percentile(means, 97.5)), "n": int(d.size)}


def compare(rows: Sequence[dict]) -> None:
    """Add ``vs_always`` (:func:`paired_difference` against the ``refine=True`` row) to each row."""
    always = next((r for r in rows if r["refine"] is True), None)
    for r in rows:
        if always is not None and r is not always:
            r["vs_always"] = paired_difference(r["per_photo"], always["per_photo"])


def table(rows: Sequence[dict]) -> str:
    lines = ["| refine | threshold (1 - IoU) | faces scored | missed | NME68 mean | median | p90 | "
             "faces encoded twice | encoder passes / face | vs always: mean difference [95 % CI] |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        v = r.get("vs_always")
        vs = "-" if v is None else f"{v['mean'] * 100:+.3f} [{v['low'] * 100:+.3f}, {v['high'] * 100:+.3f}]"
        lines.append(f"| {r['refine']} | {'-' if r['threshold'] is None else r['threshold']} | {r['n']} | "
                     f"{r['missed']} | {r['nme68'] * 100:.3f}% | {r['nme68_median'] * 100:.3f}% | "
                     f"{r['nme68_p90'] * 100:.3f}% | {r['re_encoded_share'] * 100:.0f}% | "
                     f"{r['passes_per_face']:.2f} | {vs} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m smirk_edge.training.refine_eval", description=__doc__.split("\n")[0])
    p.add_argument("--root", default=None, help="landmarks68 folder (default: ../shared/data/landmarks68)")
    p.add_argument("--subset", default="afw", help="afw or helen_train (default afw)")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--split", default=None, help="split file (training/splits/landmarks68.json): score only its "
                   "--split-subset photos")
    p.add_argument("--split-subset", default="val", help="subset of --split (default val)")
    p.add_argument("--thresholds", default="0.1,0.15,0.2,0.25,0.3", help="refine='auto' thresholds")
    p.add_argument("--bundle", default=None, help="bundle (default: the embedded default model)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None, help="write the rows here")
    args = p.parse_args(argv)
    root = Path(args.root) if args.root else Path(__file__).resolve().parents[1].parent / "shared" / "data" / "landmarks68"
    if not (root / args.subset).is_dir():
        print(f"no {args.subset} folder under {root}", file=sys.stderr)
        return 2
    names = None
    if args.split:
        names = json.loads(Path(args.split).read_text(encoding="utf-8"))[args.split_subset]
    samples = load_subset(root, args.subset, args.limit, names)
    if not samples:
        print(f"no photos of {args.subset} under {root} (after --split)", file=sys.stderr)
        return 2
    configs: list[tuple[Any, float]] = [(True, 0.0), (False, 0.0)]
    configs += [("auto", float(t)) for t in args.thresholds.split(",") if t.strip()]
    rows = []
    for refine, thr in configs:
        rows.append(run_config(samples, refine, thr, args.bundle, threads=args.threads))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    compare(rows)
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"subset": args.subset, "root": str(root), "split": args.split,
                                               "split_subset": args.split_subset if args.split else None,
                                               "photos": [str(p.name) for p, _ in samples], "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
