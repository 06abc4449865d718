"""Real face crops for calibration and accuracy checks, and the one calibration-data contract.

**Crops** (:func:`collect_crops`): every image of a folder (recursively; jpg/jpeg/png/bmp/webp)
is read as BGR uint8, its face found, and the face cropped exactly as the SDK crops at run time
(:mod:`smirk_edge.crop`: SMIRK's square around the landmark box, ``scale`` 1.4, 224 x 224,
bilinear). Never random tensors: int8 ranges and accuracy numbers depend on the real input
distribution.

Finding the face:

* ``face="detect"`` (default when :mod:`smirk_edge.detector` and its BlazeFace models are
  available): the best BlazeFace box is taken as the landmark box. On aligned crops its box is
  about the extent of the face mesh (forehead to chin, cheek to cheek; checked by eye on UTKFace and
  the expressive set), which is what SMIRK's policy squares. Images without a detection are skipped
  (counted in :attr:`CropSet.skipped`), or centred with ``no_face="centre"``.
* ``face="centre"`` (the documented fallback for *aligned* face photos such as UTKFace, used when
  the detector is unavailable): the landmark box is the centred square of side
  :data:`CENTRE_BOX_FRACTION` x ``min(h, w)``. The fraction is measured: the median BlazeFace box
  on 199 of the 200 x 200 UTKFace crops spans [0.016, 0.011, 0.988, 0.983] of the image (one had
  no detection), i.e. a centred square of ~0.97 of the side.

**Contract** (STYLE #8): calibration data is an iterable of *feed dicts*
``{"image": float32 (B, 3, 224, 224)}`` (:meth:`CropSet.feeds`). Adapters:
:func:`ort_reader` (ONNX Runtime ``CalibrationDataReader``), :func:`nncf_dataset` (NNCF
``Dataset`` for OpenVINO), and for TensorRT the Q/DQ flow (the int8 engine is built from the
calibrated QDQ ONNX, so it needs no calibrator of its own).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from smirk_edge._lazy import require
from smirk_edge.crop import (CROP_SIZE, DEFAULT_SCALE, crop_from_box, landmark_box_from_detection, square_from_box,
                             to_tensor, transform_from_square)
from smirk_edge.errors import InputError

from .metadata import INPUT_NAME

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
CENTRE_BOX_FRACTION = 0.97
MIN_CALIBRATION_CROPS = 300
Feed = Mapping[str, np.ndarray]


class CalibrationWarning(UserWarning):
    """Too few calibration crops for stable int8 ranges (fewer than 300)."""


@dataclass
class CropSet:
    """Face crops made by the SDK's preprocessing.

    Attributes:
        crops: ``(N, 224, 224, 3)`` uint8 BGR.
        sources: ``N`` image paths (relative to ``root``).
        root: the folder they came from.
        method: how faces were found: ``'detect'``, ``'centre'``, ``'synthetic'`` or ``'mixed'``.
        scale: crop scale used.
        skipped: images without a usable face (or unreadable).
    """

    crops: np.ndarray
    sources: list[str] = field(default_factory=list)
    root: str = ""
    method: str = "detect"
    scale: float = DEFAULT_SCALE
    skipped: int = 0

    def __post_init__(self) -> None:
        c = np.asarray(self.crops)
        if c.ndim != 4 or c.shape[1:] != (CROP_SIZE, CROP_SIZE, 3) or c.dtype != np.uint8:
            raise InputError(f"crops must be uint8 (N, {CROP_SIZE}, {CROP_SIZE}, 3), got {c.dtype} {c.shape}")
        self.crops = c
        if not self.sources:
            self.sources = [f"#{i}" for i in range(len(c))]

    def __len__(self) -> int:
        return int(self.crops.shape[0])

    def subset(self, index: slice | np.ndarray | list[int]) -> CropSet:
        idx = np.arange(len(self))[index]
        return CropSet(self.crops[idx], [self.sources[i] for i in idx], self.root, self.method, self.scale, 0)

    def split(self, holdout: int) -> tuple[CropSet, CropSet]:
        """``(held_back, rest)``: the first ``holdout`` crops for accuracy checks, the rest for calibration.

        Crops are already in a seeded random order (:func:`collect_crops`), so the two are disjoint
        random subsets.
        """
        holdout = min(int(holdout), len(self))
        return self.subset(slice(0, holdout)), self.subset(slice(holdout, None))

    def tensor(self) -> np.ndarray:
        """All crops as the encoder input ``(N, 3, 224, 224)`` float32 RGB in [0, 1]."""
        return to_tensor(self.crops) if len(self) else np.zeros((0, 3, CROP_SIZE, CROP_SIZE), np.float32)

    def feeds(self, batch: int = 1) -> FeedList:
        """The calibration contract: feed dicts ``{"image": (b, 3, 224, 224) float32}``, re-iterable."""
        return FeedList(self.crops, batch)

    def describe(self) -> dict[str, Any]:
        return {"count": len(self), "root": self.root, "method": self.method, "scale": self.scale,
                "skipped": self.skipped}


class FeedList:
    """A re-iterable, sized sequence of feed dicts over uint8 crops (converted on the fly)."""

    def __init__(self, crops: np.ndarray, batch: int = 1):
        if batch < 1:
            raise InputError(f"batch must be >= 1, got {batch}")
        self.crops, self.batch = crops, int(batch)

    def __len__(self) -> int:
        return (len(self.crops) + self.batch - 1) // self.batch

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        return {INPUT_NAME: to_tensor(self.crops[i * self.batch:(i + 1) * self.batch])}

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for i in range(len(self)):
            yield self[i]



def _read_or_none(path) -> np.ndarray | None:
    """An upright BGR image (EXIF applied, size budget checked, any file name), or None."""
    from smirk_edge.errors import InputError as _InputError
    from smirk_edge.image import load_image

    try:
        return load_image(path)
    except _InputError:
        return None

def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files under ``folder`` (recursive), sorted by path."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"calibration folder not found: {root}")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def centre_box(height: int, width: int, fraction: float = CENTRE_BOX_FRACTION) -> np.ndarray:
    """The documented landmark box of an *aligned* face photo: centred square ``(x0, y0, x1, y1)``."""
    side = fraction * min(height, width)
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    return np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2])


def default_face_finder() -> tuple[str, Callable[[np.ndarray], np.ndarray | None] | None]:
    """``('detect', finder)`` with the BlazeFace detector when it can run here, else ``('centre', None)``."""
    try:
        from smirk_edge.detector import FaceDetector

        det = FaceDetector()
        det.detect(np.zeros((64, 64, 3), np.uint8))  # opens the models now, not per image
    except Exception as exc:  # noqa: BLE001 - any failure means: use the documented fallback
        log.info("face detector unavailable (%s); calibration uses the centred box for aligned photos", exc)
        return "centre", None

    def find(image: np.ndarray) -> np.ndarray | None:
        d = det.detect(image)
        # the same detection -> landmark-box step the Reconstructor uses (calibrated, docs/crop.md)
        return landmark_box_from_detection(d.boxes[0].astype(np.float64)) if len(d) else None

    return "detect", find


def _progress(iterable: Iterable, total: int, desc: str, enabled: bool) -> Iterable:
    if not enabled:
        return iterable
    try:
        tqdm = require("tqdm").tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=desc, unit="img", leave=False)


def collect_crops(folder: str | os.PathLike, limit: int | None = None, face: str = "auto",
                  no_face: str = "skip", scale: float = DEFAULT_SCALE, seed: int = 0,
                  progress: bool = True, finder: Callable[[np.ndarray], np.ndarray | None] | None = None
                  ) -> CropSet:
    """Face crops from the images of ``folder``, in a seeded random order.

    Args:
        folder: a folder of photos (searched recursively).
        limit: stop after this many crops (None: all images).
        face: ``'auto'`` (detector if available, else centred box), ``'detect'`` (require the
            detector) or ``'centre'`` (aligned photos: the documented centred box).
        no_face: when the detector finds nothing: ``'skip'`` the image or use the ``'centre'`` box.
        scale: crop scale (SMIRK demo 1.4; the SDK's default).
        seed: order of the images (the split into held-back and calibration crops follows it).
        progress: show a tqdm progress bar (when tqdm is installed).
        finder: custom ``image -> box or None`` (overrides ``face``; for tests and other detectors).
    Raises:
        InputError: missing folder, unknown option, or no usable image at all.
    """
    if face not in ("auto", "detect", "centre"):
        raise InputError(f"face must be 'auto', 'detect' or 'centre', got {face!r}")
    if no_face not in ("skip", "centre"):
        raise InputError(f"no_face must be 'skip' or 'centre', got {no_face!r}")
    files = list_images(folder)
    if not files:
        raise InputError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    order = np.random.default_rng(seed).permutation(len(files))
    method = "custom" if finder is not None else face
    if finder is None and face != "centre":
        method, finder = default_face_finder()
        if finder is None and face == "detect":
            raise InputError("face='detect' needs smirk_edge.detector and its BlazeFace models; "
                             "use face='centre' for aligned face photos")
    crops, sources, skipped, used = [], [], 0, set()
    root = Path(folder)
    for i in _progress(order, len(order), "face crops", progress):
        if limit is not None and len(crops) >= limit:
            break
        path = files[i]
        image = _read_or_none(path)
        if image is None:
            skipped += 1
            continue
        box = finder(image) if finder is not None else None
        how = method
        if box is None:
            if finder is not None and no_face == "skip":
                skipped += 1
                continue
            box, how = centre_box(*image.shape[:2]), "centre"
        used.add(how)
        try:
            crops.append(crop_from_box(box, scale).warp(image))
        except InputError:
            skipped += 1
            continue
        sources.append(str(path.relative_to(root)))
    if not crops:
        raise InputError(f"no face crops could be made from {len(files)} images under {folder}")
    method = used.pop() if len(used) == 1 else "mixed"
    return CropSet(np.stack(crops), sources, str(root), method, scale, skipped)


def jittered_crops(images: Sequence[str | os.PathLike], per_image: int = 8, seed: int = 0,
                   scale: tuple[float, float] = (1.2, 1.8), rotation: float = 15.0, shift: float = 0.06) -> CropSet:
    """Several crops of each photo's first detected face, with seeded random scale, rotation and
    shift (the first crop of each photo is the plain SDK crop at :data:`DEFAULT_SCALE`).

    For golden files of bundles that are committed or published: a handful of photos whose terms
    allow it (the shipped astronaut portrait is public domain) give varied crops, so no crop of a
    non-redistributable photo has to travel with the model.
    """
    method, finder = default_face_finder()
    rng = np.random.default_rng(seed)
    crops, sources = [], []
    for path in images:
        image = _read_or_none(path)
        if image is None:
            raise InputError(f"cannot read image {path}")
        box = finder(image) if finder is not None else None
        if box is None:
            raise InputError(f"no face found in {path}; golden crops need a photo with a face")
        for k in range(per_image):
            if k == 0:
                t = crop_from_box(box, DEFAULT_SCALE)
            else:
                centre, side = square_from_box(box, float(rng.uniform(*scale)))
                centre = np.asarray(centre, np.float64) + rng.uniform(-shift, shift, 2) * side
                t = transform_from_square(centre, side, CROP_SIZE, float(rng.uniform(-rotation, rotation)))
            crops.append(t.warp(image))
            sources.append(f"{Path(path).name}#{k}")
    if not crops:
        raise InputError("jittered_crops needs at least one image")
    return CropSet(np.stack(crops), sources, str(Path(images[0]).parent), method or "detect", DEFAULT_SCALE, 0)


def synthetic_face_crops(n: int, seed: int = 0) -> CropSet:
    """CI FALLBACK ONLY: ``n`` drawn face-like images (skin ellipse, eyes, brows, nose, mouth) on
    random backgrounds, cropped by the real crop path with a centred box.

    Used by the tests when ../shared/data is absent; not real faces, so int8 ranges and accuracy
    numbers from them say nothing about real use.
    """
    rng = np.random.default_rng(seed)
    crops = []
    for _ in range(n):
        s = 200
        img = np.empty((s, s, 3), np.uint8)
        img[:] = rng.integers(0, 256, 3)
        img = cv2.add(img, rng.integers(0, 40, (s, s, 3), dtype=np.uint8))
        skin = tuple(int(v) for v in rng.integers([60, 90, 140], [140, 170, 240]))
        cx, cy = s // 2 + int(rng.integers(-8, 9)), s // 2 + int(rng.integers(-8, 9))
        ax, ay = int(rng.integers(60, 80)), int(rng.integers(80, 98))
        cv2.ellipse(img, (cx, cy), (ax, ay), float(rng.uniform(-12, 12)), 0, 360, skin, -1)
        for side in (-1, 1):
            ex, ey = cx + side * ax // 2, cy - ay // 4
            cv2.ellipse(img, (ex, ey), (12, int(rng.integers(3, 8))), 0, 0, 360, (240, 240, 240), -1)
            cv2.circle(img, (ex, ey), 4, (40, 30, 20), -1)
            cv2.line(img, (ex - 14, ey - 14 - int(rng.integers(0, 8))), (ex + 14, ey - 16), (30, 30, 40), 3)
        cv2.line(img, (cx, cy - 10), (cx - 6, cy + 20), tuple(int(v * 0.8) for v in skin), 3)
        open_ = int(rng.integers(2, 22))
        cv2.ellipse(img, (cx, cy + ay // 2), (int(rng.integers(18, 32)), open_), 0, 0, 360, (60, 50, 150), -1)
        img = cv2.GaussianBlur(img, (3, 3), 0)
        crops.append(crop_from_box(centre_box(s, s), DEFAULT_SCALE).warp(img))
    return CropSet(np.stack(crops), [f"synthetic#{i}" for i in range(n)], "synthetic (CI fallback)",
                   "synthetic", DEFAULT_SCALE, 0)


def warn_if_small(n: int, minimum: int = MIN_CALIBRATION_CROPS) -> None:
    """Warn (:class:`CalibrationWarning`) when fewer than ``minimum`` crops calibrate int8."""
    if n < minimum:
        warnings.warn(f"only {n} calibration crops (< {minimum}): int8 activation ranges may be unstable; "
                      "point --calib at a larger folder of face photos", CalibrationWarning, stacklevel=3)


# ---- adapters of the one contract ---------------------------------------------------------------
def ort_reader(feeds: Iterable[Feed], progress: bool = False, total: int | None = None) -> Any:
    """An onnxruntime ``CalibrationDataReader`` over an iterable of feed dicts (re-iterable: rewind works)."""
    quant = require("onnxruntime.quantization")

    class _Reader(quant.CalibrationDataReader):
        def __init__(self) -> None:
            self._it: Iterator | None = None

        def _start(self) -> Iterator:
            n = total if total is not None else (len(feeds) if hasattr(feeds, "__len__") else None)
            return iter(_progress(iter(feeds), n, "calibrating (onnxruntime)", progress))

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self._it is None:
                self._it = self._start()
            item = next(self._it, None)
            return None if item is None else dict(item)

        def rewind(self) -> None:
            self._it = None

    return _Reader()


def nncf_dataset(feeds: Iterable[Feed], input_name: str = INPUT_NAME) -> Any:
    """An ``nncf.Dataset`` over feed dicts; the transform hands OpenVINO the ``{name: array}`` feed."""
    nncf = require("nncf")
    items = feeds if hasattr(feeds, "__getitem__") and hasattr(feeds, "__len__") else list(feeds)
    return nncf.Dataset(items, lambda feed: {input_name: feed[input_name]})
