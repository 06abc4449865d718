"""Two real faces pass each other in a composed clip: each keeps its track id the whole way.

The faces are UTKFace photos from ../shared/data (real faces, synthetic motion: the 26 real clips
have one face each). Skips with the reason when the data or ONNX Runtime is absent."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from factories import data_root

pytestmark = [pytest.mark.data, pytest.mark.onnxruntime]

SIZE = 170  # pasted face photo side (px)


def _faces():
    root = data_root()
    folder = None if root is None else root / "faces" / "utkface"
    if folder is None or not folder.is_dir():
        pytest.skip("needs ../shared/data/faces/utkface (or SMIRK_EDGE_DATA)")
    names = ["25_0_0_20170117151104335.jpg.chip.jpg", "30_1_0_20170103182547386.jpg.chip.jpg"]
    paths = [folder / n for n in names]
    if not all(p.is_file() for p in paths):
        paths = sorted(folder.glob("2*_*.jpg"))[:2]
    return [cv2.resize(cv2.imread(str(p), cv2.IMREAD_COLOR), (SIZE, SIZE), interpolation=cv2.INTER_AREA)
            for p in paths]


def _clip(faces, frames=30, width=720, height=400):
    """Face 0 moves left -> right along the top, face 1 right -> left lower down: they pass at the
    middle frame with their boxes overlapping."""
    bg = np.full((height, width, 3), 96, np.uint8)
    out, truth = [], []
    for t in range(frames):
        a = t / (frames - 1)
        xs = [int(30 + a * (width - SIZE - 60)), int(width - SIZE - 30 - a * (width - SIZE - 60))]
        ys = [40, 40 + int(0.55 * SIZE)]
        img = bg.copy()
        centres = []
        for face, x, y in zip(faces, xs, ys):
            img[y:y + SIZE, x:x + SIZE] = face
            centres.append((x + SIZE / 2, y + SIZE / 2))
        out.append(img)
        truth.append(np.array(centres))
    return out, truth


def test_two_faces_keep_their_track_ids_through_a_crossing():
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install 'smirk-edge[onnxruntime]')")
    from smirk_edge import Reconstructor

    frames, truth = _clip(_faces())
    owner: dict[int, int] = {}  # track id -> which face it followed first
    seen, last_third = 0, []
    with Reconstructor(backend="onnxruntime", precision="fp32", max_faces=2, threads=2) as rec:
        for i, (res, centres) in enumerate(zip(rec.stream(frames), truth)):
            assert not res.errors, res.errors
            for f in res:
                c = np.array([(f.box[0] + f.box[2]) / 2, (f.box[1] + f.box[3]) / 2])
                d = np.linalg.norm(centres - c, axis=1)
                face = int(np.argmin(d))
                assert d[face] < 0.35 * SIZE, f"frame {i}: a face away from both faces ({c})"
                first = owner.setdefault(f.track_id, face)
                assert first == face, f"frame {i}: track {f.track_id} jumped from face {first} to face {face}"
                seen += 1
            if i >= 2 * len(frames) // 3:
                last_third.append(sorted(f.track_id for f in res))
    # while the boxes overlap the detector (NMS) may see one face; both are back, with their ids, after
    assert seen >= 2 * len(frames) - 8, f"{seen} faces in {len(frames)} frames of two faces"
    assert len(owner) == 2, f"track ids {owner}: a face got a new track"
    assert all(ids == sorted(owner) for ids in last_third), last_third
