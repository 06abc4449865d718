"""Face-detector recall and false positives on the real photos of ../shared/data/photos.

Ground truth: the dlib imglab files ``photos/*.xml``; each ``<box>`` carries 68 ``<part>`` points
(dlib's 68-landmark predictor, pseudo ground truth) and the face's ground-truth box is the
bounding box of those 68 points (eyebrows to chin, jaw side to jaw side; no forehead).

Matching: detections and ground-truth faces are matched one to one, greedily by IoU (best pairs
first), and a pair counts when IoU >= ``--iou`` (0.3 by default). Why 0.3 and not the usual 0.5:
the 68-point box and BlazeFace's box follow different conventions (BlazeFace's is a square that
reaches higher on the forehead), so a correct detection of a frontal face typically has IoU
0.4-0.7 with the 68-point box and a profile face lower still; 0.3 separates "found this face" from
"found a neighbour" on these photos without measuring the box convention. ``--criterion centre``
instead counts a detection whose box centre lies inside the ground-truth box.

Recall is over faces whose ground-truth box's longer side is >= ``--min-size`` (40 px); a
detection that matches a smaller ground-truth face is neither a hit nor a false positive; any other
unmatched detection is a false positive (note: the xml files may miss faces, e.g. strong profiles,
so some "false positives" can be real faces).

Scenes: ``crops-utkface`` / ``crops-expressive`` are ``--crops`` seeded random face crops
(200 px UTKFace, <= 224 px expressive LFW-style crops), one face filling most of each image; their
ground truth is the central half of the image, scored with the centre criterion (recall = share of
crops whose face is found). ``native`` runs each annotated photo as it is (333-500 px). ``mosaic-N@F`` pastes the
photos, each scaled by F, into an N x N grid (one big frame, annotations moved with them), which
makes the faces small *relative to the frame* the way a group photo or a 4000 px camera frame
does (``mosaic-3@2.67`` is about 4000 px wide).

Usage (from the repository root)::

    python training/detector_recall.py --out runs/detector_recall.json
    python training/detector_recall.py --timing      # also single-thread latency, median of 100

Writes one JSON row per (scene, configuration) with the versions, and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from smirk_edge.detector import MODELS, FaceDetector, iou, letterbox, model_path
from smirk_edge.runtimes import make_runner


def default_data_dir() -> Path:
    env = os.environ.get("SMIRK_EDGE_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


@dataclass
class Sample:
    """One annotated image: BGR pixels and ``(M, 4)`` ground-truth boxes x0, y0, x1, y1 (px)."""

    name: str
    image: np.ndarray
    boxes: np.ndarray


def load_samples(photos: Path) -> list[Sample]:
    """Every image of every ``*.xml`` in ``photos`` with its 68-point bounding boxes."""
    out = []
    for xml in sorted(photos.glob("*.xml")):
        root = ET.parse(xml).getroot()
        for im in root.iter("image"):
            img = cv2.imread(str(photos / im.get("file")), cv2.IMREAD_COLOR)
            if img is None:
                continue
            boxes = []
            for box in im.iter("box"):
                pts = np.array([[float(p.get("x")), float(p.get("y"))] for p in box.iter("part")])
                if len(pts) != 68:
                    continue
                # pixel centres -> pixel extents: [min, max + 1)
                boxes.append([pts[:, 0].min(), pts[:, 1].min(),
                              pts[:, 0].max() + 1, pts[:, 1].max() + 1])
            out.append(Sample(im.get("file"), img, np.array(boxes, np.float64).reshape(-1, 4)))
    return out


def mosaic(samples: list[Sample], n: int, factor: float) -> Sample:
    """Paste ``samples`` (each scaled by ``factor``) into an n x n grid; boxes follow."""
    scaled = []
    for s in samples[: n * n]:
        img = cv2.resize(s.image, None, fx=factor, fy=factor, interpolation=cv2.INTER_LINEAR)
        scaled.append((img, s.boxes * np.array([img.shape[1] / s.image.shape[1],
                                                img.shape[0] / s.image.shape[0]] * 2)))
    cell_w = max(i.shape[1] for i, _ in scaled)
    cell_h = max(i.shape[0] for i, _ in scaled)
    canvas = np.full((cell_h * n, cell_w * n, 3), 114, np.uint8)
    boxes = []
    for k, (img, b) in enumerate(scaled):
        y0, x0 = (k // n) * cell_h, (k % n) * cell_w
        canvas[y0:y0 + img.shape[0], x0:x0 + img.shape[1]] = img
        boxes.append(b + np.array([x0, y0, x0, y0]))
    return Sample(f"mosaic-{n}@{factor:g}", canvas, np.concatenate(boxes))


def load_crops(folder: Path, n: int, seed: int = 0) -> list[Sample]:
    """``n`` seeded random face crops of ``folder`` (one face each, filling most of the image).

    No boxes come with them: the ground truth is the central half of the image (x and y from
    1/4 to 3/4), scored with the centre criterion (a detection whose centre is in it).
    """
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    rng = np.random.default_rng(seed)
    out = []
    for i in rng.choice(len(files), size=min(n, len(files)), replace=False):
        img = cv2.imread(str(files[i]), cv2.IMREAD_COLOR)
        if img is None:
            continue
        h, w = img.shape[:2]
        out.append(Sample(files[i].name, img, np.array([[w / 4, h / 4, 3 * w / 4, 3 * h / 4]])))
    return out


def match(det: np.ndarray, gt: np.ndarray, min_size: float, thr: float, criterion: str):
    """(hits, n_gt_big, false_positives) for one image."""
    big = np.maximum(gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]) >= min_size
    pairs = []
    for i in range(len(det)):
        if criterion == "iou":
            q = iou(det[i], gt) if len(gt) else np.zeros(0)
            pairs += [(q[j], i, j) for j in range(len(gt)) if q[j] >= thr]
        else:
            cx, cy = (det[i, 0] + det[i, 2]) / 2, (det[i, 1] + det[i, 3]) / 2
            for j in range(len(gt)):
                if gt[j, 0] <= cx <= gt[j, 2] and gt[j, 1] <= cy <= gt[j, 3]:
                    gc = (gt[j, :2] + gt[j, 2:]) / 2
                    pairs.append((-float(np.hypot(cx - gc[0], cy - gc[1])), i, j))
    pairs.sort(reverse=True)
    used_d, used_g = set(), set()
    for _, i, j in pairs:
        if i in used_d or j in used_g:
            continue
        used_d.add(i)
        used_g.add(j)
    hits = sum(1 for j in used_g if big[j])
    fps = len(det) - len(used_d)
    return hits, int(big.sum()), fps


CONFIGS = {
    # name: FaceDetector keyword arguments
    "short": dict(variant="short"),
    "full": dict(variant="full"),
    "auto": dict(variant="auto"),
    "both": dict(variant="both"),
    "auto+min40": dict(variant="auto", min_face=40),
    "auto+min100": dict(variant="auto", min_face=100),
}


def evaluate(samples, scenes, configs, min_size, thr, criterion, score_threshold):
    runners = {v: make_runner("onnxruntime", model_path(v), threads=1).activate() for v in MODELS}
    rows = []
    for cname in configs:
        kw = dict(CONFIGS[cname])
        det = FaceDetector(runners, score_threshold=score_threshold, **kw)
        for scene_name, scene in scenes:
            hits = total = fps = 0
            t0 = time.perf_counter()
            crit = "centre" if scene_name.startswith("crops") else criterion
            for s in scene:
                d = det.detect(s.image)
                h, n, f = match(d.boxes.astype(np.float64), s.boxes, min_size, thr, crit)
                hits, total, fps = hits + h, total + n, fps + f
            dt = (time.perf_counter() - t0) / max(len(scene), 1)
            rows.append({
                "scene": scene_name, "config": cname, "images": len(scene),
                "faces_ge_min_size": total, "hits": hits,
                "recall": round(hits / total, 4) if total else None,
                "false_positives": fps, "fp_per_image": round(fps / max(len(scene), 1), 3),
                "mean_detect_ms": round(dt * 1e3, 1),
                "frame_px": [int(scene[0].image.shape[1]), int(scene[0].image.shape[0])],
            })
    return rows


def timing(photos: Path, runs: int = 100) -> list[dict]:
    """Median / p90 latency (ms), 1 onnxruntime thread: the network alone and detect()."""
    img = cv2.imread(str(photos / "2008_002506.jpg"), cv2.IMREAD_COLOR)
    big = cv2.resize(img, (4000, 3000), interpolation=cv2.INTER_LINEAR)
    rows = []

    def measure(fn):
        for _ in range(10):
            fn()
        ts = []
        for _ in range(runs):
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1e3)
        ts.sort()
        return round(statistics.median(ts), 3), round(ts[int(0.9 * len(ts)) - 1], 3)

    for v, spec in MODELS.items():
        r = make_runner("onnxruntime", model_path(v), threads=1).activate()
        x, _ = letterbox(img, spec.input_size)
        feed = {"input": x[None]}
        med, p90 = measure(lambda: r.infer(feed))
        rows.append({"what": f"{v} network (ORT, 1 thread)", "median_ms": med, "p90_ms": p90})
        det = FaceDetector(r, variant=v)
        for label, frame in (("500x375", img), ("4000x3000", big)):
            med, p90 = measure(lambda: det.detect(frame))
            rows.append({"what": f"{v} detect() {label}", "median_ms": med, "p90_ms": p90})
    return rows


def _cpu() -> dict:
    """CPU model, flags and class (smirk_edge.system.describe), so that each row names its machine."""
    from smirk_edge.system import describe

    return describe(probe=False)["cpu"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="BlazeFace recall on ../shared/data/photos")
    ap.add_argument("--data", default=str(default_data_dir()), help="shared data folder")
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--min-size", type=float, default=40.0, help="min GT box side, px")
    ap.add_argument("--iou", type=float, default=0.3, help="IoU for a hit")
    ap.add_argument("--criterion", choices=("iou", "centre"), default="iou")
    ap.add_argument("--score-threshold", type=float, default=None,
                    help="override the per-model default (0.5 short, 0.6 full)")
    ap.add_argument("--no-mosaic", action="store_true", help="only the native photos")
    ap.add_argument("--crops", type=int, default=300,
                    help="face crops sampled from faces/utkface and faces/expressive (0: none)")
    ap.add_argument("--timing", action="store_true", help="also time the networks and detect()")
    ap.add_argument("--out", help="write the JSON rows here")
    args = ap.parse_args(argv)

    photos = Path(args.data) / "photos"
    if not photos.is_dir():
        print(f"no photos at {photos}: set SMIRK_EDGE_DATA or --data", file=sys.stderr)
        return 2
    samples = load_samples(photos)
    scenes = [("native", samples)]
    if not args.no_mosaic:
        scenes += [("mosaic-3@1", [mosaic(samples, 3, 1.0)]),
                   ("mosaic-3@2.67", [mosaic(samples, 3, 8 / 3)])]
    for sub in ("utkface", "expressive"):
        folder = Path(args.data) / "faces" / sub
        if folder.is_dir() and args.crops > 0:
            scenes.append((f"crops-{sub}", load_crops(folder, args.crops)))
    rows = evaluate(samples, scenes, args.configs, args.min_size, args.iou, args.criterion,
                    args.score_threshold)
    import onnxruntime

    env = {"python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
           "opencv": cv2.__version__, "numpy": np.__version__, "cpu": _cpu(),
           "criterion": args.criterion, "iou": args.iou, "min_size": args.min_size,
           "score_threshold": args.score_threshold}
    for r in rows:
        r.update(env)
    hdr = f"{'scene':15s} {'config':12s} {'frame':>10s} {'faces':>5s} {'hits':>4s} " \
          f"{'recall':>6s} {'FP':>3s} {'FP/img':>6s} {'ms/img':>7s}"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        fr = "x".join(map(str, r["frame_px"])) if r["scene"].startswith("mosaic") else "var"
        rec = f"{r['recall']:.3f}" if r["recall"] is not None else "-"
        print(f"{r['scene']:15s} {r['config']:12s} {fr:>10s} {r['faces_ge_min_size']:5d} "
              f"{r['hits']:4d} {rec:>6s} {r['false_positives']:3d} {r['fp_per_image']:6.2f} "
              f"{r['mean_detect_ms']:7.1f}")
    if args.timing:
        trows = timing(photos)
        for r in trows:
            r.update(env)
            print(f"{r['what']:34s} median {r['median_ms']:8.3f} ms  p90 {r['p90_ms']:8.3f} ms")
        rows += trows
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
