"""SMIRK's training losses, their stage weights, and a perceptual loss that needs no downloads.

Conventions: landmarks are in SMIRK NDC (``pixel / 112 - 1`` at 224: x right, y down), images are
``(B, 3, H, W)`` RGB in [0, 1], parameters are the encoder's outputs (``expression (B, 50)``,
``jaw (B, 3)``, ``eyelid (B, 2)``, ``shape (B, 300)``). Every loss returns a scalar tensor.

Stage weights (:class:`LossWeights`, SMIRK_FACTS.md "Neural renderer and training"):

* stage 1 (all encoders, no generator): landmarks x100 (17 contour + 105 MediaPipe points),
  expression L2 x1e-2, shape supervision x10. SMIRK uses MICA for the shape; MICA is not available
  here, so ``shape_prior`` replaces it with :func:`shape_supervision_loss`: an L2 pull toward the
  mean under the PCA prior (FLAME shape coefficients are in units of standard deviations, so the
  Gaussian prior's negative log-likelihood is ``0.5 * |beta|^2``) plus identity consistency, the
  squared difference of the shapes predicted for two augmentations of the same photo (the same
  person must get the same shape). The inner weights (:class:`ShapeSupervisionWeights`) are our
  choice, not tuned against MICA.
* stage 2 (expression encoder + generator): landmarks x100, L1 reconstruction x10, perceptual x10,
  jaw reg x1e-2, expression reg x1e-3, cycle x1 (inner weights: expression MSE x1, jaw x10,
  eyelid x10, shape x1; :class:`CycleWeights`). SMIRK's "em1" checkpoint adds an emotion loss x1
  that needs a pretrained emotion network: it is OMITTED here (weight 0; a non-zero weight is
  refused).

Perceptual loss. SMIRK uses VGG16 (ImageNet) features; no VGG weights can be downloaded here, so
the default is :class:`StructuralPerceptualLoss`, a weight-free, deterministic multi-scale loss:
``(1 - SSIM)`` averaged over 4 scales (MS-SSIM weights, additive so it cannot produce NaN
gradients) plus a Laplacian-pyramid L1 (Bojanowski et al. 2018). Both compare local structure
(edges, contrast, texture statistics) at several scales, which is what the VGG loss contributes on
top of L1 for a generator, without a learnt feature space whose quality we could not check (random,
untrained conv features are a weaker and seed-dependent proxy). Its magnitude differs from the
VGG loss, so the x10 weight is a starting point. With user-supplied torchvision VGG16/19 weights,
:class:`VGGPerceptualLoss` reproduces SMIRK's loss (L1 on relu1_2, relu2_2, relu3_3, relu4_3,
SMIRK's ``x * 0.5 + 0.5`` input mapping and ImageNet normalisation); the file is opened with
``torch.load(weights_only=True)``. :func:`make_perceptual_loss` picks one.
"""

from __future__ import annotations

import difflib
import math
import os
from dataclasses import asdict, dataclass, fields
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from smirk_edge.errors import CheckpointError, InputError

N_CONTOUR = 17


# --------------------------------------------------------------------------- weights

def _from_mapping(cls, values: Mapping[str, float], base):
    names = {f.name for f in fields(cls)}
    unknown = [k for k in values if k not in names]
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k, sorted(names), n=1)
            hints.append(f"'{k}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
        raise InputError(f"unknown {cls.__name__} keys: {', '.join(hints)}; known: {', '.join(sorted(names))}")
    out = dict(asdict(base))
    for k, v in values.items():
        try:
            out[k] = float(v)
        except (TypeError, ValueError):
            raise InputError(f"{cls.__name__}.{k} must be a number, got {v!r}") from None
        if not math.isfinite(out[k]) or out[k] < 0:
            raise InputError(f"{cls.__name__}.{k} must be finite and >= 0, got {v!r}")
    return cls(**out)


@dataclass(frozen=True)
class CycleWeights:
    """Inner weights of the cycle loss (SMIRK: expression 1, jaw 10, eyelid 10, shape 1)."""

    expression: float = 1.0
    jaw: float = 10.0
    eyelid: float = 10.0
    shape: float = 1.0

    @classmethod
    def from_mapping(cls, values: Mapping[str, float]) -> "CycleWeights":
        return _from_mapping(cls, values, cls())


@dataclass(frozen=True)
class SyntheticWeights:
    """Inner weights of the synthetic-supervision term (our addition; see :func:`synthetic_param_loss`)."""

    expression: float = 1.0
    jaw: float = 10.0
    eyelid: float = 1.0
    pose: float = 1.0
    #: supervise only the first N expression slots (0 = all). The stand-in's 16 named slots move the
    #: face by pixels; its data components by a fraction of one, and an L1 on what a render cannot
    #: show only adds gradient noise.
    expression_slots: int = 0
    #: squared-error weights on the same expression slots and on the raw eyelids, added to the L1
    #: terms above. An L1 alone regresses to the median: a slot that is active in fewer than half of
    #: the renders (every named one) stays at exactly 0 until the encoder is sure of it, which is how
    #: the one-sided slots of the first default model collapsed. The squared error regresses to the
    #: mean and pulls hardest where the error is largest.
    expression_l2: float = 0.0
    eyelid_l2: float = 0.0
    #: squared error of the left-minus-right difference of each left/right slot pair (and of the two
    #: eyelids) against the rendered one: it rewards the correct side even while the slot's size is
    #: still uncertain. Needs ``lr_pairs`` in :func:`synthetic_param_loss`.
    lr_pairs: float = 0.0

    @classmethod
    def from_mapping(cls, values: Mapping[str, float]) -> "SyntheticWeights":
        return _from_mapping(cls, values, cls())


@dataclass(frozen=True)
class ShapeSupervisionWeights:
    """Inner weights of the MICA replacement: PCA-prior L2 and identity consistency (our choice)."""

    prior: float = 0.1
    consistency: float = 1.0

    @classmethod
    def from_mapping(cls, values: Mapping[str, float]) -> "ShapeSupervisionWeights":
        return _from_mapping(cls, values, cls())


@dataclass(frozen=True)
class LossWeights:
    """Outer loss weights of one training stage; build with :meth:`stage1`, :meth:`stage2` or
    :meth:`from_mapping` (a config file's dict, on top of a stage's defaults).

    Fields: ``landmark`` (applied to the contour and the MediaPipe losses each), ``expression_reg``,
    ``jaw_reg``, ``shape_prior`` (the MICA replacement), ``reconstruction`` (L1), ``perceptual``,
    ``cycle``, ``emotion`` (always 0: not implemented), ``synthetic`` (our addition, 0 in SMIRK:
    parameter supervision on rendered faces of known parameters, :func:`synthetic_param_loss`),
    ``real68`` (ours, 0 in SMIRK: MSE on human-annotated 68 points, 300-W, where an item has them;
    the item's ``real68`` mask, and the contour term then skips those points); ``teacher`` and
    ``teacher_landmarks`` (ours, distillation: :func:`teacher_losses`, with ``model.teacher``);
    ``emotion_label`` (ours, 0 in SMIRK: cross-entropy of a linear classifier on the expression, jaw
    and eyelid parameters against human emotion labels of the photos that have one,
    :func:`emotion_label_loss`; ``data.emotion_csv`` and ``data.emotion_subjects`` say which).
    """

    landmark: float = 0.0
    expression_reg: float = 0.0
    jaw_reg: float = 0.0
    shape_prior: float = 0.0
    reconstruction: float = 0.0
    perceptual: float = 0.0
    cycle: float = 0.0
    emotion: float = 0.0
    synthetic: float = 0.0
    real68: float = 0.0
    teacher: float = 0.0
    teacher_landmarks: float = 0.0
    emotion_label: float = 0.0

    def __post_init__(self):
        if self.emotion != 0:
            raise InputError("the emotion loss is not implemented (it needs a pretrained emotion network); "
                             "set emotion to 0")

    @classmethod
    def stage1(cls) -> "LossWeights":
        """Encoders only: landmarks x100, expression L2 x1e-2, shape supervision x10."""
        return cls(landmark=100.0, expression_reg=1e-2, shape_prior=10.0)

    @classmethod
    def stage2(cls) -> "LossWeights":
        """Expression encoder + generator (emotion loss omitted)."""
        return cls(landmark=100.0, reconstruction=10.0, perceptual=10.0, jaw_reg=1e-2, expression_reg=1e-3,
                   cycle=1.0)

    @classmethod
    def from_mapping(cls, values: Mapping[str, float], stage: int | None = None) -> "LossWeights":
        """Weights from a dict; unspecified keys take the ``stage`` defaults (1, 2) or 0 when None."""
        if stage not in (None, 1, 2):
            raise InputError(f"stage must be 1, 2 or None, got {stage!r}")
        base = {None: cls, 1: cls.stage1, 2: cls.stage2}[stage]()
        return _from_mapping(cls, values, base)

    def combine(self, terms: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Weighted sum of the loss ``terms`` (keys are field names; ``landmark`` may be given as
        ``landmark_contour`` and ``landmark_mediapipe``). Terms with weight 0 are skipped.

        Returns the total (a tensor) and a dict of every term's unweighted float value for logging.
        """
        total = None
        log: dict[str, float] = {}
        for key, value in terms.items():
            field = "landmark" if key.startswith("landmark") else key
            if not hasattr(self, field):
                raise InputError(f"no weight for loss term '{key}'")
            log[key] = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
            w = getattr(self, field)
            if w == 0:
                continue
            total = w * value if total is None else total + w * value
        if total is None:
            total = torch.zeros(())
        return total, log


# --------------------------------------------------------------------------- landmarks and regularisers

def _zero_like(t: torch.Tensor) -> torch.Tensor:
    return t.sum() * 0.0  # keeps the graph (and device/dtype)


LANDMARK_ERRORS = ("squared", "distance")
_DISTANCE_EPS = 1e-3  # NDC (0.11 px of a 224 crop): keeps the distance's gradient finite at 0


def landmark_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None,
                  error: str = "squared") -> torch.Tensor:
    """Masked landmark error in NDC.

    Args:
        pred: ``(B, L, 2+)`` predicted landmarks (only x, y are used).
        target: ``(B, L, 2+)`` ground truth.
        valid: optional ``(B,)`` per-image or ``(B, L)`` per-point mask (bool or 0/1 float weights).
        error: ``"squared"`` (SMIRK): the mean of ``(pred - target)^2`` over the valid points and
            both coordinates (``F.mse_loss`` on the valid images when the mask is per image).
            ``"distance"`` (ours): the mean point-to-point distance, ``sqrt(d^2 + eps^2) - eps``
            with ``eps = 1e-3``, the quantity NME averages; its pull on a point does not grow
            with the point's error, so outliers (bad pseudo-labels, occluded points) weigh less
            and the many small errors more.
    Returns:
        the weighted mean over the valid points; 0 when nothing is valid.
    """
    if error not in LANDMARK_ERRORS:
        raise InputError(f"landmark error must be one of {', '.join(LANDMARK_ERRORS)}, got {error!r}")
    if pred.dim() != 3 or target.dim() != 3 or pred.shape[:2] != target.shape[:2] or pred.shape[-1] < 2 \
            or target.shape[-1] < 2:
        raise InputError(f"landmarks must be (B, L, 2) with matching B and L, got {tuple(pred.shape)} "
                         f"and {tuple(target.shape)}")
    B, L = pred.shape[:2]
    d2 = ((pred[..., :2] - target[..., :2].to(pred.dtype)) ** 2).sum(-1)  # (B, L)
    if error == "distance":
        e, scale = torch.sqrt(d2 + _DISTANCE_EPS ** 2) - _DISTANCE_EPS, 1.0
    else:
        e, scale = d2, 2.0
    if valid is None:
        return e.mean() / scale
    w = torch.as_tensor(valid, device=pred.device).to(pred.dtype)
    if w.shape == (B,):
        w = w[:, None].expand(B, L)
    if w.shape != (B, L):
        raise InputError(f"valid must have shape ({B},) or ({B}, {L}), got {tuple(w.shape)}")
    denom = w.sum()
    if float(denom) == 0.0:
        return _zero_like(pred)
    return (e * w).sum() / (scale * denom)


def contour_landmark_loss(pred68: torch.Tensor, target68: torch.Tensor,
                          valid: torch.Tensor | None = None, error: str = "squared") -> torch.Tensor:
    """:func:`landmark_loss` on the 17 jaw-contour points of the 68 (FAN) landmarks.

    ``pred68, target68``: ``(B, 68, 2+)``; ``valid``: ``(B,)`` (images with FAN landmarks) or ``(B, 68)``.
    """
    if pred68.dim() != 3 or pred68.shape[1] != 68 or target68.dim() != 3 or target68.shape[1] != 68:
        raise InputError(f"68-point landmarks must be (B, 68, 2), got {tuple(pred68.shape)} and {tuple(target68.shape)}")
    if valid is not None:
        valid = torch.as_tensor(valid, device=pred68.device)
        if valid.dim() == 2:
            valid = valid[:, :N_CONTOUR]
    return landmark_loss(pred68[:, :N_CONTOUR], target68[:, :N_CONTOUR], valid, error)


def mediapipe_landmark_loss(pred105: torch.Tensor, target105: torch.Tensor,
                            valid: torch.Tensor | None = None, error: str = "squared") -> torch.Tensor:
    """:func:`landmark_loss` on the 105 MediaPipe-indexed points (``(B, 105, 2+)``)."""
    if pred105.dim() != 3 or pred105.shape[1] != 105 or target105.dim() != 3 or target105.shape[1] != 105:
        raise InputError(f"MediaPipe landmarks must be (B, 105, 2), got {tuple(pred105.shape)} "
                         f"and {tuple(target105.shape)}")
    return landmark_loss(pred105, target105, valid, error)


def l2_regularizer(params: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
    """``mean((params - reference)^2)`` (reference 0): SMIRK's expression / jaw / shape regulariser."""
    if reference is None:
        return (params ** 2).mean()
    if reference.shape != params.shape:
        raise InputError(f"reference shape {tuple(reference.shape)} != params shape {tuple(params.shape)}")
    return ((params - reference) ** 2).mean()


expression_regularizer = l2_regularizer
jaw_regularizer = l2_regularizer


def shape_supervision_loss(shape: torch.Tensor, shape_other: torch.Tensor | None = None,
                           weights: ShapeSupervisionWeights = ShapeSupervisionWeights()) -> torch.Tensor:
    """The MICA replacement: ``prior * mean(shape^2) + consistency * mean((shape - shape_other)^2)``.

    Args:
        shape: ``(B, 300)`` shape coefficients (FLAME units: standard deviations of the PCA).
        shape_other: optional ``(B, 300)`` shapes predicted for a second augmentation of the same
            images; without it only the prior term is used.
        weights: inner weights.
    """
    if shape.dim() != 2:
        raise InputError(f"shape must be (B, n_shape), got {tuple(shape.shape)}")
    loss = weights.prior * (shape ** 2).mean()
    if shape_other is not None:
        if shape_other.shape != shape.shape:
            raise InputError(f"shape_other {tuple(shape_other.shape)} must match shape {tuple(shape.shape)}")
        loss = loss + weights.consistency * ((shape - shape_other) ** 2).mean()
    return loss


def synthetic_param_loss(pred: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor],
                         weights: SyntheticWeights = SyntheticWeights(),
                         lr_pairs: Sequence[tuple[int, int]] = ()) -> torch.Tensor:
    """Parameter loss on synthetic faces: what the encoder predicts from a render vs the parameters
    it was rendered from (``expression``, ``jaw``, ``eyelid``, ``pose`` as axis-angle; keys missing
    from ``pred`` are skipped, e.g. ``pose`` in stage 2 where only the expression branch learns).

    L1 per parameter group, plus the optional squared-error terms of :class:`SyntheticWeights`
    (``expression_l2``, ``eyelid_l2``) and the left/right difference term (``lr_pairs`` weight,
    over the given expression slot pairs ``(left, right)`` and the eyelid pair).

    This is what ties the face model's named slots to what they look like: landmarks alone let a
    one-sided smile be spread over any mix of components, the renders of a left-only slot do not.
    Eyelids and jaw are compared before the encoder's clamp / ReLU when ``pred`` carries
    ``eyelid_raw`` / ``jaw_raw`` (the encoder adds them in training mode): a clamped output has no
    gradient, and an eyelid stuck below 0 would never learn to close.
    """
    terms: list[torch.Tensor] = []

    def pair(k: str) -> tuple[torch.Tensor, torch.Tensor]:
        if k not in target:
            raise InputError(f"synthetic_param_loss needs the ground-truth '{k}'")
        p, t = pred.get(f"{k}_raw", pred[k]), target[k]
        if k == "expression" and weights.expression_slots:
            p, t = p[:, :int(weights.expression_slots)], t[:, :int(weights.expression_slots)]
        if p.shape != t.shape:
            raise InputError(f"synthetic_param_loss: '{k}' shapes differ: {tuple(p.shape)} vs "
                             f"{tuple(target[k].shape)}")
        return p, t.detach()

    for k in ("expression", "jaw", "eyelid", "pose"):
        w = getattr(weights, k)
        if w and k in pred:
            p, t = pair(k)
            terms.append(w * F.l1_loss(p, t))
    for k, w in (("expression", weights.expression_l2), ("eyelid", weights.eyelid_l2)):
        if w and k in pred:
            p, t = pair(k)
            terms.append(w * F.mse_loss(p, t))
    if weights.lr_pairs and ("expression" in pred or "eyelid" in pred):
        diffs_p, diffs_t = [], []
        if "expression" in pred and lr_pairs:
            p, t = pair("expression")
            idx = torch.tensor([ab for ab in lr_pairs if max(ab) < p.shape[1]], dtype=torch.long, device=p.device)
            if len(idx):
                diffs_p.append(p[:, idx[:, 0]] - p[:, idx[:, 1]])
                diffs_t.append(t[:, idx[:, 0]] - t[:, idx[:, 1]])
        if "eyelid" in pred:
            p, t = pair("eyelid")
            diffs_p.append(p[:, :1] - p[:, 1:2])
            diffs_t.append(t[:, :1] - t[:, 1:2])
        terms.append(weights.lr_pairs * F.mse_loss(torch.cat(diffs_p, 1), torch.cat(diffs_t, 1)))
    if not terms:
        raise InputError("synthetic_param_loss: no parameter to supervise (all weights 0 or keys missing)")
    return torch.stack(terms).sum()


def cycle_loss(recon: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor],
               weights: CycleWeights = CycleWeights(), use_eyelids: bool = True,
               use_shape: bool = True) -> torch.Tensor:
    """SMIRK's cycle expression consistency: re-encoded parameters vs the augmented ones they were rendered from.

    ``expression * MSE(expression) + jaw * MSE(jaw) + eyelid * MSE(eyelid) + shape * MSE(shape)``
    (SMIRK drops the shape term when the generator is frozen in the cycle step: ``use_shape=False``).
    Both mappings hold ``expression``, ``jaw``, ``eyelid``, ``shape`` as ``(N, k)`` tensors; the
    targets are detached.
    """
    keys = [("expression", weights.expression), ("jaw", weights.jaw)]
    if use_eyelids:
        keys.append(("eyelid", weights.eyelid))
    if use_shape:
        keys.append(("shape", weights.shape))
    total = None
    for k, w in keys:
        if k not in recon or k not in target:
            raise InputError(f"cycle_loss needs '{k}' in both the re-encoded and the target parameters")
        if recon[k].shape != target[k].shape:
            raise InputError(f"cycle_loss: '{k}' shapes differ: {tuple(recon[k].shape)} vs {tuple(target[k].shape)}")
        term = w * F.mse_loss(recon[k], target[k].detach())
        total = term if total is None else total + term
    return total


# --------------------------------------------------------------------------- image losses

def reconstruction_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """L1 between images ``(B, C, H, W)``; with ``mask (B, 1, H, W)`` the mean over masked pixels.

    SMIRK averages over the whole image (``mask=None``).
    """
    if pred.shape != target.shape or pred.dim() != 4:
        raise InputError(f"images must be (B, C, H, W) of equal shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    diff = (pred - target).abs()
    if mask is None:
        return diff.mean()
    if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[0] != pred.shape[0] or mask.shape[2:] != pred.shape[2:]:
        raise InputError(f"mask must be (B, 1, H, W) matching the images, got {tuple(mask.shape)}")
    m = mask.to(pred.dtype)
    denom = m.sum() * pred.shape[1]
    if float(denom) == 0.0:
        return _zero_like(pred)
    return (diff * m).sum() / denom


def _gaussian_kernel(size: int, sigma: float, dtype, device) -> torch.Tensor:
    x = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2.0
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def _blur(x: torch.Tensor, k1d: torch.Tensor, padding: str | int = 0) -> torch.Tensor:
    C = x.shape[1]
    n = k1d.numel()
    kx = k1d.view(1, 1, 1, n).expand(C, 1, 1, n)
    ky = k1d.view(1, 1, n, 1).expand(C, 1, n, 1)
    if padding == "reflect":
        p = n // 2
        x = F.pad(x, (p, p, p, p), mode="reflect")
    return F.conv2d(F.conv2d(x, kx, groups=C), ky, groups=C)


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5,
         data_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM ``(B,)`` of images ``(B, C, H, W)`` (Gaussian window, valid convolution)."""
    k = _gaussian_kernel(window, sigma, x.dtype, x.device)
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    mx, my = _blur(x, k), _blur(y, k)
    sxx = _blur(x * x, k) - mx ** 2
    syy = _blur(y * y, k) - my ** 2
    sxy = _blur(x * y, k) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1)


def laplacian_pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Laplacian pyramid of ``(B, C, H, W)``: ``levels`` band-pass images then the low-pass residual."""
    k = _gaussian_kernel(5, 1.0, x.dtype, x.device)
    out = []
    cur = x
    for _ in range(levels):
        low = _blur(cur, k, padding="reflect")
        down = low[..., ::2, ::2]
        up = F.interpolate(down, size=cur.shape[-2:], mode="bilinear", align_corners=False)
        out.append(cur - up)
        cur = down
    out.append(cur)
    return out


class StructuralPerceptualLoss(nn.Module):
    """Weight-free perceptual loss: multi-scale ``(1 - SSIM)`` + Laplacian-pyramid L1.

    ``loss = ssim_weight * sum_s w_s (1 - SSIM_s) + lap_weight * sum_j 2^j mean|L_j(x) - L_j(y)|``
    with MS-SSIM's scale weights (renormalised over ``scales``) and pyramid levels j = 0..levels
    (band-pass levels then the low-pass residual; coarser levels weigh more because their
    differences are averaged over fewer pixels). Inputs ``(B, 3, H, W)`` in [0, 1]; returns a scalar.
    Deterministic, no parameters, no downloads.
    """

    MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)

    def __init__(self, scales: int = 4, levels: int = 4, ssim_weight: float = 1.0, lap_weight: float = 1.0):
        super().__init__()
        if not 1 <= scales <= 5 or levels < 1:
            raise InputError(f"scales must be 1..5 and levels >= 1, got {scales}, {levels}")
        w = torch.tensor(self.MS_SSIM_WEIGHTS[:scales])
        self.register_buffer("scale_weights", w / w.sum(), persistent=False)
        self.scales = scales
        self.levels = levels
        self.ssim_weight = ssim_weight
        self.lap_weight = lap_weight

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.shape != target.shape or pred.dim() != 4:
            raise InputError(f"images must be (B, C, H, W) of equal shape, got {tuple(pred.shape)} "
                             f"and {tuple(target.shape)}")
        min_side = 11 * 2 ** (self.scales - 1)
        if min(pred.shape[-2:]) < min_side:
            raise InputError(f"images must be at least {min_side} pixels for {self.scales} SSIM scales")
        loss = pred.new_zeros(())
        x, y = pred, target
        for s in range(self.scales):
            if s:
                x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
            loss = loss + self.ssim_weight * self.scale_weights[s].to(pred.dtype) * (1 - ssim(x, y)).mean()
        for j, (a, b) in enumerate(zip(laplacian_pyramid(pred, self.levels), laplacian_pyramid(target, self.levels))):
            loss = loss + self.lap_weight * (2.0 ** j) * (a - b).abs().mean()
        return loss


# torchvision VGG feature indices after which SMIRK taps (relu1_2, relu2_2, relu3_3, relu4_3 for VGG16)
_VGG_SLICES = {"vgg16": (4, 9, 16, 23), "vgg19": (4, 9, 18, 27)}


def _vgg_features(torchvision, arch: str) -> nn.Sequential:
    """The convolutional part of torchvision's VGG (without building the 120M-parameter classifier)."""
    try:
        from torchvision.models.vgg import cfgs, make_layers
        return make_layers(cfgs[{"vgg16": "D", "vgg19": "E"}[arch]], batch_norm=False)
    except (ImportError, KeyError, TypeError):  # torchvision moved its internals: build the full model
        return getattr(torchvision.models, arch)(weights=None).features


class VGGPerceptualLoss(nn.Module):
    """SMIRK's VGG perceptual loss with user-supplied torchvision weights (no download).

    Args:
        weights_path: a ``torch.save``-d state dict of ``torchvision.models.vgg16`` / ``vgg19``
            (full model: ``features.*`` + ``classifier.*``, or ``features.*`` only; the features up
            to the last tapped layer must be present). Opened with ``weights_only=True``.
        arch: ``"vgg16"`` (SMIRK) or ``"vgg19"``.
        smirk_input_mapping: apply SMIRK's ``x * 0.5 + 0.5`` before ImageNet normalisation (the
            reference does this although its images are already in [0, 1]); False feeds [0, 1].
        resize: side the inputs are resized to (SMIRK: 224); None keeps their size.

    ``forward(pred, target)`` with ``(B, 3, H, W)`` in [0, 1] (resized to 224 as SMIRK does) ->
    sum over the four taps of the mean absolute feature difference.
    """

    def __init__(self, weights_path: str | os.PathLike, arch: str = "vgg16", smirk_input_mapping: bool = True,
                 resize: int | None = 224):
        super().__init__()
        if arch not in _VGG_SLICES:
            raise InputError(f"arch must be one of {sorted(_VGG_SLICES)}, got {arch!r}")
        try:
            import torchvision
        except ImportError as exc:  # pragma: no cover - torchvision comes with the train extra
            from smirk_edge.errors import EngineUnavailable
            raise EngineUnavailable("torchvision (for the VGG perceptual loss)", "train") from exc
        try:
            state = torch.load(weights_path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise CheckpointError(f"VGG weights not found: {weights_path}") from None
        except Exception as exc:
            raise CheckpointError(f"cannot read VGG weights {weights_path} safely (weights_only=True): {exc}") from exc
        if not isinstance(state, Mapping):
            raise CheckpointError(f"VGG weights {weights_path} hold a {type(state).__name__}, expected a state dict")
        features = _vgg_features(torchvision, arch)
        cut = _VGG_SLICES[arch]
        features = features[:cut[-1]]
        want = features.state_dict()
        feat_state = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
        missing = [k for k in want if k not in feat_state]
        bad = [k for k in want if k in feat_state and tuple(feat_state[k].shape) != tuple(want[k].shape)]
        if missing or bad:
            raise CheckpointError(f"{weights_path} is not a torchvision {arch} state dict: "
                                  f"missing {['features.' + k for k in missing[:4]]}, wrong shapes "
                                  f"{['features.' + k for k in bad[:4]]}")
        features.load_state_dict({k: feat_state[k] for k in want}, strict=True)
        bounds = (0,) + cut
        self.blocks = nn.ModuleList(features[a:b] for a, b in zip(bounds[:-1], bounds[1:]))
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()
        self.smirk_input_mapping = smirk_input_mapping
        self.resize = resize
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> "VGGPerceptualLoss":
        return super().train(False)  # frozen feature extractor: always eval

    def _prep(self, x: torch.Tensor) -> torch.Tensor:
        if self.smirk_input_mapping:
            x = x * 0.5 + 0.5
        x = (x - self.mean) / self.std
        if self.resize is None or tuple(x.shape[-2:]) == (self.resize, self.resize):
            return x
        return F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.shape != target.shape or pred.dim() != 4 or pred.shape[1] != 3:
            raise InputError(f"images must be (B, 3, H, W) of equal shape, got {tuple(pred.shape)} "
                             f"and {tuple(target.shape)}")
        x, y = self._prep(pred), self._prep(target)
        loss = pred.new_zeros(())
        for block in self.blocks:
            x, y = block(x), block(y)
            loss = loss + F.l1_loss(x, y)
        return loss


def make_perceptual_loss(vgg_weights: str | os.PathLike | None = None, arch: str = "vgg16") -> nn.Module:
    """:class:`VGGPerceptualLoss` when a weights file is given, else :class:`StructuralPerceptualLoss`."""
    if vgg_weights:
        return VGGPerceptualLoss(vgg_weights, arch=arch)
    return StructuralPerceptualLoss()


def teacher_losses(student: Mapping[str, torch.Tensor], teacher: Mapping[str, torch.Tensor],
                   student_points: torch.Tensor, teacher_points: torch.Tensor, n_shape: int = 300
                   ) -> dict[str, torch.Tensor]:
    """Distillation terms (ours): ``teacher``, the mean L1 between the student's and the teacher's
    parameters (pose, camera, the first ``n_shape`` shape coefficients (those the face model
    uses), expression, eyelids, jaw; each group averaged, then the groups), and
    ``teacher_landmarks``, the MSE between their projected 68 + 105 landmarks (NDC), so that the
    student matches what users see even where parameters trade off against each other."""
    groups = []
    for k in ("pose", "cam", "shape", "expression", "eyelid", "jaw"):
        s, t = student[k], teacher[k].detach()
        if k == "shape":
            s, t = s[:, :n_shape], t[:, :n_shape]
        groups.append((s - t).abs().mean())
    return {"teacher": torch.stack(groups).mean(),
            "teacher_landmarks": ((student_points - teacher_points.detach()) ** 2).sum(-1).mean()}


def emotion_label_loss(features: torch.Tensor, labels: torch.Tensor, head: torch.nn.Module) -> torch.Tensor:
    """Cross-entropy of ``head(features)`` against ``labels`` over the rows whose label is >= 0.

    Args:
        features: ``(N, D)`` per-crop expression, jaw and eyelid parameters (concatenated).
        labels: ``(N,)`` int64 class indices, -1 where a crop has no label.
        head: the linear classifier trained beside the encoder (dropped from the checkpoint).
    Returns:
        A scalar; 0 (still connected to the graph) when no row of the batch has a label.
    """
    keep = labels >= 0
    if not bool(keep.any()):
        return features.sum() * 0.0
    return torch.nn.functional.cross_entropy(head(features[keep].float()), labels[keep])
