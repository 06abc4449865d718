"""SMIRK's image generator: a U-Net with residual blocks at the bottleneck, sigmoid RGB output.

Input ``(B, 6, H, W)``: the shaded render (3 channels, :mod:`.renderer`) concatenated with the
masked image (3 channels, :mod:`.masking`), both in [0, 1]. Output ``(B, 3, H, W)`` in (0, 1).
``H`` and ``W`` must be multiples of 16 (four 2x poolings); SMIRK uses 224.

Architecture of the official configuration (``in_channels=6, out_channels=3, init_features=32,
res_blocks=5``), f = init_features:

* encoder: four double-conv blocks (3x3 conv no bias, BatchNorm, ReLU, twice) with widths
  f, 2f, 4f, 8f, each followed by a 2x2 max-pool; a bottleneck double-conv block of width 16f;
* ``res_blocks`` residual blocks at width 16f: x + [reflect-pad 1, 3x3 conv no bias, BN, ReLU,
  reflect-pad 1, 3x3 conv no bias, BN];
* decoder: four stages of 2x2 stride-2 transposed conv (with bias) halving the width, concatenation
  with the encoder feature map of the same resolution (upsampled first, skip second) and a
  double-conv block; a final 1x1 conv (with bias) and a sigmoid.

State-dict key layout (matches the official ``smirk_generator.*`` keys after the prefix, so the
released generator weights load strictly): ``encoder{k}.enc{k}conv{1,2}.weight``,
``encoder{k}.enc{k}norm{1,2}.{weight,bias,running_mean,running_var,num_batches_tracked}`` for
k = 1..4, ``bottleneck.bottleneckconv1.weight`` / ``bottleneck.bottlenecknorm1.*`` ...,
``resnet_blocks.{i}.conv_block.{1,5}.weight`` (convs) and ``resnet_blocks.{i}.conv_block.{2,6}.*``
(BatchNorms) (indices of the padding/ReLU modules are kept so the numbering matches),
``upconv{k}.{weight,bias}``, ``decoder{k}.dec{k}conv{1,2}.weight``, ``decoder{k}.dec{k}norm{1,2}.*``,
``conv.{weight,bias}``. 31,367,171 parameters in the official configuration (178 state-dict
entries with the BatchNorm statistics).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from smirk_edge.errors import InputError


@dataclass(frozen=True)
class GeneratorConfig:
    """Size of the U-Net. :meth:`official` is SMIRK's; :meth:`tiny` is for fast tests."""

    in_channels: int = 6
    out_channels: int = 3
    init_features: int = 32
    res_blocks: int = 5

    @classmethod
    def official(cls) -> "GeneratorConfig":
        return cls()

    @classmethod
    def tiny(cls) -> "GeneratorConfig":
        return cls(init_features=4, res_blocks=1)


def _double_conv(cin: int, cout: int, name: str) -> nn.Sequential:
    """Two (3x3 conv without bias, BatchNorm, ReLU) layers, named ``{name}conv1``, ``{name}norm1``..."""
    layers: list[tuple[str, nn.Module]] = []
    for k, c_in in ((1, cin), (2, cout)):
        layers += [
            (f"{name}conv{k}", nn.Conv2d(c_in, cout, kernel_size=3, padding=1, bias=False)),
            (f"{name}norm{k}", nn.BatchNorm2d(cout)),
            (f"{name}relu{k}", nn.ReLU(inplace=True)),
        ]
    return nn.Sequential(OrderedDict(layers))


class ResidualBlock(nn.Module):
    """``x + body(x)``, body = reflect-pad, conv3x3, BN, ReLU, reflect-pad, conv3x3, BN (width kept).

    The body is one ``nn.Sequential`` called ``conv_block`` whose indices (convs at 1 and 5,
    BatchNorms at 2 and 6) give the official key names.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, kernel_size=3, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, kernel_size=3, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class SmirkGenerator(nn.Module):
    """The SMIRK U-Net: ``(B, in_channels, H, W)`` -> ``(B, out_channels, H, W)`` in (0, 1).

    Args:
        config: sizes; defaults to the official configuration (6 -> 3 channels, 32 features,
            5 residual blocks).
    """

    def __init__(self, config: GeneratorConfig | None = None):
        super().__init__()
        cfg = config or GeneratorConfig.official()
        self.config = cfg
        f = cfg.init_features
        widths = [f, 2 * f, 4 * f, 8 * f]
        cin = cfg.in_channels
        for k, w in enumerate(widths, start=1):
            setattr(self, f"encoder{k}", _double_conv(cin, w, f"enc{k}"))
            setattr(self, f"pool{k}", nn.MaxPool2d(kernel_size=2, stride=2))
            cin = w
        self.bottleneck = _double_conv(8 * f, 16 * f, "bottleneck")
        self.resnet_blocks = nn.ModuleList(ResidualBlock(16 * f) for _ in range(cfg.res_blocks))
        below = 16 * f
        for k in (4, 3, 2, 1):
            w = widths[k - 1]
            setattr(self, f"upconv{k}", nn.ConvTranspose2d(below, w, kernel_size=2, stride=2))
            setattr(self, f"decoder{k}", _double_conv(2 * w, w, f"dec{k}"))
            below = w
        self.conv = nn.Conv2d(f, cfg.out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.config.in_channels:
            raise InputError(f"generator input must be (B, {self.config.in_channels}, H, W), got {tuple(x.shape)}")
        if x.shape[2] % 16 or x.shape[3] % 16:
            raise InputError(f"generator input height and width must be multiples of 16, got {tuple(x.shape[2:])}")
        skips = []
        h = x
        for k in (1, 2, 3, 4):
            h = getattr(self, f"encoder{k}")(h)
            skips.append(h)
            h = getattr(self, f"pool{k}")(h)
        h = self.bottleneck(h)
        for block in self.resnet_blocks:
            h = block(h)
        for k in (4, 3, 2, 1):
            h = getattr(self, f"upconv{k}")(h)
            h = getattr(self, f"decoder{k}")(torch.cat([h, skips[k - 1]], dim=1))
        return torch.sigmoid(self.conv(h))


def count_parameters(module: nn.Module) -> int:
    """Number of learnable parameters (BatchNorm running statistics excluded)."""
    return sum(p.numel() for p in module.parameters())


def load_generator_state(generator: SmirkGenerator, state) -> SmirkGenerator:
    """Load a stripped ``smirk_generator.*`` state dict strictly (e.g. ``Checkpoint.generator``).

    Raises:
        CheckpointError: missing or unexpected keys or shape mismatches, listed in the message.
    """
    from smirk_edge.errors import CheckpointError

    from .checkpoint import _diff, _format_diff

    if not state:
        raise CheckpointError("the checkpoint holds no 'smirk_generator.*' weights")
    missing, unexpected, shapes = _diff(generator, state)
    if missing or unexpected or shapes:
        raise CheckpointError("generator weights do not match the SMIRK layout: "
                              + _format_diff(missing, unexpected, shapes))
    generator.load_state_dict(dict(state), strict=True)
    return generator
