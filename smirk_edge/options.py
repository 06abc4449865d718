"""``ReconstructorOptions``: every setting of a :class:`~smirk_edge.Reconstructor`, checked once.

Each bad value raises :class:`~smirk_edge.errors.OptionError` (a ``ValueError``) when the options
are made, naming the option, the value and what is accepted; nothing is corrected silently.
Imports numpy-free leaves only.
"""

from __future__ import annotations

import difflib
import numbers
from dataclasses import dataclass, field, fields, replace
from typing import Any

from .errors import OptionError
from .smoothing import OneEuroConfig, StreamSmoothing

BACKENDS = ("auto", "onnxruntime", "openvino", "tensorrt", "torch")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
DETECTORS = ("auto", "short", "full", "both")
VARIANTS = ("full", "fast", "faster", "mesh")  # encoder variants (runtimes.torch_encoder.EncoderConfig)
REFINE = (True, False, "auto")
DEFAULT_REFINE_THRESHOLD = 0.3
"""``refine="auto"`` encodes a face again when its predicted landmark box and the first crop's box
disagree by more than this (1 - IoU); chosen on 300-W AFW (docs/benchmarks.md, refine table)."""
ON_ERROR = ("report", "raise")
MAX_THREADS = 256
"""Upper bound of ``threads``: engines allocate a pool per thread, so 1000 stalls for minutes and
100000 exhausts memory; no machine this SDK targets has more cores."""
MAX_FACES = 256


def choice(what: str, value: Any, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``, else :class:`OptionError` with a closest-match hint."""
    if isinstance(value, str) and value in choices:
        return value
    near = difflib.get_close_matches(str(value), choices, n=1)
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    raise OptionError(f"{what} must be one of {list(choices)}, got {value!r}{hint}")


def _integer(what: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise OptionError(f"{what} must be an integer in [{low}, {high}], got {value!r}")
    if not low <= int(value) <= high:
        raise OptionError(f"{what} must be in [{low}, {high}], got {value}")
    return int(value)


def _real(what: str, value: Any, low: float, high: float, open_low: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value != value:
        raise OptionError(f"{what} must be a number, got {value!r}")
    v = float(value)
    if v < low or v > high or (open_low and v == low):
        raise OptionError(f"{what} {v} is outside {'(' if open_low else '['}{low}, {high}]")
    return v


@dataclass(frozen=True)
class ReconstructorOptions:
    """Settings of a :class:`~smirk_edge.Reconstructor` (validated in ``__post_init__``).

    Attributes:
        backend: ``"auto"`` (fastest engine that can open an encoder artifact), ``"onnxruntime"``,
            ``"openvino"``, ``"tensorrt"`` or ``"torch"``.
        precision: ``"fp32"``, ``"fp16"``, ``"bf16"``, ``"int8"`` or None (prefer fp32; artifacts
            that failed the accuracy gate are used only when their precision is asked for).
        device: engine device (``"cpu"``, ``"cuda"``, OpenVINO ``"GPU"``/``"NPU"``...), or None.
        refine: True: re-crop every face from its predicted landmarks and encode again (the crop
            SMIRK was trained on); ``"auto"`` (default): only faces whose landmark box disagrees with
            the first crop's box by more than ``refine_threshold``; False: one encoder pass.
        refine_threshold: ``refine="auto"``'s disagreement bound, 1 - IoU of the two boxes, in [0, 1].
        max_faces: at most this many faces per image (largest first), 1..256.
        crop_scale: SMIRK crop scale in [0.5, 4]; None takes the bundle's ``crop_policy.scale``.
        detector: ``"auto"`` (short range; full range only when it finds no large face), ``"short"``,
            ``"full"`` or ``"both"`` (both models on every frame; see :mod:`smirk_edge.detector`).
        score_threshold: detector confidence threshold in (0, 1).
        threads: threads for the engine, OpenCV and BLAS, 1..256 (None: the physical cores this
            process may use, from its CPU affinity and cgroup quota; :func:`smirk_edge.cpu.core_budget`).
        smoothing: the temporal filters of ``stream()``: a :class:`~smirk_edge.smoothing.StreamSmoothing`
            (landmarks, pose and expression filters, identity lock) or one ``OneEuroConfig`` for every signal.
        redetect_every: in ``stream()``, run the detector every N frames even while tracking (>= 1).
        align_roll: a face rolled more than this many degrees in the image gets a crop rotated
            upright (detected and tracked faces alike); None keeps every crop upright.
        variant: the encoder variant: None (the bundle's own; the embedded default model is
            ``"fast"``), ``"fast"`` (one shared backbone, distilled), ``"full"`` (SMIRK's three
            backbones), ``"faster"`` or ``"mesh"``. Without a bundle it picks the embedded model of
            that variant (``"fast"`` and ``"full"`` are embedded); with a bundle it must be the
            bundle's variant (a bundle holds one encoder variant).
    """

    backend: str = "auto"
    precision: str | None = None
    device: str | None = None
    refine: bool | str = "auto"
    refine_threshold: float = DEFAULT_REFINE_THRESHOLD
    max_faces: int = 8
    crop_scale: float | None = None
    detector: str = "auto"
    score_threshold: float = 0.5
    threads: int | None = None
    smoothing: StreamSmoothing | OneEuroConfig = field(default_factory=StreamSmoothing)
    redetect_every: int = 15
    align_roll: float | None = 15.0
    variant: str | None = None

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 - frozen dataclass
        choice("backend", self.backend, BACKENDS)
        if self.precision is not None:
            choice("precision", self.precision, PRECISIONS)
        if self.device is not None and (not isinstance(self.device, str) or not self.device.strip()):
            raise OptionError(f"device must be a non-empty string or None, got {self.device!r}")
        if not isinstance(self.refine, bool) and self.refine != "auto":
            raise OptionError(f"refine must be True, False or 'auto', got {self.refine!r}")
        set_("refine_threshold", _real("refine_threshold", self.refine_threshold, 0.0, 1.0))
        set_("max_faces", _integer("max_faces", self.max_faces, 1, MAX_FACES))
        if self.crop_scale is not None:
            set_("crop_scale", _real("crop_scale", self.crop_scale, 0.5, 4.0))
        choice("detector", self.detector, DETECTORS)
        if self.variant is not None:
            choice("variant", self.variant, VARIANTS)
        set_("score_threshold", _real("score_threshold", self.score_threshold, 0.0, 1.0, open_low=True))
        if self.score_threshold >= 1.0:
            raise OptionError(f"score_threshold must be below 1, got {self.score_threshold}")
        if self.threads is not None:
            if isinstance(self.threads, numbers.Integral) and not isinstance(self.threads, bool) \
                    and self.threads > MAX_THREADS:
                raise OptionError(f"threads must be in [1, {MAX_THREADS}], got {self.threads}: the engine, OpenCV and "
                                  "BLAS each start a pool of that size; leave threads=None for the physical cores "
                                  "this process may use")
            set_("threads", _integer("threads", self.threads, 1, MAX_THREADS))
        if not isinstance(self.smoothing, (StreamSmoothing, OneEuroConfig)):
            raise OptionError(f"smoothing must be a StreamSmoothing or a OneEuroConfig, got {type(self.smoothing).__name__}")
        set_("redetect_every", _integer("redetect_every", self.redetect_every, 1, 1_000_000))
        if self.align_roll is not None:
            set_("align_roll", _real("align_roll", self.align_roll, 0.0, 180.0))

    @classmethod
    def from_keywords(cls, base: "ReconstructorOptions | None" = None, **keywords: Any) -> "ReconstructorOptions":
        """``base`` (or the defaults) with ``keywords`` replaced; unknown names raise OptionError."""
        known = [f.name for f in fields(cls)]
        for k in keywords:
            if k not in known:
                near = difflib.get_close_matches(k, known, n=1)
                raise OptionError(f"unknown Reconstructor option {k!r}"
                                  f"{f' (did you mean {near[0]!r}?)' if near else ''}; known: {known}")
        return replace(base, **keywords) if base is not None else cls(**keywords)


def check_on_error(value: Any) -> str:
    """The ``on_error`` argument of ``stream()``: ``"report"`` or ``"raise"``."""
    return choice("on_error", value, ON_ERROR)
