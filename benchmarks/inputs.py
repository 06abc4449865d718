"""Benchmark inputs: the synthetic 720p frame, video sequences, image and video files.

The **720p frame** is what a camera delivers: a 1280 x 720 BGR frame with one face of a realistic
size (:data:`FACE_HEIGHT` px) on a background. It is made by pasting a real face photo (from the
command line, else the first UTKFace photo of ``../shared/data``) on a smooth textured background
(seeded, so every process makes the same frame). Without any photo (CI, a fresh clone) a drawn
stand-in face is used and the rows say so (``input`` = ``720p-synthetic``).

The **video** is the same composition with the face moving on a slow Lissajous path (a few pixels
per frame, as a person in front of a camera), :data:`VIDEO_FRAMES` distinct frames played in a
loop. A video file (``--input clip.mp4``) is read with OpenCV instead.

Every function returns the frames *and* the box where the face was placed (x0, y0, x1, y1 image
pixels): the harness falls back to it when the detector finds no face (the drawn stand-in), so
the stages after detection are still measured; the rows then say ``crop_source`` = ``placement box``.

numpy + OpenCV only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

WIDTH, HEIGHT = 1280, 720
FACE_HEIGHT = 300
"""Height in pixels of the pasted face photo in the 720p frame (a person ~1 m from a webcam)."""
VIDEO_FRAMES = 48
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")


@dataclass
class BenchInput:
    """Frames to run and what they are.

    ``frames``: list of ``(H, W, 3)`` uint8 BGR arrays (cycled when more runs are asked for).
    ``boxes``: for each frame the placement box of the face ``(4,)`` or None (real files).
    ``name``: row label (``720p``, ``720p-synthetic``, ``files``, ``video:clip.mp4``).
    ``source``: the photo or file(s) it was made from (for the report).
    """

    frames: list[np.ndarray]
    boxes: list[np.ndarray | None]
    name: str
    source: str
    files: list[str] = field(default_factory=list)

    def describe(self) -> dict:
        h, w = self.frames[0].shape[:2]
        return {"name": self.name, "source": self.source, "frames": len(self.frames), "width": w, "height": h}


def data_root() -> Path | None:
    """``$SMIRK_EDGE_DATA`` or ``../shared/data`` beside the repository, when it exists."""
    env = os.environ.get("SMIRK_EDGE_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[1].parent / "shared" / "data")
    for c in candidates:
        if c.is_dir():
            return c
    return None


def default_face_photo() -> Path | None:
    """A real face photo from the shared data (first UTKFace file by name), or None."""
    root = data_root()
    if root is None:
        return None
    for sub in ("faces/utkface", "faces/expressive", "faces"):
        folder = root / sub
        if folder.is_dir():
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if files:
                return files[0]
    return None


def background(width: int = WIDTH, height: int = HEIGHT, seed: int = 0) -> np.ndarray:
    """A seeded, smooth but textured BGR background (gradient + blurred noise), ``(H, W, 3)`` uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([90 + 60 * xx / width, 110 + 40 * yy / height, 130 - 30 * xx / width], -1)
    noise = cv2.GaussianBlur(rng.normal(0, 40, (height // 8, width // 8, 3)).astype(np.float32), (0, 0), 2)
    noise = cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def drawn_face(size: int = 256) -> np.ndarray:
    """A drawn stand-in face (no real photo available): skin ellipse, eyes, brows, nose, mouth."""
    img = np.full((size, size, 3), (170, 190, 200), np.uint8)
    c = size // 2
    cv2.ellipse(img, (c, c), (int(size * 0.34), int(size * 0.44)), 0, 0, 360, (120, 160, 210), -1, cv2.LINE_AA)
    for dx in (-1, 1):
        ex = c + dx * int(size * 0.14)
        cv2.ellipse(img, (ex, int(size * 0.42)), (int(size * 0.07), int(size * 0.035)), 0, 0, 360, (250, 250, 250), -1)
        cv2.circle(img, (ex, int(size * 0.42)), int(size * 0.025), (40, 30, 30), -1)
        cv2.line(img, (ex - int(size * 0.08), int(size * 0.35)), (ex + int(size * 0.08), int(size * 0.34)),
                 (40, 50, 70), max(2, size // 60))
    cv2.line(img, (c, int(size * 0.45)), (c - int(size * 0.03), int(size * 0.6)), (90, 120, 170), max(2, size // 80))
    cv2.ellipse(img, (c, int(size * 0.72)), (int(size * 0.12), int(size * 0.04)), 0, 0, 360, (80, 80, 170), -1)
    return img


def _read(path: str | os.PathLike) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"cannot read image {path}")
    return img


def compose(face: np.ndarray, centre: tuple[float, float], face_height: int = FACE_HEIGHT,
            bg: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Paste ``face`` (scaled to ``face_height`` px tall) centred at ``centre`` on the 720p background.

    Returns the frame and the pasted rectangle ``(x0, y0, x1, y1)`` (float64).
    """
    frame = background() if bg is None else bg.copy()
    h, w = face.shape[:2]
    k = face_height / h
    fw, fh = max(1, int(round(w * k))), face_height
    scaled = cv2.resize(face, (fw, fh), interpolation=cv2.INTER_LINEAR if k > 1 else cv2.INTER_AREA)
    x0 = int(round(centre[0] - fw / 2))
    y0 = int(round(centre[1] - fh / 2))
    H, W = frame.shape[:2]
    fx0, fy0 = max(0, -x0), max(0, -y0)
    x0c, y0c = max(0, x0), max(0, y0)
    x1c, y1c = min(W, x0 + fw), min(H, y0 + fh)
    frame[y0c:y1c, x0c:x1c] = scaled[fy0:fy0 + (y1c - y0c), fx0:fx0 + (x1c - x0c)]
    return frame, np.array([x0, y0, x0 + fw, y0 + fh], np.float64)


def _placement_box(rect: np.ndarray, drawn: bool) -> np.ndarray:
    """The face's landmark-like box inside the pasted rectangle (aligned crops: ~the central 80 %)."""
    x0, y0, x1, y1 = rect
    f = 0.6 if drawn else 0.8
    cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) * f, (y1 - y0) * f
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


def synthetic_720p(face_photo: str | os.PathLike | None = None, video: bool = False,
                   frames: int = VIDEO_FRAMES) -> BenchInput:
    """The 720p frame (or a ``frames``-long moving-face sequence when ``video``)."""
    photo = Path(face_photo) if face_photo else default_face_photo()
    if photo is not None:
        face, name, source, drawn = _read(photo), "720p", str(photo.name), False
    else:
        face, name, source, drawn = drawn_face(), "720p-synthetic", "drawn stand-in face (no photo found)", True
    bg = background()
    n = frames if video else 1
    out, boxes = [], []
    for i in range(n):
        t = 2 * np.pi * i / max(n, 1)
        centre = (WIDTH * 0.5 + (40 * np.sin(t) if video else 0.0), HEIGHT * 0.5 + (15 * np.sin(2 * t) if video else 0.0))
        fr, rect = compose(face, centre, FACE_HEIGHT, bg)
        out.append(fr)
        boxes.append(_placement_box(rect, drawn))
    return BenchInput(out, boxes, name + ("-video" if video else ""), source)


def from_files(paths: list[str], paste: bool = True, video: bool = False) -> BenchInput:
    """Image files (pasted on the 720p background, or ``paste=False`` as they are) or one video file."""
    p0 = Path(paths[0])
    if p0.suffix.lower() in VIDEO_SUFFIXES:
        cap = cv2.VideoCapture(str(p0))
        frames = []
        while len(frames) < 300:
            ok, fr = cap.read()
            if not ok:
                break
            frames.append(fr)
        cap.release()
        if not frames:
            raise ValueError(f"cannot read frames from video {p0}")
        return BenchInput(frames, [None] * len(frames), f"video:{p0.name}", str(p0), [str(p0)])
    if paste:
        if len(paths) == 1:
            inp = synthetic_720p(paths[0], video=video)
            inp.files = [str(p0)]
            return inp
        frames, boxes = [], []
        for p in paths:
            fr, rect = compose(_read(p), (WIDTH / 2, HEIGHT / 2))
            frames.append(fr)
            boxes.append(_placement_box(rect, False))
        return BenchInput(frames, boxes, "720p-files", ", ".join(Path(p).name for p in paths[:4]), list(paths))
    frames = [_read(p) for p in paths]
    return BenchInput(frames, [None] * len(frames), "files", ", ".join(Path(p).name for p in paths[:4]), list(paths))


def make_input(spec: list[str] | None, mode: str = "image", face_photo: str | None = None,
               paste: bool = True) -> BenchInput:
    """The harness's ``--input``: ``['720p']`` (default) or file paths."""
    if not spec or spec == ["720p"]:
        return synthetic_720p(face_photo, video=(mode == "video"))
    return from_files(spec, paste=paste, video=(mode == "video"))
