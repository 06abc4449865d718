"""Stress sheet: what a bundle makes of one photo under the conditions that break face reconstruction.

``python -m smirk_edge.benchmarks.stress_sheet [--bundle DIR] [--image PHOTO] -o sheet.jpg``

Each tile is the photo changed one way (in-plane rotation, upside down, darkness, a tiny face,
the eyes covered, motion blur, mirrored) and the bundle's reconstruction drawn over it, or "no
face" when the detector found none. The default photo is the public-domain astronaut portrait
shipped in ``smirk_edge/assets/examples``, so the sheet can be published with the model card.
Prints one JSON line per tile (faces found, head pose).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path

import cv2
import numpy as np


def example_photo() -> Path:
    """The shipped public-domain portrait (NASA astronaut, via scikit-image's sample data)."""
    return Path(str(resources.files("smirk_edge.assets"))) / "examples" / "astronaut.jpg"


def _rotate(img: np.ndarray, deg: float) -> np.ndarray:
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), deg, 1.0)
    return cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REPLICATE)


def _tiny(img: np.ndarray, side: int = 96) -> np.ndarray:
    h, w = img.shape[:2]
    out = np.full_like(img, 127)
    small = cv2.resize(img, (side, side * h // w), interpolation=cv2.INTER_AREA)
    y, x = (h - small.shape[0]) // 2, (w - side) // 2
    out[y:y + small.shape[0], x:x + side] = small
    return out


def _cover_eyes(img: np.ndarray) -> np.ndarray:
    out = img.copy()
    h, w = img.shape[:2]
    cv2.rectangle(out, (int(0.28 * w), int(0.19 * h)), (int(0.62 * w), int(0.27 * h)), (20, 20, 20), -1)
    return out


def _motion_blur(img: np.ndarray, k: int = 21) -> np.ndarray:
    kernel = np.zeros((k, k), np.float32)
    kernel[k // 2, :] = 1.0 / k
    return cv2.filter2D(img, -1, kernel)


def _dark(img: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(0)
    dark = img.astype(np.float32) * 0.12 + rng.normal(0, 4, img.shape)
    return np.clip(dark, 0, 255).astype(np.uint8)


#: (label, change) for each tile, in order
VARIANTS: tuple[tuple[str, Callable[[np.ndarray], np.ndarray]], ...] = (
    ("as shot", lambda im: im),
    ("mirrored", lambda im: im[:, ::-1].copy()),
    ("rotated 30 deg", lambda im: _rotate(im, 30)),
    ("rotated 60 deg", lambda im: _rotate(im, 60)),
    ("upside down", lambda im: im[::-1, ::-1].copy()),
    ("eyes covered", _cover_eyes),
    ("12 % light + noise", _dark),
    ("motion blur 21 px", _motion_blur),
    ("face ~35 px wide", _tiny),
)


def stress_sheet(bundle: str | None, image: str | Path, output: str | Path, tile: int = 256,
                 columns: int = 3) -> list[dict]:
    """Write the sheet to ``output``; return one record per tile."""
    from smirk_edge import Reconstructor
    from smirk_edge.draw import draw

    photo = cv2.imread(str(image), cv2.IMREAD_COLOR)
    if photo is None:
        raise SystemExit(f"cannot read {image}")
    rec = Reconstructor(bundle) if bundle else Reconstructor()
    tiles, rows = [], []
    for label, change in VARIANTS:
        img = np.ascontiguousarray(change(photo))
        faces = rec(img)
        shown = draw(img, faces) if faces else img.copy()
        t = cv2.resize(shown, (tile, tile), interpolation=cv2.INTER_AREA)
        text = label if faces else f"{label}: no face"
        cv2.rectangle(t, (0, 0), (tile, 22), (0, 0, 0), -1)
        cv2.putText(t, text, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
        tiles.append(t)
        rows.append({"variant": label, "faces": len(faces),
                     "head_pose_deg": [round(float(v), 1) for v in faces[0].head_pose] if faces else None,
                     "score": round(float(faces[0].score), 3) if faces else None})
    while len(tiles) % columns:
        tiles.append(np.zeros_like(tiles[0]))
    grid = np.concatenate([np.concatenate(tiles[r:r + columns], 1) for r in range(0, len(tiles), columns)], 0)
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), grid, [cv2.IMWRITE_JPEG_QUALITY, 85])
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m smirk_edge.benchmarks.stress_sheet", description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default=None, help="model bundle (default: the embedded model)")
    p.add_argument("--image", default=None, help="photo (default: the shipped astronaut portrait)")
    p.add_argument("-o", "--output", required=True, help="sheet image to write (.jpg or .png)")
    args = p.parse_args(argv)
    for row in stress_sheet(args.bundle, args.image or example_photo(), args.output):
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
