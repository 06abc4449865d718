"""Plot the JSON-lines loss logs of training runs (``log.jsonl``) to a PNG, with OpenCV only.

``python -m smirk_edge.training.plot_losses runs/stage1/log.jsonl runs/stage2/log.jsonl -o docs/images/loss_curve.png``

One panel per log (stage); each panel draws the chosen keys (default: ``loss`` and the landmark
terms, plus reconstruction and cycle in stage 2) on a log10 y axis against the step.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

COLOURS = [(200, 80, 30), (40, 160, 40), (30, 30, 220), (160, 40, 160), (20, 160, 200), (120, 120, 120)]
DEFAULT_KEYS = ("loss", "landmark_mediapipe", "landmark_contour", "reconstruction", "cycle")


def read_log(path: str | Path) -> list[dict]:
    """Records of a ``log.jsonl`` (blank or broken lines skipped)."""
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def _panel(records: list[dict], keys, title: str, w: int = 640, h: int = 360) -> np.ndarray:
    import cv2

    img = np.full((h, w, 3), 255, np.uint8)
    L, R, T, B = 70, 20, 30, 40
    keys = [k for k in keys if any(isinstance(r.get(k), (int, float)) and r.get(k, 0) > 0 for r in records)]
    cv2.putText(img, title, (L, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    if not records or not keys:
        return img
    steps = np.array([r["step"] for r in records], float)
    vals = {k: np.array([r.get(k, np.nan) for r in records], float) for k in keys}
    allv = np.concatenate([v[v > 0] for v in vals.values()])
    lo, hi = math.floor(np.log10(allv.min())), math.ceil(np.log10(allv.max()))
    hi = max(hi, lo + 1)
    s0, s1 = steps.min(), max(steps.max(), steps.min() + 1)
    X = lambda s: int(L + (s - s0) / (s1 - s0) * (w - L - R))  # noqa: E731
    Y = lambda v: int(T + (hi - np.log10(v)) / (hi - lo) * (h - T - B))  # noqa: E731
    cv2.rectangle(img, (L, T), (w - R, h - B), (0, 0, 0), 1)
    for e in range(lo, hi + 1):
        y = Y(10.0 ** e)
        cv2.line(img, (L, y), (w - R, y), (225, 225, 225), 1)
        cv2.putText(img, f"1e{e}", (8, y + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    for s in np.linspace(s0, s1, 5):
        cv2.putText(img, f"{int(s)}", (X(s) - 10, h - B + 16), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1,
                    cv2.LINE_AA)
    cv2.putText(img, "step", (w // 2, h - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    for i, k in enumerate(keys):
        c = COLOURS[i % len(COLOURS)]
        v = vals[k]
        pts = np.array([(X(s), Y(x)) for s, x in zip(steps, v) if x > 0 and np.isfinite(x)], np.int32)
        if len(pts) > 1:
            cv2.polylines(img, [pts], False, c, 1, cv2.LINE_AA)
        cv2.putText(img, k, (w - R - 170, T + 16 + 14 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.4, c, 1, cv2.LINE_AA)
    return img


def plot(logs, output: str | Path, keys=DEFAULT_KEYS) -> Path:
    """Write one panel per log, stacked vertically, to ``output`` (PNG)."""

    panels = []
    for p in logs:
        recs = read_log(p)
        stage = recs[0].get("stage", "?") if recs else "?"
        panels.append(_panel(recs, keys, f"stage {stage}: {p}"))
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    from ..image import save_image

    save_image(out, np.concatenate(panels, 0))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m smirk_edge.training.plot_losses", description=__doc__.splitlines()[0])
    ap.add_argument("logs", nargs="+", help="log.jsonl files")
    ap.add_argument("-o", "--output", required=True, help="PNG to write")
    ap.add_argument("--keys", nargs="*", default=list(DEFAULT_KEYS), help="logged keys to draw")
    a = ap.parse_args(argv)
    print(plot(a.logs, a.output, a.keys))
    return 0


if __name__ == "__main__":
    sys.exit(main())
