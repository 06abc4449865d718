"""Training data: annotated image folders, packed shards, mixing, splits and SMIRK's augmentation.

Every dataset here returns the same item (``V`` = views, ``S`` = crop side, 224 by default)::

    image         (V, 3, S, S) float32 RGB in [0, 1]   (the encoder's input)
    landmarks478  (V, 478, 2) float32 NDC               (MediaPipe points; the hull of the masking)
    landmarks105  (V, 105, 2) float32 NDC               (SMIRK's MediaPipe-indexed points)
    landmarks68   (V, 68, 2)  float32 NDC               (first 17 = jaw contour)
    valid         (V,) float32                          (1 where the landmarks are usable)
    source        () int64  index of the source in the mixture
    index         () int64  face index within its source

Coordinate convention (one for targets, masks and the SDK). A crop is made with SMIRK's
similarity transform (:func:`smirk_edge.crop.transform_from_square`): the square's corners go to
crop pixels 0 and ``S - 1`` (SMIRK's skimage/OpenCV convention: pixel centres at integers). Crop
pixels become NDC by ``ndc = px / (S / 2) - 1``, i.e. ``px = (ndc + 1) * S / 2`` — exactly the
inverse the SDK applies at run time (:func:`smirk_edge.camera.ndc_to_pixels` then
:meth:`CropTransform.to_image`) and the normalisation SMIRK's own data loader uses, so a trained
model's landmarks land back on the image without offset. The differentiable renderer samples pixel
``j`` at NDC ``-1 + (2j + 1) / S`` (pytorch3d's convention, as in SMIRK), half a pixel away from
this landmark convention; SMIRK has the same half-pixel difference between its render and its
landmarks, and the generator learns it. (The square side maps to ``S - 1`` crop pixels while NDC
+-1 spans ``S``: a 0.45 % scale difference SMIRK has too; keeping SMIRK's crop keeps the released
weights and ours interchangeable.)

Sources: :class:`FaceTable` holds per-face landmarks and an image reader (an image folder +
annotation folder from ``smirk-edge annotate``, or packed shards). :class:`FaceCropDataset`
crops and augments; :class:`MixedDataset` + :class:`MixtureSampler` mix sources with weights
(deterministically, resumable, DDP-aware). :func:`pack_shards` writes compact JPEG shards for the
GPU machine (see ``docs/training.md``).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import cv2
import numpy as np

from smirk_edge.crop import square_from_box, transform_from_square
from smirk_edge.errors import InputError
from smirk_edge.face_model import MEDIAPIPE_105_INDICES

N_MP = 478
SHARD_FORMAT = "smirk-edge-shards"
SHARD_VERSION = 2  # 2 adds depth478 (MediaPipe depth, float16 crop pixels) and real68 (annotated 68 points)
SPLIT_FORMAT = "smirk-edge-split"
#: Landmark quantisation in shards: ``q = round((px + OFFSET) * SCALE)`` as uint16.
Q_OFFSET, Q_SCALE = 256.0, 32.0


class DataError(InputError):
    """A data source, split file or shard folder that cannot be used."""


# ------------------------------------------------------------------------------------- conventions


def crop_px_to_ndc(px: np.ndarray, size: int) -> np.ndarray:
    """Crop pixels (centres at integers) -> NDC: ``px / (size / 2) - 1``."""
    return np.asarray(px, np.float32) / (size / 2.0) - 1.0


def ndc_to_crop_px(ndc, size: int):
    """NDC -> crop pixels: ``(ndc + 1) * size / 2`` (numpy or torch)."""
    return (ndc + 1.0) * (size / 2.0)


# ------------------------------------------------------------------------------------- face tables


@dataclass
class FaceTable:
    """Per-face training labels of one source, all in the pixels of the images ``read`` returns.

    Attributes:
        names: ``(N,)`` str, stable names (annotation paths relative to the annotation root).
        landmarks478: ``(N, 478, 2)`` float32 pixels (x right, y down, centres at integers).
        landmarks68: ``(N, 68, 2)`` float32 pixels.
        read: ``read(i) -> (H, W, 3) uint8 BGR`` image of face ``i``.
        label: a short name for logs.
        depth478: ``(N, 478)`` float32 MediaPipe depth in the same pixels (smaller = closer), or None;
            what 3D profiling (:func:`~smirk_edge.training.photo_augment.profile`) rotates.
        real68: ``(N, 68)`` bool, True where ``landmarks68`` is a human annotation (300-W) rather
            than derived from the MediaPipe mesh, or None (all derived).
    """

    names: np.ndarray
    landmarks478: np.ndarray
    landmarks68: np.ndarray
    read: Callable[[int], np.ndarray]
    label: str = "faces"
    depth478: np.ndarray | None = None
    real68: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.names)

    @property
    def landmarks105(self) -> np.ndarray:
        """``(N, 105, 2)`` = ``landmarks478[:, MEDIAPIPE_105_INDICES]`` (the annotation's definition)."""
        return self.landmarks478[:, MEDIAPIPE_105_INDICES]

    def select(self, keep: np.ndarray) -> "FaceTable":
        """A sub-table of the faces ``keep`` (indices or a boolean mask)."""
        idx = np.flatnonzero(keep) if np.asarray(keep).dtype == bool else np.asarray(keep, np.int64)
        base = self.read
        return FaceTable(self.names[idx], self.landmarks478[idx], self.landmarks68[idx],
                         lambda i, _b=base, _m=idx: _b(int(_m[i])), self.label,
                         None if self.depth478 is None else self.depth478[idx],
                         None if self.real68 is None else self.real68[idx])


def _read_image(path: str) -> np.ndarray:
    from ..errors import InputError
    from ..image import load_image

    try:
        return load_image(path)
    except InputError as exc:
        raise DataError(f"cannot read image {path} (missing, corrupt or too large): {exc}") from None


def table_from_annotations(annotations: str | os.PathLike, image_root: str | os.PathLike | None = None,
                           label: str | None = None) -> FaceTable:
    """The found faces (largest per image) of an annotation folder written by ``smirk-edge annotate``.

    Args:
        annotations: annotation folder (``index.json`` + shards).
        image_root: folder the annotation paths are relative to (default: the index's ``root``).
    """
    from .annotate import load_annotations, read_index

    folder = Path(annotations)
    if not (folder / "index.json").is_file():
        raise DataError(f"{folder} is not an annotation folder (no index.json); run smirk-edge annotate first")
    idx = read_index(folder)
    root = Path(image_root) if image_root is not None else Path(idx["root"])
    data = load_annotations(folder)
    found = np.asarray(data["found"], bool)
    lm478 = np.asarray(data["landmarks478"][found, 0, :, :2], np.float32)
    depth = np.asarray(data["landmarks478"][found, 0, :, 2], np.float32)
    lm68 = np.asarray(data["landmarks68"][found, 0, :, :2], np.float32)
    names = np.asarray(data["path"][found]).astype(str)
    ok = np.isfinite(lm478).all((1, 2)) & np.isfinite(lm68).all((1, 2)) & np.isfinite(depth).all(1)
    names, lm478, lm68, depth = names[ok], lm478[ok], lm68[ok], depth[ok]
    root_s = str(root)
    return FaceTable(names, lm478, lm68, lambda i: _read_image(os.path.join(root_s, str(names[i]))),
                     label or folder.name, depth)


def read_landmarks68_file(path: str | os.PathLike) -> np.ndarray:
    """The 68 annotated points ``(68, 2)`` of one face of ``../shared/data/landmarks68`` in 0-based
    crop pixels (pixel centres at integers).

    The JSON stores 300-W's ``.pts`` values as given, which are 1-based (Matlab) coordinates, mapped
    into the crop by ``(orig - [x0, y0]) * scale``; the 0-based point is ``crop - scale``.
    """
    p = Path(path)
    try:
        d = json.loads(p.read_text())
        pts = np.asarray(d["landmarks68"], np.float64)
        scale = float(d.get("scale", 1.0))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{p}: not a 68-point annotation file ({type(e).__name__})") from None
    if pts.shape != (68, 2) or not np.isfinite(pts).all():
        raise DataError(f"{p}: expected 68 finite (x, y) points, got shape {pts.shape}")
    return (pts - scale).astype(np.float32)


def with_annotated_68(table: FaceTable, folder: str | os.PathLike, image_root: str | os.PathLike) -> FaceTable:
    """``table``'s faces that lie in ``folder`` (a 300-W folder of ``NAME.jpg`` + ``NAME.json``), with
    their annotated 68 points in ``landmarks68`` and ``real68`` all True.

    ``table`` comes from :func:`table_from_annotations` over a root that contains ``folder``; the
    MediaPipe points stay (the crop box and the 105-point loss), the 68 become the human ones.
    """
    folder = Path(folder).resolve()
    root = Path(image_root).resolve()
    keep, pts = [], []
    for i, n in enumerate(table.names):
        full = (root / str(n)).resolve()
        if full.parent != folder:
            continue
        js = full.with_suffix(".json")
        if js.is_file():
            keep.append(i)
            pts.append(read_landmarks68_file(js))
    if not keep:
        raise DataError(f"no annotated face of {table.label} lies in {folder} (are the annotations made over "
                        f"a root that contains it?)")
    sub = table.select(np.asarray(keep, np.int64))
    sub.landmarks68 = np.stack(pts)
    sub.real68 = np.ones((len(keep), 68), bool)
    return sub


# ------------------------------------------------------------------------------------- splits


def annotated_68_subset(base: FaceTable, spec: str, root: str | os.PathLike, split: str | None = None
                        ) -> tuple[str, FaceTable]:
    """``(label, table)`` of a ``DIR[:SUBSET]`` 300-W spec: the faces of ``base`` annotated in DIR
    (:func:`with_annotated_68`), kept to SUBSET of the ``split`` file when one is named."""
    folder, _, part = str(spec).partition(":")
    table = with_annotated_68(base, folder, root)
    if part:
        if not split:
            raise DataError(f"{spec}: a subset needs a split file (--landmarks68-split)")
        keep = read_split(split, part)
        table = table.select(np.array([n in keep for n in table.names], bool))
    return Path(folder).name + (f":{part}" if part else ""), table


def make_split(names: Sequence[str], groups: Sequence[str] | None = None, val_fraction: float = 0.1,
               test_fraction: float = 0.0, seed: int = 0) -> dict:
    """Split ``names`` into train/val/test with every group (subject) in exactly one part.

    Args:
        names: item names (annotation paths).
        groups: ``(N,)`` group label per name (e.g. the subject); default: each name is its own group.
        val_fraction, test_fraction: approximate fractions of the GROUPS.
    Returns:
        ``{"format", "version", "seed", "train": [...], "val": [...], "test": [...]}`` (sorted lists).
    """
    names = [str(n) for n in names]
    groups = names if groups is None else [str(g) for g in groups]
    if len(groups) != len(names):
        raise DataError(f"{len(groups)} group labels for {len(names)} names")
    uniq = sorted(set(groups))
    rng = np.random.default_rng(seed)
    order = [uniq[i] for i in rng.permutation(len(uniq))]
    n_test = int(round(test_fraction * len(uniq)))
    n_val = int(round(val_fraction * len(uniq)))
    if test_fraction > 0 and n_test == 0 and len(uniq) > 2:  # at least one group per requested part
        n_test = 1
    if val_fraction > 0 and n_val == 0 and len(uniq) > n_test + 1:
        n_val = 1
    part = {g: "test" for g in order[:n_test]}
    part.update({g: "val" for g in order[n_test:n_test + n_val]})
    out: dict = {"format": SPLIT_FORMAT, "version": 1, "seed": seed, "train": [], "val": [], "test": []}
    for n, g in zip(names, groups):
        out[part.get(g, "train")].append(n)
    for k in ("train", "val", "test"):
        out[k].sort()
    return out


def subjects_from_csv(names: Sequence[str], csv_path: str | os.PathLike, name_column: str = "image",
                      subject_column: str = "subject") -> list[str]:
    """Group label per name: the csv's subject for names whose file name is in the csv, else the name.

    For ``faces/expressive.csv`` (columns image, emotion, colour, subject).
    """
    import csv

    table: dict[str, str] = {}
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            table[row[name_column]] = f"subject:{row[subject_column]}"
    return [table.get(os.path.basename(n), n) for n in names]


EMOTION_CLASSES = ("anger", "contempt", "disgust", "fear", "happiness", "neutral", "sadness", "surprise")


def read_emotion_labels(csv_path: str | os.PathLike, subjects: Sequence[str]) -> dict[str, int]:
    """File name -> index into :data:`EMOTION_CLASSES` for the rows of ``subjects`` in an
    ``expressive.csv``-style table (columns image, emotion, subject). Raises :class:`DataError` for a
    missing file or column, an unknown emotion, or a subject with no row."""
    import csv

    want = {str(s) for s in subjects}
    out: dict[str, int] = {}
    seen: set[str] = set()
    try:
        with open(csv_path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise DataError(f"cannot read emotion labels {csv_path}: {exc}") from exc
    for r in rows:
        if not {"image", "emotion", "subject"} <= set(r):
            raise DataError(f"{csv_path} needs the columns image, emotion and subject")
        if r["subject"] not in want:
            continue
        emo = r["emotion"].strip().lower()
        if emo not in EMOTION_CLASSES:
            raise DataError(f"{csv_path}: unknown emotion {emo!r} for {r['image']} (known: {', '.join(EMOTION_CLASSES)})")
        out[os.path.basename(r["image"])] = EMOTION_CLASSES.index(emo)
        seen.add(r["subject"])
    missing = sorted(want - seen)
    if missing:
        raise DataError(f"{csv_path} has no row for subject(s) {', '.join(missing)}")
    return out


def write_split(path: str | os.PathLike, split: Mapping) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(split, indent=1))
    return p


def read_split(path: str | os.PathLike, subset: str) -> set[str]:
    """Names listed under ``subset`` (train/val/test) in a split file."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"split file not found: {p}")
    d = json.loads(p.read_text())
    if d.get("format") != SPLIT_FORMAT or subset not in d:
        raise DataError(f"{p} is not a smirk-edge split file with a '{subset}' list")
    return set(d[subset])


# ------------------------------------------------------------------------------------- augmentation


@dataclass
class CropParams:
    """One crop: square ``centre (2,)`` / ``side`` in source pixels, ``angle`` degrees."""

    centre: np.ndarray
    side: float
    angle: float = 0.0


def sample_crop(box: np.ndarray, rng: np.random.Generator | None, cfg) -> CropParams:
    """SMIRK's crop of a landmark box ``(x0, y0, x1, y1)``: random scale/shift/rotation when ``rng``
    is given (training), else the deterministic test crop at ``cfg.test_scale`` (what the SDK does)."""
    if rng is None:
        centre, side = square_from_box(box, cfg.test_scale)
        return CropParams(centre, float(side))
    x0, y0, x1, y1 = (float(v) for v in box)
    size = ((x1 - x0) + (y1 - y0)) / 2.0
    side = size * rng.uniform(cfg.scale_min, cfg.scale_max)
    centre = np.array([(x0 + x1) / 2.0, (y0 + y1) / 2.0]) + rng.uniform(-cfg.shift, cfg.shift, 2) * side
    angle = rng.uniform(-cfg.rotation, cfg.rotation) if cfg.rotation > 0 else 0.0
    return CropParams(centre, max(side, 1.0), angle)


def jitter_colour(img: np.ndarray, rng: np.random.Generator, cfg) -> np.ndarray:
    """Colour augmentation of a float32 BGR image ``(H, W, 3)`` in [0, 1] (returns a new array)."""
    out = img * rng.uniform(1 - cfg.brightness, 1 + cfg.brightness)
    mean = out.mean()
    out = (out - mean) * rng.uniform(1 - cfg.contrast, 1 + cfg.contrast) + mean
    grey = out @ np.array([0.114, 0.587, 0.299], np.float32)
    out = grey[..., None] + (out - grey[..., None]) * rng.uniform(1 - cfg.saturation, 1 + cfg.saturation)
    out = out * rng.uniform(1 - cfg.channel_gain, 1 + cfg.channel_gain, 3).astype(np.float32)
    if rng.random() < cfg.grey:
        out = np.repeat((out @ np.array([0.114, 0.587, 0.299], np.float32))[..., None], 3, axis=2)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


# ------------------------------------------------------------------------------------- datasets


def _item_rng(key) -> tuple[int, np.random.Generator | None]:
    """Dataset keys are ``index`` (deterministic) or ``(index, seed_tuple)`` (augmented)."""
    if isinstance(key, (tuple, list)):
        index, seed = key
        return int(index), np.random.default_rng([int(s) for s in seed])
    return int(key), None


class FaceCropDataset:
    """SMIRK crops of a :class:`FaceTable` (a torch-style map dataset; see the module docstring).

    Args:
        table: faces and their landmarks.
        augment: :class:`~smirk_edge.training.config.CropAugmentConfig`.
        size: crop side ``S``.
        views: independent augmentations per item (1 or 2).
        train: augment; else every key gives the deterministic test crop.
        source: index reported in ``item["source"]``.
        emotion: ``(N,)`` int emotion class per face (-1: none), reported per view in ``item["emotion"]``.

    ``dataset[i]`` is the deterministic test crop; ``dataset[(i, seed)]`` an augmentation drawn from
    ``numpy.random.default_rng(seed)`` (what :class:`MixtureSampler` yields), so the same key gives
    the same item in any worker.
    """

    def __init__(self, table: FaceTable, augment=None, size: int = 224, views: int = 1, train: bool = True,
                 source: int = 0, emotion: np.ndarray | None = None):
        from .config import CropAugmentConfig

        self.table = table
        self.augment = augment or CropAugmentConfig()
        self.size = int(size)
        self.views = int(views)
        self.train = train
        self.source = source
        self.emotion = np.full(len(table), -1, np.int64) if emotion is None else np.asarray(emotion, np.int64)
        if len(self.emotion) != len(table):
            raise DataError(f"{len(self.emotion)} emotion labels for {len(table)} faces")
        lm = table.landmarks478
        self.boxes = np.stack([lm[..., 0].min(1), lm[..., 1].min(1), lm[..., 0].max(1), lm[..., 1].max(1)], 1) \
            if len(lm) else np.zeros((0, 4), np.float32)

    def __len__(self) -> int:
        return len(self.table)

    def crop(self, image: np.ndarray, i: int, rng: np.random.Generator | None) -> dict[str, np.ndarray]:
        """One view of face ``i`` from its decoded ``image``: numpy arrays of the item layout."""
        S = self.size
        aug = self.augment
        train = rng is not None and self.train
        cp = sample_crop(self.boxes[i], rng if self.train else None, aug)
        lm68_src = self.table.landmarks68[i]
        real = np.zeros(68, bool) if self.table.real68 is None else np.asarray(self.table.real68[i], bool)
        out = None
        if train and self.table.depth478 is not None and aug.profile > 0 and rng.random() < aug.profile:
            out = self._profiled(image, i, cp, rng)  # None when the face is turned too far already
        if out is not None:
            crop, lm478_px, lm68_px, real = out
        else:
            t = transform_from_square(cp.centre, cp.side, S, cp.angle)
            crop = t.warp(image).astype(np.float32) * (1.0 / 255.0)
            lm478_px = t.to_crop(self.table.landmarks478[i])
            lm68_px = t.to_crop(lm68_src)
        if train:
            from .photo_augment import occlude_and_degrade

            crop = occlude_and_degrade(crop, lm478_px, rng, aug)
            crop = jitter_colour(crop, rng, aug)
        rgb = np.ascontiguousarray(crop[..., ::-1].transpose(2, 0, 1))
        lm478 = crop_px_to_ndc(lm478_px, S)
        lm68 = crop_px_to_ndc(lm68_px, S)
        return {"image": rgb, "landmarks478": lm478, "landmarks105": lm478[MEDIAPIPE_105_INDICES],
                "landmarks68": lm68, "real68": real.astype(np.float32)}

    def _profiled(self, image: np.ndarray, i: int, cp: CropParams, rng: np.random.Generator):
        """The view of face ``i`` turned by 3D profiling (photo_augment.profile), cropped again with
        the same relative scale and shift around the turned face's landmark box. Returns ``(crop,
        lm478 px, lm68 px, real68)`` or None when the face is already turned too far."""
        from .annotate import derive_landmarks
        from .photo_augment import profile, sample_profile_angles, source_yaw

        S = self.size
        aug = self.augment
        big = int(round(1.5 * S))
        t0 = transform_from_square(cp.centre, cp.side * 1.5, big, cp.angle)
        P = np.concatenate([t0.to_crop(self.table.landmarks478[i]),
                            (self.table.depth478[i] * t0.scale)[:, None]], 1)
        dy, dp = sample_profile_angles(source_yaw(P), rng, aug.profile_max_yaw, max_pitch=aug.profile_max_pitch)
        if dy == 0.0:
            return None
        crop0 = t0.warp(image).astype(np.float32) * (1.0 / 255.0)
        pr = profile(crop0, P, dy, dp)
        new478 = pr.landmarks478.astype(np.float64)
        derived68 = derive_landmarks(new478[None])["landmarks68"][0, :, :2]
        real = np.zeros(68, bool) if self.table.real68 is None else np.asarray(self.table.real68[i], bool).copy()
        lm68 = derived68.astype(np.float64)
        if real.any():
            carried = pr.carry(t0.to_crop(self.table.landmarks68[i]))
            inner = np.zeros(68, bool)
            inner[17:] = True  # the annotated contour follows the visible outline at the photo's pose
            use = real & inner & np.isfinite(carried).all(1)
            lm68[use] = carried[use]
            real = use
        # the same crop policy around the turned face: relative scale and shift as drawn for the photo
        b0 = self.boxes[i]
        size0 = ((b0[2] - b0[0]) + (b0[3] - b0[1])) / 2.0
        shift = (cp.centre - np.array([(b0[0] + b0[2]) / 2, (b0[1] + b0[3]) / 2])) / max(cp.side, 1e-6)
        x0, y0 = new478[:, 0].min(), new478[:, 1].min()
        x1, y1 = new478[:, 0].max(), new478[:, 1].max()
        size1 = ((x1 - x0) + (y1 - y0)) / 2.0
        side1 = max(size1 * cp.side / max(size0, 1e-6), 1.0)
        centre1 = np.array([(x0 + x1) / 2, (y0 + y1) / 2]) + shift * side1
        t1 = transform_from_square(centre1, side1, S, 0.0)
        crop = t1.warp(pr.image)
        return crop, t1.to_crop(new478[:, :2]), t1.to_crop(lm68), real

    def __getitem__(self, key) -> dict:
        import torch

        i, rng = _item_rng(key)
        if not 0 <= i < len(self):
            raise IndexError(f"face {i} out of range 0..{len(self) - 1}")
        image = self.table.read(i)
        views = [self.crop(image, i, rng) for _ in range(self.views)]
        out = {k: torch.from_numpy(np.stack([v[k] for v in views])) for k in views[0]}
        out["valid"] = torch.ones(self.views)
        out["source"] = torch.tensor(self.source, dtype=torch.int64)
        out["index"] = torch.tensor(i, dtype=torch.int64)
        out["emotion"] = torch.full((self.views,), int(self.emotion[i]), dtype=torch.int64)
        return out


class MixedDataset:
    """Concatenation of several datasets; keys are global indices (or ``(index, seed)``)."""

    def __init__(self, datasets: Sequence, weights: Sequence[float] | None = None, names: Sequence[str] | None = None):
        if not datasets:
            raise DataError("no data sources")
        self.datasets = list(datasets)
        self.sizes = [len(d) for d in self.datasets]
        if any(s == 0 for s in self.sizes):
            empty = [names[i] if names else str(i) for i, s in enumerate(self.sizes) if s == 0]
            raise DataError(f"data source(s) with no faces: {', '.join(empty)}")
        self.weights = [float(w) for w in (weights or [1.0] * len(self.datasets))]
        self.names = list(names or [f"source{i}" for i in range(len(self.datasets))])
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, index: int) -> tuple[int, int]:
        s = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return s, int(index - self.offsets[s])

    def __getitem__(self, key):
        if isinstance(key, (tuple, list)):
            s, i = self.locate(int(key[0]))
            return self.datasets[s][(i, key[1])]
        s, i = self.locate(int(key))
        return self.datasets[s][i]


class MixtureSampler:
    """Weighted, seeded, resumable sampler over a :class:`MixedDataset` (DDP-aware).

    Each epoch draws ``epoch_size`` positions: a source with probability proportional to its weight,
    then the next face of that source's shuffled order (each source cycles through a fresh
    permutation, so a source is seen evenly). Position ``p`` goes to rank ``p % world_size``. Every
    key carries the seed ``(seed, epoch, p)`` of its augmentation, so the data do not depend on the
    number of loader workers and a resumed run sees the same items (``set_epoch(epoch, start)``).

    Yields ``(global_index, (seed, epoch, position))``.
    """

    def __init__(self, dataset: MixedDataset, epoch_size: int | None = None, seed: int = 0, rank: int = 0,
                 world_size: int = 1):
        self.sizes = dataset.sizes
        self.offsets = dataset.offsets
        w = np.asarray(dataset.weights, np.float64)
        self.probs = w / w.sum()
        self.epoch_size = int(epoch_size or sum(self.sizes))
        self.seed, self.rank, self.world = int(seed), int(rank), int(world_size)
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Draw ``epoch``'s order; skip this rank's first ``start`` samples (for resuming)."""
        self.epoch, self.start = int(epoch), int(start)

    def __len__(self) -> int:
        return self.epoch_size // self.world - self.start

    def order(self, epoch: int) -> np.ndarray:
        """``(epoch_size,)`` global indices of ``epoch`` (all ranks)."""
        rng = np.random.default_rng([self.seed, epoch, 7])
        src = rng.choice(len(self.sizes), size=self.epoch_size, p=self.probs)
        out = np.empty(self.epoch_size, np.int64)
        for s, n in enumerate(self.sizes):
            pos = np.flatnonzero(src == s)
            reps = math.ceil(len(pos) / n) if len(pos) else 0
            perm = np.concatenate([rng.permutation(n) for _ in range(reps)]) if reps else np.zeros(0, np.int64)
            out[pos] = self.offsets[s] + perm[:len(pos)]
        return out

    def __iter__(self) -> Iterator[tuple[int, tuple[int, int, int]]]:
        order = self.order(self.epoch)
        per_rank = self.epoch_size // self.world
        for k in range(self.start, per_rank):
            p = k * self.world + self.rank
            yield int(order[p]), (self.seed, self.epoch, p)


# ------------------------------------------------------------------------------------- shards


def _quantise(px: np.ndarray) -> np.ndarray:
    q = np.round((np.asarray(px, np.float64) + Q_OFFSET) * Q_SCALE)
    return np.clip(q, 0, 65535).astype(np.uint16)


def _dequantise(q: np.ndarray) -> np.ndarray:
    return (q.astype(np.float32) / Q_SCALE - Q_OFFSET).astype(np.float32)


@dataclass
class PackSummary:
    """What :func:`pack_shards` wrote. Sizes in bytes."""

    output: Path
    faces: int
    shards: list[str] = field(default_factory=list)
    bytes: int = 0
    seconds: float = 0.0


def pack_shards(table: FaceTable, output: str | os.PathLike, size: int = 192, margin: float = 2.2,
                quality: int = 90, shard_mib: float = 60.0, max_mib: float | None = None,
                source_name: str = "faces", progress: bool = True) -> PackSummary:
    """Write pre-cropped JPEG shards of ``table`` for the GPU machine.

    Each face is cut with SMIRK's square at ``margin`` times the 478-landmark box (2.2 leaves room
    for the training crops at scale up to 1.8 with shift and rotation), resized to ``size x size``,
    JPEG-encoded (``quality``) and stored with its 478 and 68 landmarks in that crop's pixels
    (uint16 fixed point, 1/32 px). A shard file never exceeds ``shard_mib`` MiB; packing stops
    once ``max_mib`` MiB are written. Files: ``shard-00000.npz`` ... + ``index.json``.
    Read them back with :func:`table_from_shards`.
    """
    import time

    from smirk_edge.progress import progress as bar

    t0 = time.perf_counter()
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    limit = shard_mib * (1 << 20)
    total_limit = max_mib * (1 << 20) if max_mib else float("inf")
    summary = PackSummary(out, 0)
    buf: dict[str, list] = {"jpeg": [], "names": [], "l478": [], "l68": [], "depth": [], "real": []}
    cur = 0
    entries = []
    lm = table.landmarks478
    boxes = np.stack([lm[..., 0].min(1), lm[..., 1].min(1), lm[..., 0].max(1), lm[..., 1].max(1)], 1)

    def flush():
        nonlocal cur
        if not buf["names"]:
            return
        name = f"shard-{len(summary.shards):05d}.npz"
        lens = np.array([len(b) for b in buf["jpeg"]], np.int64)
        arrays = {
            "jpeg": np.frombuffer(b"".join(buf["jpeg"]), np.uint8),
            "offsets": np.concatenate([[0], np.cumsum(lens)]).astype(np.int64),
            "names": np.array(buf["names"], dtype=np.str_),
            "landmarks478": np.stack(buf["l478"]),
            "landmarks68": np.stack(buf["l68"]),
            "size": np.int32(size),
        }
        if table.depth478 is not None:
            arrays["depth478"] = np.stack(buf["depth"]).astype(np.float16)
        if table.real68 is not None:
            arrays["real68"] = np.stack(buf["real"]).astype(np.uint8)
        tmp = out / (name + ".tmp.npz")
        np.savez_compressed(tmp, **arrays)
        os.replace(tmp, out / name)
        nbytes = (out / name).stat().st_size
        entries.append({"file": name, "faces": len(buf["names"]), "bytes": nbytes})
        summary.shards.append(name)
        summary.bytes += nbytes
        for v in buf.values():
            v.clear()
        cur = 0

    per_face_overhead = (N_MP + 68) * 4 + N_MP * 2 + 64
    for i in bar(range(len(table)), total=len(table), desc="pack", enabled=progress):
        try:
            img = table.read(i)
        except InputError:
            continue
        centre, side = square_from_box(boxes[i], margin)
        t = transform_from_square(centre, side, size)
        ok, enc = cv2.imencode(".jpg", t.warp(img), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        if not ok:
            continue
        data = enc.tobytes()
        need = len(data) + per_face_overhead
        if summary.bytes + cur + need > total_limit:
            break
        if cur + need > limit:
            flush()
        buf["jpeg"].append(data)
        buf["names"].append(str(table.names[i]))
        buf["l478"].append(_quantise(t.to_crop(table.landmarks478[i])))
        buf["l68"].append(_quantise(t.to_crop(table.landmarks68[i])))
        if table.depth478 is not None:
            buf["depth"].append(table.depth478[i] * t.scale)
        if table.real68 is not None:
            buf["real"].append(table.real68[i])
        cur += need
        summary.faces += 1
    flush()
    index = {"format": SHARD_FORMAT, "version": SHARD_VERSION, "source": source_name, "size": size,
             "margin": margin, "quality": quality, "faces": summary.faces, "bytes": summary.bytes,
             "landmark_quantisation": {"offset": Q_OFFSET, "scale": Q_SCALE}, "shards": entries}
    (out / "index.json").write_text(json.dumps(index, indent=1))
    summary.seconds = time.perf_counter() - t0
    return summary


def table_from_shards(folder: str | os.PathLike, label: str | None = None) -> FaceTable:
    """Read every shard of a folder written by :func:`pack_shards` (JPEG bytes stay encoded in memory)."""
    folder = Path(folder)
    idx_path = folder / "index.json"
    if not idx_path.is_file():
        raise DataError(f"{folder} is not a shard folder (no index.json); write one with smirk-edge pack")
    index = json.loads(idx_path.read_text())
    if index.get("format") != SHARD_FORMAT or int(index.get("version", 0)) > SHARD_VERSION:
        raise DataError(f"{idx_path} is not a {SHARD_FORMAT} v{SHARD_VERSION} index")
    blobs, offsets, names, l478, l68, depth, real = [], [], [], [], [], [], []
    base = 0
    for e in index["shards"]:
        with np.load(folder / e["file"], allow_pickle=False) as z:
            blobs.append(z["jpeg"])
            offsets.append(z["offsets"][:-1] + base)
            base += len(z["jpeg"])
            names.append(z["names"])
            l478.append(_dequantise(z["landmarks478"]))
            l68.append(_dequantise(z["landmarks68"]))
            n_faces = len(z["names"])
            depth.append(z["depth478"].astype(np.float32) if "depth478" in z.files else None)
            real.append(z["real68"].astype(bool) if "real68" in z.files else np.zeros((n_faces, 68), bool))
    if not blobs:
        raise DataError(f"{folder} holds no shards")
    data = np.concatenate(blobs)
    starts = np.concatenate(offsets)
    ends = np.concatenate([starts[1:], [len(data)]])

    def read(i: int) -> np.ndarray:
        img = cv2.imdecode(data[starts[i]:ends[i]], cv2.IMREAD_COLOR)
        if img is None:
            raise DataError(f"corrupt JPEG for face {i} in {folder}")
        return img

    depth478 = None if any(d is None for d in depth) else np.concatenate(depth)
    real68 = np.concatenate(real) if any(r.any() for r in real) else None
    return FaceTable(np.concatenate(names).astype(str), np.concatenate(l478), np.concatenate(l68), read,
                     label or index.get("source", folder.name), depth478, real68)


# ------------------------------------------------------------------------------------- building


def build_table(src) -> FaceTable:
    """The :class:`FaceTable` of a ``folder`` or ``shards`` :class:`~smirk_edge.training.config.SourceConfig`,
    after its split and limit."""
    if src.kind == "folder":
        table = table_from_annotations(src.annotations, src.path, src.name)
        if src.landmarks68:
            from .annotate import read_index

            root = src.path or read_index(src.annotations)["root"]
            table = with_annotated_68(table, src.landmarks68, root)
    elif src.kind == "shards":
        table = table_from_shards(src.path, src.name)
    else:
        raise DataError(f"build_table does not handle source kind {src.kind!r}")
    if src.split:
        keep = read_split(src.split, src.subset)
        table = table.select(np.array([n in keep for n in table.names], bool))
    if src.limit is not None:
        table = table.select(np.arange(min(src.limit, len(table))))
    return table


def build_dataset(data_cfg, train: bool = True, face_model_path: str | None = None) -> MixedDataset:
    """The :class:`MixedDataset` of a :class:`~smirk_edge.training.config.DataConfig`."""
    datasets, weights, names = [], [], []
    labels = read_emotion_labels(data_cfg.emotion_csv, data_cfg.emotion_subjects) \
        if getattr(data_cfg, "emotion_csv", None) else {}
    for k, src in enumerate(data_cfg.sources):
        if src.kind == "synthetic":
            from .synthetic import SyntheticDataset

            ds = SyntheticDataset(src.size, size=data_cfg.image_size, views=data_cfg.views,
                                  face_model_path=src.path or face_model_path, source=k, seed=1000 + k)
        else:
            table = build_table(src)
            emotion = np.array([labels.get(os.path.basename(str(n)), -1) for n in table.names], np.int64)
            ds = FaceCropDataset(table, data_cfg.augment, data_cfg.image_size, data_cfg.views,
                                 train=train, source=k, emotion=emotion)
        datasets.append(ds)
        weights.append(src.weight)
        names.append(src.name or f"{src.kind}:{src.path or src.annotations}")
    return MixedDataset(datasets, weights, names)


class FixedDataset:
    """Items computed once (deterministic key ``i`` of ``base``) and returned for any key.

    Keys ``(i, seed)`` ignore the seed: a fixed batch for overfitting tests and for evaluation.
    """

    def __init__(self, base, indices: Sequence[int] | None = None):
        idx = range(len(base)) if indices is None else indices
        self.items = [base[int(i)] for i in idx]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key):
        i = int(key[0]) if isinstance(key, (tuple, list)) else int(key)
        return self.items[i]
