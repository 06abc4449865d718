"""Calibrate the two box mappings of the Reconstructor on real photos with MediaPipe annotations.

SMIRK's encoder was trained on crops from the bounding box of MediaPipe's 478 landmarks. At run
time the Reconstructor has other boxes, and maps them with a
:class:`smirk_edge.crop.BoxMapping` ``(dx, dy, sx, sy)``
(``centre' = centre + (dx, dy) * side``, ``size' = (sx, sy) * side``, ``side`` = mean of the source
box's width and height):

* ``DETECTOR_TO_LANDMARK_BOX``: BlazeFace box (``FaceDetector(variant="auto", score_threshold=0.5)``,
  as the Reconstructor builds it) -> 478-landmark box;
* ``LANDMARK105_TO_LANDMARK_BOX``: box of the 105 MediaPipe-indexed points (the landmarks the model
  predicts) -> 478-landmark box.

Data: annotation folders made by ``smirk-edge annotate`` (every stored face). Each face is a
source/target box pair; detections are matched to annotated faces of the same image by IoU
(best pairs first, IoU >= ``--min-iou``). Images are split by a hash of their path: a fraction
``--holdout`` is held out (never used for fitting), and so is every image of the subsets named by
``--holdout-subset`` (default: ``photos``, the in-the-wild photos: an out-of-domain check); every
number in the report is measured on held-out faces, overall, per subset and per |yaw| bucket.

Fit: least squares on the relative quantities, i.e. ``dx = mean((cx_t - cx_s) / side_s)``,
``sx = mean(w_t / side_s)`` (and the same for y), which minimises the squared centre and size
errors relative to the source side.

Residuals on the held-out faces, as % of the target (478) box side ``(w + h) / 2``: centre error
(Euclidean distance of box centres), size error ``|side' - side|`` (the crop side is proportional
to it), and the IoU of SMIRK's crop square (``crop.square_from_box`` at ``--scale``, default 1.4)
from the mapped box vs from the exact 478 box. The identity mapping is reported as a baseline.

Usage (from the repository root; annotations made with ``smirk-edge annotate``)::

    python training/box_calibration.py /work/cache/annotations /work/cache/annotations-photos \
        --out runs/box_calibration.json

Writes a JSON report (fitted mappings, per-subset residuals, versions) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import zlib
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np

from smirk_edge._version import __version__
from smirk_edge.crop import square_from_box
from smirk_edge.detector import FaceDetector, iou
from smirk_edge.crop import BoxMapping
from smirk_edge.training.annotate import load_annotations, read_index


def held_out(path: str, fraction: float) -> bool:
    """Deterministic split: the image is held out when ``crc32(path) % 1000 < fraction * 1000``."""
    return zlib.crc32(path.encode()) % 1000 < int(round(fraction * 1000))


def fit_mapping(src: np.ndarray, dst: np.ndarray) -> BoxMapping:
    """Least-squares :class:`BoxMapping` taking boxes ``src (N, 4)`` to ``dst (N, 4)`` (x0, y0, x1, y1)."""
    side = ((src[:, 2] - src[:, 0]) + (src[:, 3] - src[:, 1])) / 2.0
    cs, ct = (src[:, :2] + src[:, 2:]) / 2.0, (dst[:, :2] + dst[:, 2:]) / 2.0
    d = ((ct - cs) / side[:, None]).mean(0)
    s = ((dst[:, 2:] - dst[:, :2]) / side[:, None]).mean(0)
    return BoxMapping(float(d[0]), float(d[1]), float(s[0]), float(s[1]))


def _square_iou(a_box: np.ndarray, b_box: np.ndarray, scale: float) -> float:
    ca, sa = square_from_box(a_box, scale)
    cb, sb = square_from_box(b_box, scale)
    lo = np.maximum(ca - sa / 2, cb - sb / 2)
    hi = np.minimum(ca + sa / 2, cb + sb / 2)
    inter = float(np.prod(np.clip(hi - lo, 0, None)))
    return inter / (sa * sa + sb * sb - inter)


def residuals(mapping: BoxMapping, src: np.ndarray, dst: np.ndarray, scale: float) -> dict:
    """Centre / size error in % of the target side and crop IoU, mean and p90 (IoU: mean and p10)."""
    pred = np.array([mapping.apply(b) for b in src]).reshape(-1, 4)
    side_t = ((dst[:, 2] - dst[:, 0]) + (dst[:, 3] - dst[:, 1])) / 2.0
    side_p = ((pred[:, 2] - pred[:, 0]) + (pred[:, 3] - pred[:, 1])) / 2.0
    centre = np.linalg.norm((pred[:, :2] + pred[:, 2:]) / 2 - (dst[:, :2] + dst[:, 2:]) / 2, axis=1) / side_t * 100
    size = np.abs(side_p - side_t) / side_t * 100
    crop_iou = np.array([_square_iou(p, t, scale) for p, t in zip(pred, dst)])
    return {"n": int(len(src)),
            "centre_err_pct": {"mean": float(centre.mean()), "p90": float(np.percentile(centre, 90))},
            "size_err_pct": {"mean": float(size.mean()), "p90": float(np.percentile(size, 90))},
            "crop_iou": {"mean": float(crop_iou.mean()), "p10": float(np.percentile(crop_iou, 10)),
                         "min": float(crop_iou.min())}}


def collect(folders: list[Path], max_per_subset: int | None) -> list[dict]:
    """One row per annotated face: image path, subset, 478 box, 105 box."""
    rows = []
    for folder in folders:
        root = Path(read_index(folder)["root"])
        d = load_annotations(folder)
        count: dict[str, int] = {}
        for i in np.flatnonzero(d["found"]):
            rel = str(d["path"][i])
            full = root / rel
            subset = full.parent.name
            if max_per_subset is not None and count.get(subset, 0) >= max_per_subset:
                continue
            count[subset] = count.get(subset, 0) + 1
            for k in range(int(d["num_faces"][i])):
                l105 = d["landmarks105"][i, k]
                rows.append({"image": str(full), "subset": subset, "yaw": float(d["yaw"][i, k]),
                             "box478": d["box"][i, k].astype(np.float64),
                             "box105": np.array([l105[:, 0].min(), l105[:, 1].min(), l105[:, 0].max(),
                                                 l105[:, 1].max()], np.float64)})
    return rows


def attach_detections(rows: list[dict], detector: FaceDetector, min_iou: float) -> dict:
    """Add ``det`` (matched BlazeFace box) to rows; returns detector statistics."""
    by_image: dict[str, list[dict]] = {}
    for r in rows:
        by_image.setdefault(r["image"], []).append(r)
    t0, unread = time.perf_counter(), 0
    for n, (image, faces) in enumerate(sorted(by_image.items())):
        img = cv2.imread(image, cv2.IMREAD_COLOR)
        if img is None:
            unread += 1
            continue
        det = detector.detect(img)
        if not len(det):
            continue
        gt = np.stack([f["box478"] for f in faces])
        m = np.stack([iou(g, det.boxes.astype(np.float64)) for g in gt])  # (faces, dets)
        while m.size and m.max() >= min_iou:
            fi, di = np.unravel_index(np.argmax(m), m.shape)
            faces[fi]["det"] = det.boxes[di].astype(np.float64)
            faces[fi]["det_score"] = float(det.scores[di])
            m[fi, :] = -1
            m[:, di] = -1
        if (n + 1) % 2000 == 0:
            print(f"  detector: {n + 1}/{len(by_image)} images, {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    matched = sum("det" in r for r in rows)
    return {"images": len(by_image), "unreadable": unread, "faces": len(rows), "matched": matched,
            "seconds": time.perf_counter() - t0}


def fit_yaw_aware(src: np.ndarray, dst: np.ndarray, yaw_deg: np.ndarray) -> dict:
    """Least squares ``dx = dx0 + dx1 * sin(yaw)``, ``sx = sx0 + sx1 * |sin(yaw)|`` (dy, sy as
    :func:`fit_mapping`): the 478 box reaches past the 105 points on the side the face turns from."""
    side = ((src[:, 2] - src[:, 0]) + (src[:, 3] - src[:, 1])) / 2.0
    dxr = ((dst[:, 0] + dst[:, 2]) - (src[:, 0] + src[:, 2])) / 2.0 / side
    sxr = (dst[:, 2] - dst[:, 0]) / side
    sn = np.sin(np.radians(yaw_deg))
    dx = np.linalg.lstsq(np.stack([np.ones_like(sn), sn], 1), dxr, rcond=None)[0]
    sx = np.linalg.lstsq(np.stack([np.ones_like(sn), np.abs(sn)], 1), sxr, rcond=None)[0]
    base = fit_mapping(src, dst)
    return {"dx0": float(dx[0]), "dx1": float(dx[1]), "dy": base.dy, "sx0": float(sx[0]), "sx1": float(sx[1]),
            "sy": base.sy}


def yaw_aware_mapping(p: dict, yaw_deg: float) -> BoxMapping:
    """The :class:`BoxMapping` of a :func:`fit_yaw_aware` fit at one head yaw (degrees)."""
    sn = float(np.sin(np.radians(yaw_deg)))
    return BoxMapping(p["dx0"] + p["dx1"] * sn, p["dy"], p["sx0"] + p["sx1"] * abs(sn), p["sy"])


def yaw_aware_residuals(p: dict, src: np.ndarray, dst: np.ndarray, yaw_deg: np.ndarray, scale: float) -> dict:
    rs = [residuals(yaw_aware_mapping(p, y), s[None], d[None], scale) for s, d, y in zip(src, dst, yaw_deg)]
    centre = np.array([r["centre_err_pct"]["mean"] for r in rs])
    size = np.array([r["size_err_pct"]["mean"] for r in rs])
    ious = np.array([r["crop_iou"]["mean"] for r in rs])
    return {"n": len(rs), "centre_err_pct": {"mean": float(centre.mean()), "p90": float(np.percentile(centre, 90))},
            "size_err_pct": {"mean": float(size.mean()), "p90": float(np.percentile(size, 90))},
            "crop_iou": {"mean": float(ious.mean()), "p10": float(np.percentile(ious, 10)), "min": float(ious.min())}}


YAW_BUCKETS = ((0.0, 10.0), (10.0, 25.0), (25.0, 180.0))


def calibrate(rows: list[dict], key: str, holdout: float, scale: float, holdout_subsets: tuple[str, ...] = (),
              yaw_aware: bool = False) -> dict:
    """Fit on the non-held-out faces that have ``key``; residuals on the held-out ones (all, per
    subset, per |yaw| bucket), with the identity mapping as a baseline."""
    use = [r for r in rows if key in r]
    test = np.array([held_out(r["image"], holdout) or r["subset"] in holdout_subsets for r in use], bool)
    src = np.stack([r[key] for r in use])
    dst = np.stack([r["box478"] for r in use])
    fitted = fit_mapping(src[~test], dst[~test])
    out = {"mapping": asdict(fitted), "fit_faces": int((~test).sum()), "heldout_faces": int(test.sum()),
           "heldout": {}, "heldout_identity": {}}
    subsets = sorted({r["subset"] for r in use})
    sub = np.array([r["subset"] for r in use])
    for name in ["all"] + subsets:
        sel = test & ((sub == name) if name != "all" else True)
        if sel.sum() == 0:
            continue
        out["heldout"][name] = residuals(fitted, src[sel], dst[sel], scale)
        out["heldout_identity"][name] = residuals(BoxMapping(), src[sel], dst[sel], scale)
    yaw_signed = np.array([r["yaw"] for r in use])
    yaw = np.abs(yaw_signed)
    buckets = [("all", test)] + [(f"|yaw| {lo:.0f}-{hi:.0f}", test & (yaw >= lo) & (yaw < hi)) for lo, hi in YAW_BUCKETS]
    for name, sel in buckets[1:]:
        if sel.sum():
            out["heldout"][name] = residuals(fitted, src[sel], dst[sel], scale)
            out["heldout_identity"][name] = residuals(BoxMapping(), src[sel], dst[sel], scale)
    if yaw_aware:
        p = fit_yaw_aware(src[~test], dst[~test], yaw_signed[~test])
        out["yaw_aware"] = {"params": p, "heldout": {
            name: yaw_aware_residuals(p, src[sel], dst[sel], yaw_signed[sel], scale) for name, sel in buckets if sel.sum()}}
    # per-subset fits, to see how much the mapping depends on the data
    out["per_subset_fit"] = {name: asdict(fit_mapping(src[~test & (sub == name)], dst[~test & (sub == name)]))
                             for name in subsets if (~test & (sub == name)).sum() >= 5}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("annotations", nargs="+", type=Path, help="annotation folders (smirk-edge annotate)")
    p.add_argument("--holdout", type=float, default=0.2, help="fraction of images held out (default 0.2)")
    p.add_argument("--holdout-subset", action="append", default=None, metavar="NAME",
                   help="hold out every image of this subset folder (repeatable; default: photos, the "
                        "in-the-wild set, so it measures out-of-domain accuracy)")
    p.add_argument("--scale", type=float, default=1.4, help="crop scale for the IoU (default 1.4, SMIRK's demo)")
    p.add_argument("--min-iou", type=float, default=0.3, help="detection <-> face matching IoU (default 0.3)")
    p.add_argument("--score-threshold", type=float, default=0.5, help="detector threshold (Reconstructor's 0.5)")
    p.add_argument("--max-per-subset", type=int, default=None, help="at most N images per subset folder")
    p.add_argument("--out", type=Path, default=None, help="write the JSON report here")
    args = p.parse_args(argv)
    if args.holdout_subset is None:
        args.holdout_subset = ["photos"]

    rows = collect(args.annotations, args.max_per_subset)
    if not rows:
        print("no annotated faces found", file=sys.stderr)
        return 1
    detector = FaceDetector(variant="auto", score_threshold=args.score_threshold)
    det_stats = attach_detections(rows, detector, args.min_iou)
    report = {
        "benchmark": "box_calibration", "smirk_edge": __version__, "python": platform.python_version(),
        "numpy": np.__version__, "opencv": cv2.__version__, "platform": platform.platform(),
        "annotations": [str(a) for a in args.annotations],
        "mediapipe": sorted({s.get("mediapipe", "?") for a in args.annotations for s in read_index(a)["shards"]}),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "annotations"},
        "detector": det_stats,
        "subsets": {s: sum(r["subset"] == s for r in rows) for s in sorted({r["subset"] for r in rows})},
        "detector_to_landmark_box": calibrate(rows, "det", args.holdout, args.scale, tuple(args.holdout_subset)),
        "landmark105_to_landmark_box": calibrate(rows, "box105", args.holdout, args.scale, tuple(args.holdout_subset),
                                                 yaw_aware=True),
    }
    print(f"faces: {len(rows)} ({report['subsets']}); detector matched {det_stats['matched']} "
          f"in {det_stats['seconds']:.0f} s")
    for name in ("detector_to_landmark_box", "landmark105_to_landmark_box"):
        r = report[name]
        m = r["mapping"]
        print(f"\n{name}: BoxMapping(dx={m['dx']:.4f}, dy={m['dy']:.4f}, sx={m['sx']:.4f}, sy={m['sy']:.4f})  "
              f"fit on {r['fit_faces']}, held out {r['heldout_faces']}")
        print(f"  {'held-out set':14s} {'n':>6s} {'centre% mean/p90':>17s} {'size% mean/p90':>15s} "
              f"{'crop IoU mean/p10':>18s}   identity: IoU mean/p10")
        for s, v in r["heldout"].items():
            b = r["heldout_identity"][s]
            print(f"  {s:14s} {v['n']:6d} {v['centre_err_pct']['mean']:8.2f}/{v['centre_err_pct']['p90']:<8.2f} "
                  f"{v['size_err_pct']['mean']:7.2f}/{v['size_err_pct']['p90']:<7.2f} "
                  f"{v['crop_iou']['mean']:9.3f}/{v['crop_iou']['p10']:<8.3f}   "
                  f"{b['crop_iou']['mean']:.3f}/{b['crop_iou']['p10']:.3f}")
    ya = report["landmark105_to_landmark_box"]["yaw_aware"]
    q = ya["params"]
    print(f"\nyaw-aware 105 -> 478 (yaw = the face's head yaw, degrees): dx = {q['dx0']:.4f} + {q['dx1']:.4f} "
          f"* sin(yaw), dy = {q['dy']:.4f}, sx = {q['sx0']:.4f} + {q['sx1']:.4f} * |sin(yaw)|, sy = {q['sy']:.4f}")
    for s, v in ya["heldout"].items():
        print(f"  {s:14s} {v['n']:6d} {v['centre_err_pct']['mean']:8.2f}/{v['centre_err_pct']['p90']:<8.2f} "
              f"{v['size_err_pct']['mean']:7.2f}/{v['size_err_pct']['p90']:<7.2f} "
              f"{v['crop_iou']['mean']:9.3f}/{v['crop_iou']['p10']:<8.3f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
