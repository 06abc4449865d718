"""Regenerate the stand-in face model end to end.

From the repository root, with the project venv (numpy 2) and a MediaPipe 0.10.21 env::

    python -m smirk_edge.training.standin --data ../shared/data --cache /work/cache/standin \\
        --mp-python /work/mpvenv/bin/python

Steps: (1) ``collect.py`` in the MediaPipe interpreter writes landmark caches to ``--cache``
(outside the repository; skipped with ``--skip-collect`` when the cache exists), (2)
:func:`build.build` fits the model, (3) it is written with ``smirk_edge.face_model.format.save``
to ``--out`` and (4) pictures go to ``--pictures``. The output is deterministic for a given cache.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

NOTICE = (
    "smirk-edge stand-in face model (FLAME array layout, not FLAME). Topology: MediaPipe face mesh "
    "(468 vertices = MediaPipe landmark indices; Apache-2.0). Statistics (mean shape, identity and "
    "data-driven expression bases, 68-point embedding) derived from MediaPipe landmarks of UTKFace, "
    "an LFW-based expression set and dlib example photos: those images are for non-commercial "
    "research only, so these derived arrays are for non-commercial research use only. "
    "See smirk_edge/assets/NOTICE.standin.md. Expression slots: {slots}."
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m smirk_edge.training.standin", description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--cache", default="/work/cache/standin", help="landmark cache (outside the repo)")
    ap.add_argument("--mp-python", default="/work/mpvenv/bin/python", help="interpreter with mediapipe 0.10.21")
    ap.add_argument("--skip-collect", action="store_true", help="reuse an existing cache")
    ap.add_argument("--out", default=str(REPO / "smirk_edge" / "assets" / "standin_face_model.npz"))
    ap.add_argument("--pictures", default=str(REPO / "docs" / "images"), help="'' to skip")
    args = ap.parse_args(argv)

    if not args.skip_collect:
        subprocess.run([args.mp_python, str(Path(__file__).with_name("collect.py")), "--data", args.data,
                        "--out", args.cache], check=True)
    from smirk_edge.face_model import FaceModel, save

    from .build import MODEL_ID, build
    b = build(args.cache)
    slots = ", ".join(f"{i} {n}" for i, n in enumerate(b.expression_names) if n != "unused")
    path = save(args.out, b.arrays, model_id=MODEL_ID, notice=NOTICE.format(slots=slots))
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    print(json.dumps(b.stats, indent=1))
    if args.pictures:
        from .pictures import write_pictures
        for p in write_pictures(FaceModel.load(path), b.expression_names, args.pictures):
            print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
