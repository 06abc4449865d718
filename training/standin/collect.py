"""Collect MediaPipe face-mesh landmarks for the stand-in face model (runs in a MediaPipe env).

This script is run as a *subprocess* with an interpreter that has ``mediapipe==0.10.21``
(which pins numpy<2, so it lives in its own environment, e.g. ``/work/mpvenv``). It imports
nothing from smirk_edge, so it works in that environment without the package installed.

It writes four files to ``--out`` (a cache folder OUTSIDE the repository; nothing here may be
committed, because the per-image landmarks derive from non-commercial research photos):

- ``topology.npz``: MediaPipe's Apache-2.0 face-mesh topology: ``tesselation (E, 2)`` undirected
  edges and one ``(k, 2)`` edge array per region set (``lips``, ``left_eye``, ...).
- ``utkface.npz``: ``lmk (N, 468, 3)`` float32 landmarks of the UTKFace subset in pixels of the
  200x200 image (x right, y down, z = MediaPipe depth * image width, smaller = nearer),
  ``age (N,)``, ``name (N,)``.
- ``expressive.npz``: the same for the expressive set plus ``emotion (N,)`` strings (file names
  of LFW images, ``Person_Name_0003.jpg``, let the builder group images of one person).
- ``photos.npz``: for the 68-point annotated photos: ``mp (M, 468, 3)`` MediaPipe landmarks and
  ``dlib (M, 68, 2)`` annotated points, both in pixels of the original photo.

Everything is deterministic: sorted file lists, fixed subsampling strides, static-image mode.

Usage (from the repository root)::

    /work/mpvenv/bin/python training/standin/collect.py --data ../shared/data --out /work/cache/standin
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import xml.etree.ElementTree as ET

import numpy as np


def _face_mesh():
    import mediapipe as mp

    return mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1,
                                           refine_landmarks=False, min_detection_confidence=0.5)


def _run(mesh, bgr: np.ndarray) -> np.ndarray | None:
    """MediaPipe on one BGR image -> ``(468, 3)`` pixels (x, y, z*width) or None."""
    import cv2

    h, w = bgr.shape[:2]
    res = mesh.process(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    if not res.multi_face_landmarks:
        return None
    lm = res.multi_face_landmarks[0].landmark
    return np.array([[p.x * w, p.y * h, p.z * w] for p in lm[:468]], np.float32)


def _read(path: str) -> np.ndarray | None:
    import cv2

    img = cv2.imread(path, cv2.IMREAD_COLOR)  # greyscale files come back as 3 equal channels
    return img


def collect_topology(out: str) -> None:
    from mediapipe.python.solutions import face_mesh_connections as c

    def arr(s):
        return np.array(sorted(tuple(sorted(e)) for e in s), np.int32)

    np.savez(os.path.join(out, "topology.npz"), tesselation=arr(c.FACEMESH_TESSELATION),
             lips=arr(c.FACEMESH_LIPS), left_eye=arr(c.FACEMESH_LEFT_EYE),
             right_eye=arr(c.FACEMESH_RIGHT_EYE), left_eyebrow=arr(c.FACEMESH_LEFT_EYEBROW),
             right_eyebrow=arr(c.FACEMESH_RIGHT_EYEBROW), face_oval=arr(c.FACEMESH_FACE_OVAL),
             nose=arr(c.FACEMESH_NOSE))


def collect_folder(mesh, paths: list[str], out_path: str, extra: dict[str, list]) -> None:
    lmks, keep = [], []
    for i, p in enumerate(paths):
        img = _read(p)
        if img is None:
            continue
        lm = _run(mesh, img)
        if lm is not None:
            lmks.append(lm)
            keep.append(i)
        if i % 500 == 0:
            print(f"  {os.path.basename(out_path)}: {i}/{len(paths)} ({len(lmks)} faces)", flush=True)
    keep = np.array(keep, np.int64)
    arrays = {"lmk": np.stack(lmks).astype(np.float32),
              "name": np.array([os.path.basename(paths[i]) for i in keep])}
    for k, v in extra.items():
        arrays[k] = np.asarray(v)[keep]
    np.savez(out_path, **arrays)
    print(f"  wrote {out_path}: {len(keep)} of {len(paths)} images", flush=True)


def collect_photos(mesh, photo_dir: str, out_path: str) -> None:
    """MediaPipe on an enlarged, upscaled crop around every dlib-annotated face box."""
    import cv2

    mps, dlibs, names = [], [], []
    for xml in sorted(f for f in os.listdir(photo_dir) if f.endswith("_with_face_landmarks.xml")):
        root = ET.parse(os.path.join(photo_dir, xml)).getroot()
        for im in root.iter("image"):
            img = _read(os.path.join(photo_dir, im.get("file")))
            if img is None:
                continue
            for box in im.iter("box"):
                pts = np.zeros((68, 2), np.float32)
                for part in box.iter("part"):
                    pts[int(part.get("name"))] = (float(part.get("x")), float(part.get("y")))
                t, l = float(box.get("top")), float(box.get("left"))
                bw, bh = float(box.get("width")), float(box.get("height"))
                cx, cy, side = l + bw / 2, t + bh / 2, 2.2 * max(bw, bh)
                size = 256
                s = size / side
                A = np.array([[s, 0, size / 2 - s * cx], [0, s, size / 2 - s * cy]], np.float32)
                crop = cv2.warpAffine(img, A, (size, size), flags=cv2.INTER_CUBIC,
                                      borderMode=cv2.BORDER_REPLICATE)
                lm = _run(mesh, crop)
                if lm is None:
                    continue
                lm[:, 0] = (lm[:, 0] - A[0, 2]) / s
                lm[:, 1] = (lm[:, 1] - A[1, 2]) / s
                lm[:, 2] = lm[:, 2] / s
                mps.append(lm)
                dlibs.append(pts)
                names.append(im.get("file"))
    np.savez(out_path, mp=np.stack(mps), dlib=np.stack(dlibs), name=np.array(names))
    print(f"  wrote {out_path}: {len(mps)} faces", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="the shared data folder (../shared/data)")
    ap.add_argument("--out", required=True, help="cache folder outside the repository")
    ap.add_argument("--utk", type=int, default=3000, help="number of UTKFace images (adults)")
    ap.add_argument("--happy", type=int, default=800, help="happiness images of the expressive set")
    ap.add_argument("--min-age", type=int, default=16)
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    collect_topology(args.out)
    mesh = _face_mesh()

    # UTKFace: adults only, evenly strided over the sorted file list.
    utk_dir = os.path.join(args.data, "faces", "utkface")
    files = sorted(f for f in os.listdir(utk_dir) if f.endswith(".jpg"))
    ages = {f: int(f.split("_")[0]) for f in files}
    adults = [f for f in files if ages[f] >= args.min_age]
    stride = max(1, len(adults) // args.utk)
    chosen = adults[::stride][: args.utk]
    collect_folder(mesh, [os.path.join(utk_dir, f) for f in chosen], os.path.join(args.out, "utkface.npz"),
                   {"age": [ages[f] for f in chosen]})

    # Expressive set: every non-happy image and a strided subset of the happy ones.
    ex_dir = os.path.join(args.data, "faces", "expressive")
    with open(os.path.join(args.data, "faces", "expressive.csv"), newline="") as fh:
        rows = sorted((r["image"], r["emotion"].strip().lower()) for r in csv.DictReader(fh))
    rows = [r for r in rows if os.path.exists(os.path.join(ex_dir, r[0]))]
    happy = [r for r in rows if r[1] == "happiness"]
    other = [r for r in rows if r[1] != "happiness"]
    happy = happy[:: max(1, len(happy) // args.happy)][: args.happy]
    sel = sorted(other + happy)
    collect_folder(mesh, [os.path.join(ex_dir, r[0]) for r in sel], os.path.join(args.out, "expressive.npz"),
                   {"emotion": [r[1] for r in sel]})

    collect_photos(mesh, os.path.join(args.data, "photos"), os.path.join(args.out, "photos.npz"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
