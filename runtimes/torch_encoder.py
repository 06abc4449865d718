"""The SMIRK encoder: three timm backbones with linear heads, weight-compatible with ``SMIRK_em1.pt``.

- pose: ``tf_mobilenetv3_small_minimal_100`` (576 ch) -> Linear(576, 6): global rotation (3,
  axis-angle radians) + camera (s, tx, ty).
- shape: ``tf_mobilenetv3_large_minimal_100`` (960 ch) -> Linear(960, 300).
- expression: ``tf_mobilenetv3_large_minimal_100`` (960 ch) -> Linear(960, 55): 50 expression,
  2 eyelid clamped to [0, 1], 3 jaw as [ReLU(p0), clamp(p1:3, -0.2, 0.2)].

The shared-backbone variants (``fast``, ``faster``, ``mesh``) put the three heads on one backbone;
``mesh`` is MediaPipe's face-mesh network (``runtimes/mesh_backbone.py``, not timm).

Input: ``(B, 3, 224, 224)`` RGB float32 in [0, 1], no mean/std normalisation.
Backbones are built with ``pretrained=False``: a checkpoint provides every weight.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from smirk_edge._lazy import require
from smirk_edge.bundle import sha256_file as file_sha256
from smirk_edge.errors import CheckpointError

from .mesh_backbone import MESH_BACKBONE

# Checkpoints in the official SMIRK layout (``SMIRK_em1.pt``): a flat state dict saved with
# ``torch.save``; encoder weights carry the prefix ``smirk_encoder.``, generator weights
# ``smirk_generator.``; smirk-edge adds ``smirk_edge_meta`` (a JSON string: encoder variant, training
# step, config), which the official code ignores. Files are opened with ``torch.load(weights_only=True)``.
ENCODER_PREFIX = "smirk_encoder."
GENERATOR_PREFIX = "smirk_generator."
META_KEY = "smirk_edge_meta"

N_SHAPE, N_EXPRESSION, N_EYELID, N_JAW = 300, 50, 2, 3

# Output names, in the order every exported graph and runner uses them.
OUTPUT_NAMES = ("pose", "cam", "shape", "expression", "eyelid", "jaw")
OUTPUT_WIDTHS = {"pose": 3, "cam": 3, "shape": N_SHAPE, "expression": N_EXPRESSION, "eyelid": N_EYELID,
                 "jaw": N_JAW}


@dataclass(frozen=True)
class EncoderConfig:
    """Which backbone each branch uses (a timm name, or ``MESH_BACKBONE``). ``full`` is the official architecture."""

    pose_backbone: str = "tf_mobilenetv3_small_minimal_100"
    shape_backbone: str = "tf_mobilenetv3_large_minimal_100"
    expression_backbone: str = "tf_mobilenetv3_large_minimal_100"
    input_size: int = 224
    shared: bool = False  # one backbone (``pose_backbone``) feeds the three heads: the fast variants

    @classmethod
    def full(cls) -> "EncoderConfig":
        return cls()

    @classmethod
    def tiny(cls) -> "EncoderConfig":
        """Random-weight miniature for fast tests (~0.25 M parameters, same heads and outputs)."""
        return cls("test_efficientnet", "test_efficientnet", "test_efficientnet")

    @classmethod
    def fast(cls) -> "EncoderConfig":
        """One shared ``tf_mobilenetv3_large_minimal_100`` for the three heads (~0.45 x the full
        encoder's multiply-adds); trained by distillation (configs/fast_distill.yaml)."""
        b = "tf_mobilenetv3_large_minimal_100"
        return cls(b, b, b, shared=True)

    @classmethod
    def faster(cls) -> "EncoderConfig":
        """One shared ``tf_mobilenetv3_small_minimal_100`` (~0.12 x the full encoder's multiply-adds)."""
        b = "tf_mobilenetv3_small_minimal_100"
        return cls(b, b, b, shared=True)

    @classmethod
    def mesh(cls) -> "EncoderConfig":
        """One shared MediaPipe face-mesh backbone (:mod:`.mesh_backbone`: its 128 x 4 x 4 last map,
        flattened, so the heads see where each feature is) for the three heads; warm-started from
        MediaPipe's weights (:func:`load_mesh_weights`)."""
        return cls(MESH_BACKBONE, MESH_BACKBONE, MESH_BACKBONE, shared=True)

    @classmethod
    def tiny_shared(cls) -> "EncoderConfig":
        """The shared layout at test size."""
        return cls("test_efficientnet", "test_efficientnet", "test_efficientnet", shared=True)

    @classmethod
    def variants(cls) -> dict[str, "EncoderConfig"]:
        """Every named variant (``encoder_variant`` in a checkpoint's metadata)."""
        return {"full": cls.full(), "tiny": cls.tiny(), "fast": cls.fast(), "faster": cls.faster(),
                "mesh": cls.mesh(), "tiny-shared": cls.tiny_shared()}

    @classmethod
    def named(cls, name: str) -> "EncoderConfig":
        table = cls.variants()
        if name not in table:
            raise ValueError(f"unknown encoder variant {name!r}; choose one of {sorted(table)}")
        return table[name]

    def variant_name(self) -> str:
        """This configuration's name in :meth:`variants`, else ``custom``."""
        return next((k for k, v in self.variants().items() if v == self), "custom")


def _backbone(name: str | nn.Module) -> nn.Module:
    if isinstance(name, nn.Module):  # shared with the other branches
        return name
    if name == MESH_BACKBONE:  # ours, not a timm model; its last map flattened for the 224 crop
        from .mesh_backbone import FaceMeshBackbone

        return FaceMeshBackbone(spatial_input=224)
    timm = require("timm")
    return timm.create_model(name, pretrained=False, features_only=True)


def _pooled_last(backbone: nn.Module, img: torch.Tensor) -> torch.Tensor:
    feat = backbone(img)[-1]
    return F.adaptive_avg_pool2d(feat, 1).flatten(1)


class PoseEncoder(nn.Module):
    """Global rotation and camera. Keys: ``encoder.*``, ``pose_cam_layers.0.*``."""

    def __init__(self, backbone: str | nn.Module):
        super().__init__()
        self.encoder = _backbone(backbone)
        self.pose_cam_layers = nn.Sequential(nn.Linear(self.encoder.feature_info.channels()[-1], 6))

    def init_weights(self) -> None:
        """SMIRK's training init: small pose/cam outputs, camera scale starting at 7."""
        lin = self.pose_cam_layers[0]
        with torch.no_grad():
            lin.weight.mul_(0.001)
            lin.bias.mul_(0.001)
            lin.weight[3].zero_()
            lin.bias[3] = 7.0

    def forward(self, img: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.head(_pooled_last(self.encoder, img))

    def head(self, feat: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.pose_cam_layers(feat)
        return {"pose": out[:, :3], "cam": out[:, 3:]}


class ShapeEncoder(nn.Module):
    """Identity coefficients. Keys: ``encoder.*``, ``shape_layers.0.*``."""

    def __init__(self, backbone: str | nn.Module):
        super().__init__()
        self.encoder = _backbone(backbone)
        self.shape_layers = nn.Sequential(nn.Linear(self.encoder.feature_info.channels()[-1], N_SHAPE))

    def init_weights(self) -> None:
        with torch.no_grad():
            self.shape_layers[0].weight.zero_()
            self.shape_layers[0].bias.zero_()

    def forward(self, img: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.head(_pooled_last(self.encoder, img))

    def head(self, feat: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"shape": self.shape_layers(feat)}


class ExpressionEncoder(nn.Module):
    """Expression, eyelids and jaw. Keys: ``encoder.*``, ``expression_layers.0.*``."""

    def __init__(self, backbone: str | nn.Module):
        super().__init__()
        self.encoder = _backbone(backbone)
        self.expression_layers = nn.Sequential(
            nn.Linear(self.encoder.feature_info.channels()[-1], N_EXPRESSION + N_EYELID + N_JAW))

    def init_weights(self) -> None:
        with torch.no_grad():
            self.expression_layers[0].weight.mul_(0.1)
            self.expression_layers[0].bias.mul_(0.1)

    def forward(self, img: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.head(_pooled_last(self.encoder, img))

    def head(self, feat: torch.Tensor) -> dict[str, torch.Tensor]:
        p = self.expression_layers(feat)
        e = N_EXPRESSION
        jaw = torch.cat([F.relu(p[:, e + 2:e + 3]), torch.clamp(p[:, e + 3:e + 5], -0.2, 0.2)], dim=1)
        out = {"expression": p[:, :e], "eyelid": torch.clamp(p[:, e:e + 2], 0.0, 1.0), "jaw": jaw}
        if self.training:  # pre-activation values: a supervised loss on them cannot get stuck in a clamp
            out["eyelid_raw"] = p[:, e:e + 2]
            out["jaw_raw"] = p[:, e + 2:e + 5]
        return out


def fold_batchnorm(module: nn.Module) -> int:
    """Fold every eval-mode BatchNorm that follows a convolution (in the order the parent registered
    its children, with no other convolution between) into that convolution's weight and bias, and
    replace the BatchNorm by what it did after normalising (timm's ``BatchNormAct2d``: dropout and
    activation). For inference only: the running statistics are used. Returns how many were folded.

    Exact up to float rounding (the tests hold the full encoder to 1e-4 at fp32); it removes one
    memory pass per convolution, which is what the GPU spends its time on at large batches.
    """
    folded = 0
    for parent in list(module.modules()):
        conv: nn.Conv2d | None = None
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Conv2d):
                conv = child
            elif isinstance(child, nn.BatchNorm2d) and conv is not None and child.running_var is not None \
                    and conv.out_channels == child.num_features:
                with torch.no_grad():
                    scale = (child.weight if child.weight is not None else torch.ones_like(child.running_var)) \
                        / torch.sqrt(child.running_var + child.eps)
                    shift = (child.bias if child.bias is not None else torch.zeros_like(child.running_mean)) \
                        - child.running_mean * scale
                    conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
                    bias = conv.bias if conv.bias is not None else torch.zeros_like(shift)
                    conv.bias = nn.Parameter(bias * scale + shift)
                after = [m for m in (getattr(child, "drop", None), getattr(child, "act", None))
                         if m is not None and not isinstance(m, nn.Identity)]
                setattr(parent, name, nn.Sequential(*after) if after else nn.Identity())
                folded += 1
                conv = None
    return folded


class _Whole(nn.Module):
    """A shared-backbone encoder as its own single branch (not registered as a child)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.__dict__["encoder_ref"] = encoder

    def forward(self, img: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.encoder_ref(img)


class SmirkEncoder(nn.Module):
    """The three SMIRK encoders. ``forward(image (B,3,H,W) in [0,1])`` -> dict of
    ``pose (B,3)``, ``cam (B,3)``, ``shape (B,300)``, ``expression (B,50)``, ``eyelid (B,2)``, ``jaw (B,3)``.

    State-dict keys match the official checkpoint after stripping ``smirk_encoder.``.
    """

    def __init__(self, config: EncoderConfig | None = None):
        super().__init__()
        self.config = config or EncoderConfig.full()
        c = self.config
        shared = _backbone(c.pose_backbone) if c.shared else None
        self.pose_encoder = PoseEncoder(shared or c.pose_backbone)
        self.shape_encoder = ShapeEncoder(shared or c.shape_backbone)
        self.expression_encoder = ExpressionEncoder(shared or c.expression_backbone)
        if shared is not None:  # registered once (under pose_encoder.encoder): one copy in the state dict
            for branch in (self.shape_encoder, self.expression_encoder):
                del branch._modules["encoder"]
                branch.__dict__["encoder"] = shared

    def branches(self) -> list[nn.Module]:
        """The three sub-encoders: independent given the image (the torch runner runs them on three
        CUDA streams, which overlaps them where one alone cannot fill the GPU). A shared-backbone
        variant has one branch: itself."""
        if self.config.shared:
            return [_Whole(self)]
        return [self.pose_encoder, self.shape_encoder, self.expression_encoder]

    def init_weights(self) -> None:
        """Head initialisation SMIRK uses before training (not needed when loading a checkpoint)."""
        self.pose_encoder.init_weights()
        self.shape_encoder.init_weights()
        self.expression_encoder.init_weights()

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.config.shared:  # the backbone once, three heads on its pooled features
            feat = _pooled_last(self.pose_encoder.encoder, image)
            out = self.pose_encoder.head(feat)
            out.update(self.shape_encoder.head(feat))
            out.update(self.expression_encoder.head(feat))
        else:
            out = self.pose_encoder(image)
            out.update(self.shape_encoder(image))
            out.update(self.expression_encoder(image))
        keys = OUTPUT_NAMES + (("eyelid_raw", "jaw_raw") if self.training else ())  # raw: training losses only
        return {k: out[k] for k in keys if k in out}


# ---------------------------------------------------------------------------------------- checkpoints
@dataclass
class Checkpoint:
    """A loaded checkpoint: stripped encoder/generator state dicts and metadata."""

    encoder: dict[str, torch.Tensor]
    generator: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    sha256: str = ""
    path: str = ""


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint in the official layout (no model is built here).

    Raises:
        CheckpointError: missing file, not a state dict, unsafe content, or no encoder keys.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling refused, truncated zip, not a torch file
        raise CheckpointError(f"cannot read checkpoint {path} safely (weights_only=True): {exc}") from exc
    if not isinstance(state, Mapping):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, expected a flat state dict")
    enc = {k[len(ENCODER_PREFIX):]: v for k, v in state.items() if k.startswith(ENCODER_PREFIX)}
    gen = {k[len(GENERATOR_PREFIX):]: v for k, v in state.items() if k.startswith(GENERATOR_PREFIX)}
    if not enc:
        sample = ", ".join(list(state)[:5])
        raise CheckpointError(
            f"checkpoint {path} has no '{ENCODER_PREFIX}*' keys (first keys: {sample}); "
            "is it a SMIRK checkpoint in the official layout?")
    meta = {}
    if isinstance(state.get(META_KEY), str):
        try:
            meta = json.loads(state[META_KEY])
        except json.JSONDecodeError:
            meta = {}
    return Checkpoint(enc, gen, meta, file_sha256(path), str(path))


def _diff(model: nn.Module, state: Mapping[str, torch.Tensor]) -> tuple[list, list, list]:
    want = model.state_dict()
    missing = [k for k in want if k not in state]
    unexpected = [k for k in state if k not in want]
    shapes = [(k, tuple(state[k].shape), tuple(want[k].shape)) for k in want
              if k in state and tuple(state[k].shape) != tuple(want[k].shape)]
    return missing, unexpected, shapes


def _format_diff(missing, unexpected, shapes, limit=8) -> str:
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys: " + ", ".join(missing[:limit]) + (" ..." if len(missing) > limit else ""))
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys: " + ", ".join(unexpected[:limit])
                     + (" ..." if len(unexpected) > limit else ""))
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches: " + ", ".join(
            f"{k} {got} (model wants {want})" for k, got, want in shapes[:limit]) + (" ..." if len(shapes) > limit else ""))
    return "; ".join(parts)


def load_encoder_state(encoder: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load a stripped encoder state dict strictly; on mismatch raise with keys and shapes."""
    missing, unexpected, shapes = _diff(encoder, state)
    if missing or unexpected or shapes:
        raise CheckpointError("encoder weights do not match the SMIRK layout: " + _format_diff(missing, unexpected, shapes))
    encoder.load_state_dict(dict(state), strict=True)


def warm_start_shared(student: SmirkEncoder, state: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """Start a shared-backbone student (``fast``, ``faster``) from a three-backbone encoder's state.

    The student's one backbone takes the weights of the teacher's branch built on the same timm
    architecture (the expression branch first, then shape, then pose: ``fast`` shares
    ``tf_mobilenetv3_large_minimal_100`` with the expression and shape branches, ``faster``
    ``tf_mobilenetv3_small_minimal_100`` with the pose branch), and each head whose input width
    matches is copied; the others keep their initialisation. So distillation starts from an encoder
    that already answers one branch exactly instead of from random weights. Returns ``{part:
    source}`` of what was copied (``backbone`` -> ``expression_encoder``, a head -> its key prefix).
    Raises CheckpointError when no branch of ``state`` has the student's backbone.
    """
    if not student.config.shared:
        raise CheckpointError("warm_start_shared starts a shared-backbone variant (fast, faster); "
                              f"this encoder is {student.config.variant_name()!r}")
    own = student.state_dict()
    backbone = {k[len("pose_encoder.encoder."):]: v for k, v in own.items() if k.startswith("pose_encoder.encoder.")}
    chosen = None
    for branch in ("expression_encoder", "shape_encoder", "pose_encoder"):
        prefix = f"{branch}.encoder."
        theirs = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if theirs.keys() == backbone.keys() and all(theirs[k].shape == backbone[k].shape for k in backbone):
            chosen = branch
            break
    if chosen is None:
        raise CheckpointError("no branch of the source encoder has the student's backbone "
                              f"({student.config.pose_backbone}): it cannot warm-start this variant")
    new = dict(own)
    for k in backbone:
        new["pose_encoder.encoder." + k] = state[f"{chosen}.encoder.{k}"]
    copied = {"backbone": chosen}
    for head in ("pose_encoder.pose_cam_layers.", "shape_encoder.shape_layers.", "expression_encoder.expression_layers."):
        keys = [k for k in own if k.startswith(head)]
        if keys and all(k in state and state[k].shape == own[k].shape for k in keys):
            for k in keys:
                new[k] = state[k]
            copied[head.rstrip(".")] = head.rstrip(".")
    student.load_state_dict({k: v.to(own[k].dtype) for k, v in new.items()}, strict=True)
    return copied


def load_mesh_weights(encoder: SmirkEncoder, source: str | os.PathLike | Mapping[str, torch.Tensor]) -> int:
    """Start a ``mesh`` encoder's backbone from MediaPipe's face-mesh weights; the heads keep theirs.

    ``source``: the file ``export/detector/convert_face_mesh.py`` writes (the whole network's state
    dict, plain tensors, read with ``weights_only=True``) or that mapping. Only the backbone's keys
    are taken, checked key by key and shape by shape. Returns how many tensors were loaded.
    Raises CheckpointError: not a ``mesh`` encoder, an unreadable file, or weights that do not fit.
    """
    from .mesh_backbone import FaceMeshBackbone, backbone_state

    backbone = encoder.pose_encoder.encoder
    if not (encoder.config.shared and isinstance(backbone, FaceMeshBackbone)):
        raise CheckpointError("load_mesh_weights starts the mesh variant's backbone; this encoder is "
                              f"{encoder.config.variant_name()!r}")
    if isinstance(source, Mapping):
        state = source
    else:
        try:
            state = torch.load(Path(source), map_location="cpu", weights_only=True)
        except Exception as exc:  # missing, truncated, or not a plain-tensor file
            raise CheckpointError(f"cannot read face-mesh weights {source} safely (weights_only=True): {exc}; "
                                  "write them with export/detector/convert_face_mesh.py") from exc
        if not isinstance(state, Mapping):
            raise CheckpointError(f"{source} holds a {type(state).__name__}, expected a state dict")
    theirs = backbone_state(state)
    missing, _, shapes = _diff(backbone, theirs)
    if missing or shapes:
        raise CheckpointError("face-mesh weights do not fit the mesh backbone: " + _format_diff(missing, [], shapes))
    own = backbone.state_dict()
    backbone.load_state_dict({k: v.to(own[k].dtype) for k, v in theirs.items()}, strict=True)
    return len(theirs)


def build_encoder(ckpt: Checkpoint, config: EncoderConfig | None = None) -> SmirkEncoder:
    """Build the encoder the checkpoint was made for and load it strictly.

    The variant comes from ``config``, else from the checkpoint's metadata, else from the keys
    and shapes (the official architecture, or the tiny test variant). A checkpoint matching
    neither is reported against the official layout.
    """
    if config is None and "encoder_variant" in ckpt.meta:
        try:
            config = EncoderConfig.named(ckpt.meta["encoder_variant"])
        except ValueError as exc:
            raise CheckpointError(str(exc)) from exc
    candidates = [config] if config is not None else list(EncoderConfig.variants().values())
    for cfg in candidates:
        model = SmirkEncoder(cfg)
        if not any(_diff(model, ckpt.encoder)):
            load_encoder_state(model, ckpt.encoder)
            return model.eval()
    model = SmirkEncoder(candidates[0])
    load_encoder_state(model, ckpt.encoder)  # raises with the differences
    return model.eval()


def load_encoder(path: str | os.PathLike, config: EncoderConfig | None = None) -> SmirkEncoder:
    """Read ``path`` (official layout) and return the encoder in eval mode."""
    return build_encoder(read_checkpoint(path), config)


def random_encoder(variant: str = "full", seed: int = 0) -> SmirkEncoder:
    """An encoder of ``variant`` (``full``, ``tiny``) with random weights and SMIRK's head
    initialisation, seeded with ``torch.manual_seed(seed)``, in eval mode: for measurements whose
    numbers do not depend on the weights (latency, memory) and for tests."""
    try:
        config = EncoderConfig.named(variant)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from exc
    torch.manual_seed(seed)
    encoder = SmirkEncoder(config)
    encoder.init_weights()
    return encoder.eval()
