"""Failure sheet: what a bundle makes of one annotated photo turned, occluded and degraded.

``python -m smirk_edge.training.failure_sheet --annotations ANN [--bundle DIR] -o sheet.jpg``

``ANN`` is an annotation folder (``smirk-edge annotate``) of the photo(s) to use; the first face is
taken. Each tile is the photo turned by 3D profiling (:func:`.photo_augment.profile`, the same
re-rendering the training data uses: yaw 30, 50 and 70 degrees either way, pitch +-25), covered
by each occluder of :data:`.photo_augment.OCCLUDERS`, side-lit, blurred or shrunk, with the
bundle's reconstruction (``Reconstructor(bundle)(image)``, the user's path) drawn over it, or "no
face". The default photo of the project's sheets is the public-domain astronaut portrait in
``smirk_edge/assets/examples``, so the sheet can be published with the model card. Prints one
JSON line per tile.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

import cv2
import numpy as np


def _cases(rng_seed: int = 0):
    from . import photo_augment as pa

    turns = [(f"turned {d:+d} deg", d, 0.0) for d in (-70, -50, -30, 30, 50, 70)]
    turns += [("looking up 25 deg", 0.0, 25.0), ("looking down 25 deg", 0.0, -25.0)]
    occl = [(f"{k}", k) for k in pa.OCCLUDERS]
    return turns, occl


def failure_sheet(annotations: str, bundle: str | None, output: str, tile: int = 240, seed: int = 3) -> list[dict]:
    from smirk_edge import Reconstructor
    from smirk_edge.draw import draw

    from . import photo_augment as pa
    from .data import table_from_annotations

    table = table_from_annotations(annotations)
    if len(table) == 0:
        raise SystemExit(f"{annotations}: no annotated face")
    image = table.read(0).astype(np.float32) / 255.0
    P = np.concatenate([table.landmarks478[0], table.depth478[0][:, None]], 1)
    rec = Reconstructor(bundle)
    turns, occl = _cases()
    tiles, rows = [], []

    lo, hi = P[:, :2].min(0), P[:, :2].max(0)
    c, half = (lo + hi) / 2, 1.3 * float((hi - lo).max())

    def add(name: str, img: np.ndarray) -> None:
        bgr = np.clip(img * 255, 0, 255).astype(np.uint8)
        faces = rec(bgr)
        out = draw(bgr, faces, mesh=False) if len(faces) else bgr.copy()
        x0, y0 = (int(max(0, v)) for v in c - half)
        out = out[y0:int(c[1] + half), x0:int(c[0] + half)]  # the face region, where the tiles differ
        h, w = out.shape[:2]
        s = tile / max(h, w)
        out = cv2.resize(out, (int(w * s), int(h * s)), interpolation=cv2.INTER_AREA)
        canvas = np.full((tile, tile, 3), 40, np.uint8)
        canvas[:out.shape[0], :out.shape[1]] = out
        label = name if len(faces) else f"{name}: no face"
        cv2.putText(canvas, label, (6, tile - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
        tiles.append(canvas)
        rows.append({"case": name, "faces": len(faces),
                     "head_pose_deg": [round(float(v), 1) for v in faces[0].head_pose] if len(faces) else None})

    add("as shot", image)
    for name, dy, dp in turns:
        add(name, pa.profile(image, P, dy, dp).image)
    rng = np.random.default_rng(seed)
    for name, kind in occl:
        add(name, pa.occlude(image, P, rng, kind))
    add("strong side light", pa.side_light(image, np.random.default_rng(seed), 0.9))
    add("blur", pa.blur(image, np.random.default_rng(seed + 1)))
    add("photo at 64 px", pa.low_resolution(image, np.random.default_rng(seed), 64, 64))
    cols = 6
    while len(tiles) % cols:
        tiles.append(np.full_like(tiles[0], 40))
    sheet = np.concatenate([np.concatenate(tiles[r:r + cols], 1) for r in range(0, len(tiles), cols)], 0)
    ok, enc = cv2.imencode(".jpg", sheet, [cv2.IMWRITE_JPEG_QUALITY, 88])
    if not ok:
        raise OSError("could not encode the sheet")
    with open(output, "wb") as f:
        f.write(enc.tobytes())
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m smirk_edge.training.failure_sheet", description=__doc__.split("\n")[0])
    p.add_argument("--annotations", required=True, help="annotation folder of the photo (smirk-edge annotate)")
    p.add_argument("--bundle", default=None, help="model bundle (default: the embedded model)")
    p.add_argument("-o", "--output", required=True, help="sheet image to write (.jpg)")
    args = p.parse_args(argv)
    for row in failure_sheet(args.annotations, args.bundle, args.output):
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
