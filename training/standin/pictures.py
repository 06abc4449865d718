"""Pictures of the stand-in model for docs/ (rendered with :mod:`render`, decoded with FaceModel)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from smirk_edge.face_model import FaceModel

from .render import label, render, sheet


def _expr(model: FaceModel, names: list[str], **coef: float) -> np.ndarray:
    e = np.zeros(50, np.float32)
    for k, v in coef.items():
        e[names.index(k)] = v
    return e


def write_pictures(model: FaceModel, names: list[str], out_dir: str | os.PathLike,
                   size: int = 200) -> list[Path]:
    """Render the neutral face, identity and expression samples; returns the PNG paths."""
    import cv2

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    faces = model.faces
    paths = []

    def shot(caption, points=None, **kw):
        g = model.decode(**kw)
        pts = None if points is None else getattr(g, points)[0]
        return label(render(g.vertices[0], faces, size=size, points=pts), caption)

    # neutral, with the 68 landmarks and the 105 MediaPipe-indexed landmarks
    turned = np.array([0.0, np.radians(30), 0.0], np.float32)
    tiles = [shot("neutral"), shot("68 landmarks", "landmarks68"), shot("105 landmarks", "landmarks105"),
             shot("yaw +30: 68", "landmarks68", pose=turned), shot("yaw -30: 68", "landmarks68", pose=-turned)]
    p = out_dir / "standin_neutral.png"
    cv2.imwrite(str(p), sheet(tiles, 5), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    paths.append(p)

    # identity: first four components at -3 / +3 standard deviations
    tiles = []
    for k in range(4):
        for s in (-3.0, 3.0):
            sh = np.zeros(300, np.float32)
            sh[k] = s
            tiles.append(shot(f"shape[{k}] = {s:+.0f}", shape=sh))
    p = out_dir / "standin_identity.png"
    cv2.imwrite(str(p), sheet(tiles, 4), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    paths.append(p)

    # expressions, jaw and eyelids
    jaw_open = np.array([0.3, 0.0, 0.0], np.float32)
    tiles = [shot(n, expression=_expr(model, names, **{n: 1.0})) for n in names[:16]]
    tiles += [shot("jaw 0.3 rad", jaw=jaw_open),
              shot("eyelid L=1", eyelid=np.array([1.0, 0.0], np.float32)),
              shot("eyelid R=1", eyelid=np.array([0.0, 1.0], np.float32)),
              shot("smile+jaw 0.15", expression=_expr(model, names, smile=1.0),
                   jaw=np.array([0.15, 0.0, 0.0], np.float32))]
    p = out_dir / "standin_expressions.png"
    cv2.imwrite(str(p), sheet(tiles, 5), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    paths.append(p)

    # data-driven expression components at +-2
    tiles = []
    for k in range(4):
        i = names.index(f"data_pc{k + 1}")
        for s in (-2.0, 2.0):
            e = np.zeros(50, np.float32)
            e[i] = s
            tiles.append(shot(f"data_pc{k + 1} = {s:+.0f}", expression=e))
    p = out_dir / "standin_data_expressions.png"
    cv2.imwrite(str(p), sheet(tiles, 4), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    paths.append(p)
    return paths
