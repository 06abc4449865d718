"""The SMIRK encoder: three timm backbones with linear heads, weight-compatible with ``SMIRK_em1.pt``.

- pose: ``tf_mobilenetv3_small_minimal_100`` (576 ch) -> Linear(576, 6): global rotation (3,
  axis-angle radians) + camera (s, tx, ty).
- shape: ``tf_mobilenetv3_large_minimal_100`` (960 ch) -> Linear(960, 300).
- expression: ``tf_mobilenetv3_large_minimal_100`` (960 ch) -> Linear(960, 55): 50 expression,
  2 eyelid clamped to [0, 1], 3 jaw as [ReLU(p0), clamp(p1:3, -0.2, 0.2)].

Input: ``(B, 3, 224, 224)`` RGB float32 in [0, 1], no mean/std normalisation.
Backbones are built with ``pretrained=False``: a checkpoint provides every weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from smirk_edge._lazy import require

N_SHAPE, N_EXPRESSION, N_EYELID, N_JAW = 300, 50, 2, 3

# Output names, in the order every exported graph and runner uses them.
OUTPUT_NAMES = ("pose", "cam", "shape", "expression", "eyelid", "jaw")
OUTPUT_WIDTHS = {"pose": 3, "cam": 3, "shape": N_SHAPE, "expression": N_EXPRESSION, "eyelid": N_EYELID,
                 "jaw": N_JAW}


@dataclass(frozen=True)
class EncoderConfig:
    """Which timm backbone each branch uses. ``full`` is the official architecture."""

    pose_backbone: str = "tf_mobilenetv3_small_minimal_100"
    shape_backbone: str = "tf_mobilenetv3_large_minimal_100"
    expression_backbone: str = "tf_mobilenetv3_large_minimal_100"
    input_size: int = 224

    @classmethod
    def full(cls) -> "EncoderConfig":
        return cls()

    @classmethod
    def tiny(cls) -> "EncoderConfig":
        """Random-weight miniature for fast tests (~0.25 M parameters, same heads and outputs)."""
        return cls("test_efficientnet", "test_efficientnet", "test_efficientnet")

    @classmethod
    def named(cls, name: str) -> "EncoderConfig":
        table = {"full": cls.full, "tiny": cls.tiny}
        if name not in table:
            raise ValueError(f"unknown encoder variant {name!r}; choose one of {sorted(table)}")
        return table[name]()


def _backbone(name: str) -> nn.Module:
    timm = require("timm")
    return timm.create_model(name, pretrained=False, features_only=True)


def _pooled_last(backbone: nn.Module, img: torch.Tensor) -> torch.Tensor:
    feat = backbone(img)[-1]
    return F.adaptive_avg_pool2d(feat, 1).flatten(1)


class PoseEncoder(nn.Module):
    """Global rotation and camera. Keys: ``encoder.*``, ``pose_cam_layers.0.*``."""

    def __init__(self, backbone: str):
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
        out = self.pose_cam_layers(_pooled_last(self.encoder, img))
        return {"pose": out[:, :3], "cam": out[:, 3:]}


class ShapeEncoder(nn.Module):
    """Identity coefficients. Keys: ``encoder.*``, ``shape_layers.0.*``."""

    def __init__(self, backbone: str):
        super().__init__()
        self.encoder = _backbone(backbone)
        self.shape_layers = nn.Sequential(nn.Linear(self.encoder.feature_info.channels()[-1], N_SHAPE))

    def init_weights(self) -> None:
        with torch.no_grad():
            self.shape_layers[0].weight.zero_()
            self.shape_layers[0].bias.zero_()

    def forward(self, img: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"shape": self.shape_layers(_pooled_last(self.encoder, img))}


class ExpressionEncoder(nn.Module):
    """Expression, eyelids and jaw. Keys: ``encoder.*``, ``expression_layers.0.*``."""

    def __init__(self, backbone: str):
        super().__init__()
        self.encoder = _backbone(backbone)
        self.expression_layers = nn.Sequential(
            nn.Linear(self.encoder.feature_info.channels()[-1], N_EXPRESSION + N_EYELID + N_JAW))

    def init_weights(self) -> None:
        with torch.no_grad():
            self.expression_layers[0].weight.mul_(0.1)
            self.expression_layers[0].bias.mul_(0.1)

    def forward(self, img: torch.Tensor) -> dict[str, torch.Tensor]:
        p = self.expression_layers(_pooled_last(self.encoder, img))
        e = N_EXPRESSION
        jaw = torch.cat([F.relu(p[:, e + 2:e + 3]), torch.clamp(p[:, e + 3:e + 5], -0.2, 0.2)], dim=1)
        out = {"expression": p[:, :e], "eyelid": torch.clamp(p[:, e:e + 2], 0.0, 1.0), "jaw": jaw}
        if self.training:  # pre-activation values: a supervised loss on them cannot get stuck in a clamp
            out["eyelid_raw"] = p[:, e:e + 2]
            out["jaw_raw"] = p[:, e + 2:e + 5]
        return out


class SmirkEncoder(nn.Module):
    """The three SMIRK encoders. ``forward(image (B,3,H,W) in [0,1])`` -> dict of
    ``pose (B,3)``, ``cam (B,3)``, ``shape (B,300)``, ``expression (B,50)``, ``eyelid (B,2)``, ``jaw (B,3)``.

    State-dict keys match the official checkpoint after stripping ``smirk_encoder.``.
    """

    def __init__(self, config: EncoderConfig | None = None):
        super().__init__()
        self.config = config or EncoderConfig.full()
        self.pose_encoder = PoseEncoder(self.config.pose_backbone)
        self.shape_encoder = ShapeEncoder(self.config.shape_backbone)
        self.expression_encoder = ExpressionEncoder(self.config.expression_backbone)

    def init_weights(self) -> None:
        """Head initialisation SMIRK uses before training (not needed when loading a checkpoint)."""
        self.pose_encoder.init_weights()
        self.shape_encoder.init_weights()
        self.expression_encoder.init_weights()

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.pose_encoder(image)
        out.update(self.shape_encoder(image))
        out.update(self.expression_encoder(image))
        keys = OUTPUT_NAMES + (("eyelid_raw", "jaw_raw") if self.training else ())  # raw: training losses only
        return {k: out[k] for k in keys if k in out}
