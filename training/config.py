"""Training configuration: typed dataclasses read from YAML (or JSON) files in ``configs/``.

A config file is a nested mapping whose sections mirror :class:`TrainConfig`: ``model``, ``data``
(with a list of ``sources``), ``optim``, ``loss``, ``run``, ``finetune``, plus free-text
``deviations`` (every place where we knowingly differ from SMIRK). Unknown keys are refused with a
closest-match hint; every value is type-checked. ``overrides`` such as ``["optim.lr=1e-4",
"run.max_steps=100"]`` are applied on top (values parsed as YAML scalars).

Only the standard library (+ PyYAML when a ``.yaml`` file is read) is imported here, so the CLI can
parse configs without torch.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from smirk_edge.errors import InputError


ENCODER_VARIANTS = ("full", "fast", "faster", "mesh", "tiny", "tiny-shared")
"""The encoder variants of :class:`smirk_edge.runtimes.torch_encoder.EncoderConfig` (named there)."""


class ConfigError(InputError):
    """A training config that cannot be used (unknown key, wrong type, bad value)."""


# ------------------------------------------------------------------------------------------ sections


@dataclass
class SourceConfig:
    """One data source.

    ``kind``:
      * ``folder``: an image folder (``path``, default: the annotation index's root) + an annotation
        folder (``annotations``, written by ``smirk-edge annotate``);
      * ``shards``: a folder of packed shards (``smirk-edge pack``; ``path``);
      * ``synthetic``: the face model rendered with random parameters (``size`` items per epoch).
    ``weight``: relative sampling probability of this source in the mixture (per source, not per
    image). ``split`` + ``subset``: keep only the names listed under ``subset`` in a split file.
    ``limit``: keep at most this many faces (first ones in name order).
    ``landmarks68`` (``folder`` only): a 300-W folder (``NAME.jpg`` + ``NAME.json``, e.g.
    ``../shared/data/landmarks68/helen_train``): keep the annotated faces in it and train on their
    human 68 points (``real68``) besides the MediaPipe ones.
    """

    kind: str = "folder"
    path: str | None = None
    annotations: str | None = None
    weight: float = 1.0
    split: str | None = None
    subset: str = "train"
    limit: int | None = None
    size: int = 1000
    name: str | None = None
    landmarks68: str | None = None


@dataclass
class CropAugmentConfig:
    """SMIRK's training augmentation (crop from the 478-landmark box, then colour).

    ``scale_min``/``scale_max``: square side / box size (SMIRK: uniform in [1.2, 1.8]).
    ``shift``: centre shift, uniform in ``+-shift * side`` on each axis. ``rotation``: degrees,
    uniform in ``+-rotation``. Colour: brightness/contrast/saturation factors uniform in
    ``1 +- value``, per-channel gain ``1 +- channel_gain``, grey conversion with probability ``grey``.
    ``test_scale``: the deterministic crop scale for validation/evaluation (SMIRK's 1.6).
    """

    scale_min: float = 1.2
    scale_max: float = 1.8
    shift: float = 0.08
    rotation: float = 10.0
    brightness: float = 0.25
    contrast: float = 0.25
    saturation: float = 0.25
    channel_gain: float = 0.05
    grey: float = 0.05
    test_scale: float = 1.6
    # ours, for the faces cameras see (training/photo_augment.py); probabilities per view, 0 = SMIRK
    profile: float = 0.0
    profile_max_yaw: float = 80.0
    profile_max_pitch: float = 20.0
    occlusion: float = 0.0
    side_light: float = 0.0
    blur: float = 0.0
    low_res: float = 0.0


@dataclass
class DataConfig:
    """Data sources and loading. ``views = 2`` gives each photo two independent augmentations (the
    identity-consistency half of the shape supervision); the encoder then sees ``batch * views``
    crops per step. ``epoch_size``: samples per epoch (default: the sum of the source sizes).
    ``emotion_csv`` (``faces/expressive.csv`` layout: image, emotion, colour, subject) and
    ``emotion_subjects``: the photos of those subjects carry their emotion label (``item["emotion"]``)
    for the ``emotion_label`` loss; every other photo, and every subject not listed, has none (-1).
    List the subjects explicitly: the ones left out are what an expression probe may be scored on."""

    sources: list[SourceConfig] = field(default_factory=list)
    image_size: int = 224
    views: int = 1
    num_workers: int = 4
    epoch_size: int | None = None
    augment: CropAugmentConfig = field(default_factory=CropAugmentConfig)
    emotion_csv: str | None = None
    emotion_subjects: list[str] = field(default_factory=list)


@dataclass
class ModelConfig:
    """Networks. ``encoder``: ``full`` (official), ``fast``/``faster``/``mesh`` (one shared backbone), or ``tiny``; ``generator``: ``official`` or
    ``tiny``; ``face_model``: a face-model ``.npz`` (default: the shipped stand-in); ``init_from``:
    a checkpoint in the official layout to start from (stage 2 starts from stage 1's);
    ``vgg_weights``: torchvision VGG16 weights for SMIRK's perceptual loss (default: the
    weight-free structural loss)."""

    encoder: str = "full"
    generator: str = "official"
    face_model: str | None = None
    init_from: str | None = None
    vgg_weights: str | None = None
    teacher: str | None = None  # distillation: a checkpoint (or "default", "fast", "full") whose outputs the encoder learns


@dataclass
class OptimConfig:
    """Adam. Stage 1: lr 2e-4. Stage 2: ``lr`` 1e-3 is the generator's, the expression encoder gets
    ``encoder_lr_factor * lr`` (0.25); generator betas (0.5, 0.999); generator gradient-norm clip 0.1.
    ``schedule``: ``constant``, ``cosine`` (to ``min_lr_factor * lr``, restarted each epoch) or
    ``cosine_run`` (one cosine over ``run.max_steps``); ``warmup_steps`` ramps the lr up linearly first."""

    lr: float = 2e-4
    encoder_lr_factor: float = 1.0
    betas: tuple[float, float] = (0.9, 0.999)
    generator_betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = 0.0
    grad_clip_encoder: float | None = None
    grad_clip_generator: float | None = None
    schedule: str = "constant"
    min_lr_factor: float = 0.01
    warmup_steps: int = 0


@dataclass
class LossConfig:
    """Loss weights on top of the stage defaults (:class:`~smirk_edge.training.losses.LossWeights`),
    the cycle's inner weights, the shape-supervision inner weights, and stage-2 masking constants.

    ``synthetic_batch`` > 0 renders that many faces of known parameters per step on the training
    device (:class:`~smirk_edge.training.synthetic.SyntheticFaces`) and adds them to the encoder's
    batch: their landmarks join the landmark terms and ``weights.synthetic`` scales the parameter
    L1 (inner weights ``synthetic``: expression, jaw, eyelid, pose)."""

    weights: dict[str, float] = field(default_factory=dict)
    cycle: dict[str, float] = field(default_factory=dict)
    shape_supervision: dict[str, float] = field(default_factory=dict)
    mask_ratio: float = 0.01
    hole_rate: float = 0.01
    cycle_hole_rate: float = 0.005
    cycle_every: int = 1
    cycle_repeat: int = 1
    synthetic: dict[str, float] = field(default_factory=dict)
    synthetic_batch: int = 0
    landmark_error: str = "squared"  # or "distance" (ours): losses.landmark_loss


@dataclass
class FinetuneConfig:
    """Freezing policy (``smirk-edge finetune``): freeze each backbone's stem and its first
    ``freeze_blocks`` stages; ``train`` lists the branches that learn at all (``pose``, ``shape``,
    ``expression``); ``freeze_bn``: every BatchNorm uses its running statistics (eval mode)."""

    enabled: bool = False
    freeze_blocks: int = 0
    train: list[str] = field(default_factory=lambda: ["pose", "shape", "expression"])
    freeze_bn: bool = False


@dataclass
class RunConfig:
    """Loop control. ``batch_size`` is per process (photos; times ``data.views`` crops). Budgets:
    ``max_steps``, ``max_epochs``, ``max_minutes`` (whichever ends first; a checkpoint is written
    at the end). ``device``: ``auto`` (``cuda:LOCAL_RANK`` when CUDA is there), ``cpu`` or ``cuda``.
    ``amp``: ``auto`` (bf16 on CUDA, off on CPU), ``bf16`` or ``off``."""

    batch_size: int = 32
    max_steps: int | None = None
    max_epochs: int | None = None
    max_minutes: float | None = None
    log_every: int = 20
    ckpt_every: int = 1000
    keep_checkpoints: int = 2
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"
    deterministic: bool = False
    progress: bool = True
    tensorboard: bool = True


@dataclass
class TrainConfig:
    """A whole training run. ``stage``: 1 (three encoders, landmarks) or 2 (expression encoder +
    generator, reconstruction and cycle). ``deviations``: free text, recorded in checkpoints.
    ``terms``: the terms of use of the training data, which the weights inherit, and ``training_data``:
    what the run trains on; both are recorded in checkpoints (merged with those of ``model.init_from``)
    and copied by ``smirk-edge export`` into the bundle's model card (:mod:`smirk_edge.provenance`)."""

    stage: int = 1
    name: str = "run"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    run: RunConfig = field(default_factory=RunConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    deviations: list[str] = field(default_factory=list)
    terms: list[str] = field(default_factory=list)
    training_data: str = ""

    def validate(self, require_sources: bool = True) -> "TrainConfig":
        """Check values that types cannot; returns self. Raises :class:`ConfigError`."""
        checks = [
            (self.stage in (1, 2), f"stage must be 1 or 2, got {self.stage}"),
            (self.model.encoder in ENCODER_VARIANTS,
             f"model.encoder must be one of {', '.join(ENCODER_VARIANTS)}, got {self.model.encoder!r}"),
            (self.model.generator in ("official", "tiny"),
             f"model.generator must be official or tiny, got {self.model.generator!r}"),
            (self.data.image_size >= 32 and self.data.image_size % 16 == 0,
             f"data.image_size must be a multiple of 16 and >= 32, got {self.data.image_size}"),
            (self.data.views in (1, 2), f"data.views must be 1 or 2, got {self.data.views}"),
            (self.optim.schedule in ("constant", "cosine", "cosine_run"),
             "optim.schedule must be constant, cosine (restarted each epoch) or cosine_run (over run.max_steps), "
             f"got {self.optim.schedule!r}"),
            (self.optim.schedule != "cosine_run" or bool(self.run.max_steps),
             "optim.schedule cosine_run needs run.max_steps"),
            (self.loss.synthetic_batch >= 0, f"loss.synthetic_batch must be >= 0, got {self.loss.synthetic_batch}"),
            (self.loss.landmark_error in ("squared", "distance"),
             f"loss.landmark_error must be 'squared' (SMIRK) or 'distance', got {self.loss.landmark_error!r}"),
            (self.optim.lr > 0, f"optim.lr must be > 0, got {self.optim.lr}"),
            (self.run.amp in ("auto", "bf16", "off"), f"run.amp must be auto, bf16 or off, got {self.run.amp!r}"),
            (self.run.batch_size >= 1, f"run.batch_size must be >= 1, got {self.run.batch_size}"),
            (self.loss.cycle_every >= 1 and self.loss.cycle_repeat >= 1,
             "loss.cycle_every and loss.cycle_repeat must be >= 1"),
            (all(b in ("pose", "shape", "expression") for b in self.finetune.train),
             f"finetune.train entries must be pose, shape or expression, got {self.finetune.train}"),
            (bool(self.data.sources) or not require_sources, "data.sources is empty: give at least one source"),
            (self.run.device in ("auto", "cpu", "cuda"), f"run.device must be auto, cpu or cuda, got {self.run.device!r}"),
            (not float(self.loss.weights.get("emotion_label", 0) or 0)
             or (bool(self.data.emotion_csv) and bool(self.data.emotion_subjects)),
             "loss.weights.emotion_label needs data.emotion_csv and data.emotion_subjects (the subjects whose labels train)"),
        ]
        a = self.data.augment
        checks.append((0 < a.scale_min <= a.scale_max, f"augment scale range [{a.scale_min}, {a.scale_max}] is empty"))
        for s in self.data.sources:
            checks.append((s.kind in ("folder", "shards", "synthetic"),
                           f"source kind must be folder, shards or synthetic, got {s.kind!r}"))
            checks.append((s.weight > 0, f"source weight must be > 0, got {s.weight}"))
            if s.kind == "folder":
                checks.append((s.annotations is not None, "a folder source needs 'annotations'"))
            if s.kind == "shards":
                checks.append((s.path is not None, "a shards source needs 'path'"))
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)
        return self

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------------ loading


def _hint(key: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _convert(tp: Any, value: Any, where: str) -> Any:
    """Convert ``value`` to the annotated type ``tp`` (dataclasses, lists, tuples, optionals, scalars)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        last: Exception | None = None
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(a, value, where)
            except ConfigError as exc:
                last = exc
        raise last or ConfigError(f"{where}: cannot use {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} must be a mapping, got {type(value).__name__}")
        return _build(tp, value, where)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return [_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{where} must be a list of {len(args)} values, got {value!r}")
        return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return {str(k): _convert(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            try:
                return float(value)  # YAML reads "1e-3" as a string
            except (TypeError, ValueError):
                raise ConfigError(f"{where} must be a number, got {value!r}") from None
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    return value


def _build(cls, values: Mapping[str, Any], where: str = ""):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in values if k not in names]
    if unknown:
        k = unknown[0]
        raise ConfigError(f"unknown key '{where + '.' if where else ''}{k}'{_hint(k, names)}; "
                          f"known: {', '.join(names)}")
    kwargs = {k: _convert(hints[k], v, f"{where + '.' if where else ''}{k}") for k, v in values.items()}
    return cls(**kwargs)


def _parse_scalar(text: str) -> Any:
    try:
        import yaml

        return yaml.safe_load(text)
    except ImportError:
        try:
            return json.loads(text)
        except ValueError:
            return text


def _set_path(d: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    cur = d
    for p in parts[:-1]:
        nxt = cur.get(p)
        if nxt is None:
            nxt = cur[p] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {dotted!r}: {p!r} is not a section")
        cur = nxt
    cur[parts[-1]] = value


def read_mapping(path: str | os.PathLike) -> dict:
    """Read a YAML or JSON config file into a dict (``base: other.yaml`` merges another file first)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    text = p.read_text()
    if p.suffix.lower() == ".json":
        data = json.loads(text)
    else:
        try:
            import yaml
        except ImportError as exc:
            from smirk_edge.errors import EngineUnavailable

            raise EngineUnavailable("PyYAML (to read .yaml configs)", "train") from exc
        data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p} must hold a mapping at the top level")
    base = data.pop("base", None)
    if base:
        merged = read_mapping(p.parent / base)
        _deep_update(merged, data)
        data = merged
    return data


def _deep_update(dst: dict, src: Mapping) -> dict:
    for k, v in src.items():
        if isinstance(v, Mapping) and isinstance(dst.get(k), dict):
            _deep_update(dst[k], v)
        else:
            dst[k] = v
    return dst


def config_from_dict(data: Mapping[str, Any], overrides: Sequence[str] = (), require_sources: bool = True
                     ) -> TrainConfig:
    """Build and validate a :class:`TrainConfig` from a mapping plus ``key.path=value`` overrides."""
    d = json.loads(json.dumps(data))  # deep copy, plain types
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, text = item.split("=", 1)
        _set_path(d, key.strip(), _parse_scalar(text))
    return _build(TrainConfig, d).validate(require_sources)


def load_config(path: str | os.PathLike, overrides: Sequence[str] = (), require_sources: bool = True) -> TrainConfig:
    """Read ``path`` (YAML/JSON, optional ``base:``), apply ``overrides`` and validate."""
    return config_from_dict(read_mapping(path), overrides, require_sources)


def configs_dir() -> Path:
    """The training configs: ``configs/`` of a checkout (next to ``training/``), or the copy an installed
    wheel carries as package data (``smirk_edge/configs``, next to ``smirk_edge/training``): one path."""
    return Path(__file__).resolve().parent.parent / "configs"
