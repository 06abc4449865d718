"""MediaPipe's face-mesh network as torch modules: a backbone for the SMIRK heads, and the whole net.

The architecture of ``mediapipe/modules/face_landmark/face_landmark.tflite`` (MediaPipe 0.10.21,
Apache-2.0; the 468-point mesh without attention), written here from the graph's operator list;
the .tflite is read only for weights, by ``export/detector/convert_face_mesh.py``. NCHW throughout.

Network (at its native 192 x 192; every convolution has a bias, every activation is a per-channel
PReLU, every depthwise convolution is 3 x 3 with TF ``SAME`` padding):

* stem: 3 x 3 conv, stride 2, 3 -> 16 channels (96 x 96);
* 14 residual blocks (:class:`ResidualBlock`: depthwise 3 x 3 -> 1 x 1 conv, added to the input or,
  when the block halves the size, to a 2 x 2 max-pool of it padded with zero channels; then PReLU):
  16, 16 | 32 (48 x 48), 32, 32 | 64 (24 x 24), 64, 64 | 128 (12 x 12), 128, 128 | 128 (6 x 6),
  128, 128. This is the part both outputs share.
* landmark branch: blocks 128 (3 x 3), 128, 128; 1 x 1 conv 128 -> 32 + PReLU; block 32; then the
  output conv 3 x 3, stride 3, ``VALID``, 32 -> 1404 = 468 x (x, y, z).
* score branch: block 128 (3 x 3); 1 x 1 conv 128 -> 32 + PReLU; block 32; output conv 3 x 3,
  stride 3, 32 -> 1 (face-presence logit).

Input: RGB in [0, 1], which is MediaPipe's own range for this model (its ``FaceLandmarkCpu`` graph
feeds ``ImageToTensorCalculator`` output with ``output_tensor_float_range {min: 0, max: 1}``), so the
SMIRK crop ``(B, 3, 224, 224)`` in [0, 1] goes in unchanged. Any size works: TF ``SAME`` padding is
computed from the input's size in Python (an exported graph, whose spatial size is static, holds
constants), and the shortcut max-pool rounds up like the strided convolution beside it (identical
to the .tflite's ``VALID`` pool at even sizes). At 224 the shared part ends at 7 x 7 and the
landmark branch at 4 x 4.

:class:`FaceMeshBackbone` (what the ``mesh`` encoder variant uses, registered name
:data:`MESH_BACKBONE`, with its last map flattened: ``spatial_input``) is the stem, the 14 shared
blocks and the landmark branch's three 128-channel blocks: it stops before the branch's 1 x 1
projection to 32 channels, so the SMIRK heads read 128 channels at each of the 4 x 4 positions, not 32 (a linear head on 32 would cap the 361 outputs at rank 32). Frozen, with
the converted weights, on SMIRK's 224 test crops of the expressive photos, the project's linear
expression probe (``training.evaluate.linear_probe``) reads 0.798 from these pooled 128 channels
and 0.779 from the pooled 32 after the projection (random weights: 0.721; majority 0.732). It has timm's
``features_only`` interface: ``forward(x) -> list`` of feature maps, one per stage (the last is
what the encoder pools), and ``feature_info.channels()`` / ``.reduction()``.
:class:`FaceMeshNet` is the whole network (for the parity check against the TFLite interpreter);
its state-dict keys are a superset of the backbone's, so the converted file warm-starts either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

#: The reserved backbone name ``runtimes.torch_encoder._backbone`` resolves without timm: the
#: backbone with its last map flattened for SMIRK's 224 crop (``FaceMeshBackbone(spatial_input=224)``).
MESH_BACKBONE = "mediapipe_face_mesh"
#: The network's native input side (pixels) and landmark count.
MESH_INPUT_SIZE = 192
N_MESH_LANDMARKS = 468

# (in, out, stride) of the shared blocks and of the branches' blocks, in the .tflite's order
SHARED_BLOCKS: tuple[tuple[int, int, int], ...] = (
    (16, 16, 1), (16, 16, 1),
    (16, 32, 2), (32, 32, 1), (32, 32, 1),
    (32, 64, 2), (64, 64, 1), (64, 64, 1),
    (64, 128, 2), (128, 128, 1), (128, 128, 1),
    (128, 128, 2), (128, 128, 1), (128, 128, 1),
)
LANDMARK_BLOCKS: tuple[tuple[int, int, int], ...] = ((128, 128, 2), (128, 128, 1), (128, 128, 1))
SCORE_BLOCKS: tuple[tuple[int, int, int], ...] = ((128, 128, 2),)
BRANCH_WIDTH = 32


def tf_same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF ``SAME`` padding (before, after) along one axis of ``size`` pixels: the odd pixel goes after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    top, bottom = tf_same_pads(int(x.shape[-2]), kernel, stride)
    left, right = tf_same_pads(int(x.shape[-1]), kernel, stride)
    if top == bottom == left == right == 0:
        return x
    return F.pad(x, (left, right, top, bottom))


class PReLU(nn.Module):
    """Per-channel PReLU, ``max(x, 0) + a * min(x, 0)``, computed as ``a * x + (1 - a) * relu(x)``.

    The same function and the same parameter as ``nn.PReLU(C)`` (``weight (C,)``, initialised to
    0.25); written out because ONNX Runtime's CPU ``PRelu`` kernel is slow: with ``nn.PReLU`` the
    exported ``mesh`` encoder spends half its time there (5.6 ms at 1 thread), written this way it
    runs in 2.7 ms; OpenVINO is unchanged (2.3 vs 2.4 ms). ``(B, C, H, W) -> (B, C, H, W)``.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), 0.25))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.weight.view(1, -1, 1, 1)
        return a * x + (1 - a) * F.relu(x)


class ConvPReLU(nn.Module):
    """``k x k`` conv (TF ``SAME``, bias) + per-channel PReLU. Keys: ``conv.*``, ``act.weight``."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1):
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.conv = nn.Conv2d(cin, cout, kernel, stride)
        self.act = PReLU(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(_pad_same(x, self.kernel, self.stride)))


class ResidualBlock(nn.Module):
    """Depthwise 3 x 3 (TF ``SAME``) -> 1 x 1 conv, plus the shortcut, then PReLU.

    The shortcut is the input at stride 1; at stride 2 a 2 x 2 max-pool of it (stride 2, rounding
    up) with ``cout - cin`` zero channels appended. ``(B, cin, H, W) -> (B, cout, ceil(H/s), ceil(W/s))``.
    Keys: ``dw.*``, ``pw.*``, ``act.weight``.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        if cout < cin or stride not in (1, 2):
            raise ValueError(f"unsupported block {cin} -> {cout}, stride {stride}")
        self.cin, self.cout, self.stride = cin, cout, stride
        self.dw = nn.Conv2d(cin, cin, 3, stride, groups=cin)
        self.pw = nn.Conv2d(cin, cout, 1)
        self.act = PReLU(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pw(self.dw(_pad_same(x, 3, self.stride)))
        s = x if self.stride == 1 else F.max_pool2d(x, 2, 2, ceil_mode=True)
        if self.cout > self.cin:
            s = F.pad(s, (0, 0, 0, 0, 0, self.cout - self.cin))
        return self.act(s + y)


def _blocks(blocks: Sequence[tuple[int, int, int]]) -> nn.Sequential:
    return nn.Sequential(*[ResidualBlock(*b) for b in blocks])


def _narrow(cin: int) -> nn.Sequential:
    """The end of a branch before its output conv: 1 x 1 projection ``cin -> 32`` + PReLU, a 32 block."""
    return nn.Sequential(ConvPReLU(cin, BRANCH_WIDTH), ResidualBlock(BRANCH_WIDTH, BRANCH_WIDTH))


@dataclass(frozen=True)
class FeatureInfo:
    """timm's ``feature_info`` subset the encoder reads: per returned feature map, its channels and
    its reduction (input pixels per feature pixel)."""

    channel_list: tuple[int, ...]
    reduction_list: tuple[int, ...]

    def channels(self) -> list[int]:
        return list(self.channel_list)

    def reduction(self) -> list[int]:
        return list(self.reduction_list)


def mesh_side(input_size: int) -> int:
    """Side in pixels of the landmark branch's last map for a square input of ``input_size``
    (six stride-2 steps, each rounding up: 224 -> 4, 192 -> 3)."""
    side = int(input_size)
    for _ in range(6):
        side = -(-side // 2)
    return side


class FaceMeshBackbone(nn.Module):
    """The face-mesh network up to the landmark branch's last 128-channel block, as a
    ``features_only`` backbone.

    ``forward(image (B, 3, H, W) RGB in [0, 1])`` -> list of 6 feature maps, the last shared block
    of each size and the landmark branch's: at 192 input ``(B, 16, 96, 96)``, ``(B, 32, 48, 48)``,
    ``(B, 64, 24, 24)``, ``(B, 128, 12, 12)``, ``(B, 128, 6, 6)``, ``(B, 128, 3, 3)``; at 224
    ``112, 56, 28, 14, 7, 4`` pixels. ``feature_info.channels()`` = ``[16, 32, 64, 128, 128, 128]``.
    Keys: ``stem.*``, ``blocks.{0..13}.*``, ``landmark_branch.{0..2}.*``.

    ``spatial_input``: an input side (224 for SMIRK's crop); the last feature map then comes out
    flattened, ``(B, 128 * side * side, 1, 1)`` (128 x 4 x 4 = 2,048 at 224), so that the encoder's
    global pooling keeps *where* each feature is: with the plain 128 pooled channels a left-only
    and a right-only expression differ only in position, and the heads could not tell them apart
    (the pooled mesh variant read 0.56 on the one-sided renders; MediaPipe's own landmark head reads
    the 3 x 3 map position by position too). The input must then be that size.
    """

    def __init__(self, spatial_input: int | None = None) -> None:
        super().__init__()
        self.spatial_side = None if spatial_input is None else mesh_side(spatial_input)
        self.stem = ConvPReLU(3, 16, kernel=3, stride=2)
        self.blocks = nn.Sequential(*[ResidualBlock(*b) for b in SHARED_BLOCKS])
        self.landmark_branch = _blocks(LANDMARK_BLOCKS)
        # the last block of each size (indices into ``blocks``)
        self._taps = tuple(i for i in range(len(SHARED_BLOCKS))
                           if i + 1 == len(SHARED_BLOCKS) or SHARED_BLOCKS[i + 1][2] == 2)
        last = LANDMARK_BLOCKS[-1][1] * (1 if self.spatial_side is None else self.spatial_side ** 2)
        self.feature_info = FeatureInfo(
            tuple(SHARED_BLOCKS[i][1] for i in self._taps) + (last,),
            tuple(2 * 2 ** sum(1 for b in SHARED_BLOCKS[:i + 1] if b[2] == 2) for i in self._taps) + (64,))

    def shared(self, image: torch.Tensor) -> list[torch.Tensor]:
        """The shared part's feature maps (the first 5 of :meth:`forward`)."""
        x = self.stem(image)
        feats = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self._taps:
                feats.append(x)
        return feats

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        feats = self.shared(image)
        last = self.landmark_branch(feats[-1])
        if self.spatial_side is not None:
            side = self.spatial_side
            if int(last.shape[-1]) != side or int(last.shape[-2]) != side:
                raise ValueError(f"this backbone flattens a {side} x {side} map (input {tuple(image.shape[-2:])} "
                                 f"gives {tuple(last.shape[-2:])}); feed the input size it was built for")
            last = last.flatten(1)[:, :, None, None]
        feats.append(last)
        return feats


class FaceMeshNet(FaceMeshBackbone):
    """The whole MediaPipe face-mesh network (the parity reference of the converted weights).

    ``forward(image (B, 3, 192, 192) RGB in [0, 1])`` -> ``landmarks (B, 468, 3)``: x, y in input
    pixels (0..192, origin at the top-left corner), z in the same pixel scale relative to the face
    centre (MediaPipe's raw tensor, before its projection to the image); ``score (B, 1)``: the
    face-presence logit (MediaPipe applies a sigmoid). Keys: the backbone's, ``landmark_head.{0,1}.*``,
    ``landmark_out.*``, ``score_branch.0.*``, ``score_head.{0,1}.*``, ``score_out.*``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.landmark_head = _narrow(LANDMARK_BLOCKS[-1][1])
        self.landmark_out = nn.Conv2d(BRANCH_WIDTH, 3 * N_MESH_LANDMARKS, 3, 3)
        self.score_branch = _blocks(SCORE_BLOCKS)
        self.score_head = _narrow(SCORE_BLOCKS[-1][1])
        self.score_out = nn.Conv2d(BRANCH_WIDTH, 1, 3, 3)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[override]
        shared = self.shared(image)[-1]
        lmk = self.landmark_out(self.landmark_head(self.landmark_branch(shared)))
        score = self.score_out(self.score_head(self.score_branch(shared)))
        # (B, 1404, 1, 1) -> (B, 468, 3): the tflite's channel order is point-major, (x, y, z) minor
        return {"landmarks": lmk.flatten(1).reshape(-1, N_MESH_LANDMARKS, 3), "score": score.flatten(1)}


def backbone_state(net_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The :class:`FaceMeshBackbone` part of a :class:`FaceMeshNet` state dict (the converted file)."""
    keys = FaceMeshBackbone().state_dict().keys()
    return {k: net_state[k] for k in keys if k in net_state}

