"""SMIRK's expression augmentation for the cycle pass.

The batch of encoder outputs (already repeated ``Ke`` times if wanted) is split at random into four
groups of sizes ``N//4, N//4, N//4, N - 3*(N//4)`` and each group's expression is replaced
(SMIRK_FACTS.md, "Expression augmentation for the cycle"; order and constants as the official
trainer):

1. **random noise**: ``e + N(0,1) * (1 + 2U) * m`` with a Bernoulli(0.5) mask ``m`` per coefficient
   and ``U ~ U(0, 1)`` per sample, clamped to ``[-4, 4]``;
2. **permutation**: the expressions of the group shuffled among its members, scaled by
   ``0.25 + 1.25U`` per sample;
3. **template injection**: a random template ``t`` (``(K, 50)``), scaled by ``0.25 + 1.25U``
   (templates may also carry jaw ``(K, 3)`` and eyelids ``(K, 2)``, which then replace those of the
   sample before the jaw/eyelid perturbation below: an extension; the official templates are
   expression-only). Without templates this group gets group 1's random noise instead;
4. **neutral**: expression 0 and jaw 0, eyelids drawn uniformly in [0, 1].

Groups 1-3 then get extra noise ``0.2U * N(0,1)`` (``U`` per sample) on the expression, group 4 the
same noise around zero. Every sample's jaw gets ``N(0,1) * 0.2 * [1, 0.1, 0.1]`` with probability
0.5 and its opening (``jaw[:, 0]``) is clamped to ``[0, 0.5]``; every sample's eyelids move by
``U(-0.25, 0.25)`` and are clamped to ``[0, 1]``; both before group 4 is set (so group 4 has jaw
exactly 0). All randomness comes from one ``torch.Generator`` (on the tensors' device), in a fixed
order, so a seeded generator gives identical results. Outputs are new, detached tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from smirk_edge.errors import InputError


@dataclass(frozen=True)
class AugmentConfig:
    """Constants of the augmentation (the official values by default)."""

    noise_mask_prob: float = 0.5
    noise_clamp: float = 4.0
    scale_min: float = 0.25
    scale_range: float = 1.25
    extra_noise: float = 0.2
    jaw_noise: float = 0.2
    jaw_noise_axes: tuple[float, float, float] = (1.0, 0.1, 0.1)
    jaw_noise_prob: float = 0.5
    jaw_open_max: float = 0.5
    eyelid_shift: float = 0.25


@dataclass
class ExpressionTemplates:
    """Expression templates for group 3: ``expression (K, E)``, optional ``jaw (K, 3)``, ``eyelid (K, 2)``."""

    expression: torch.Tensor
    jaw: torch.Tensor | None = None
    eyelid: torch.Tensor | None = None

    def __post_init__(self):
        e = self.expression
        if not isinstance(e, torch.Tensor) or e.dim() != 2 or e.shape[0] < 1:
            raise InputError(f"template expressions must be a (K, E) tensor with K >= 1, got "
                             f"{tuple(e.shape) if isinstance(e, torch.Tensor) else type(e).__name__}")
        for name, width in (("jaw", 3), ("eyelid", 2)):
            t = getattr(self, name)
            if t is not None and (t.dim() != 2 or t.shape != (e.shape[0], width)):
                raise InputError(f"template {name} must have shape ({e.shape[0]}, {width}), got {tuple(t.shape)}")


@dataclass
class AugmentedParams:
    """Augmented ``expression (N, E)``, ``jaw (N, 3)``, ``eyelid (N, 2)`` and the four groups'
    sample indices (``groups[g]`` int64, group g+1 of the module docstring)."""

    expression: torch.Tensor
    jaw: torch.Tensor
    eyelid: torch.Tensor
    groups: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _check(expression: torch.Tensor, jaw: torch.Tensor, eyelid: torch.Tensor) -> None:
    for name, t, width in (("expression", expression, None), ("jaw", jaw, 3), ("eyelid", eyelid, 2)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2 or (width is not None and t.shape[1] != width):
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise InputError(f"{name} must have shape (N, {width or 'E'}), got {shape}")
        if not t.is_floating_point():
            raise InputError(f"{name} must be floating point, got {t.dtype}")
    if not expression.shape[0] == jaw.shape[0] == eyelid.shape[0]:
        raise InputError(f"expression, jaw and eyelid batch sizes differ: {expression.shape[0]}, "
                         f"{jaw.shape[0]}, {eyelid.shape[0]}")


def split_groups(n: int, generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
    """A random permutation of ``range(n)`` cut into quarters ``n//4, n//4, n//4, rest``."""
    perm = torch.randperm(n, generator=generator, device=device)
    q = n // 4
    return perm[:q], perm[q:2 * q], perm[2 * q:3 * q], perm[3 * q:]


def augment_expressions(expression: torch.Tensor, jaw: torch.Tensor, eyelid: torch.Tensor,
                        generator: torch.Generator | None = None, templates: ExpressionTemplates | None = None,
                        config: AugmentConfig = AugmentConfig()) -> AugmentedParams:
    """Augment encoder outputs for the cycle pass (see the module docstring).

    Args:
        expression: ``(N, E)`` expression coefficients (E = 50).
        jaw: ``(N, 3)`` jaw rotation (axis-angle, radians); ``jaw[:, 0]`` is the opening.
        eyelid: ``(N, 2)`` eyelid closure in [0, 1].
        generator: optional ``torch.Generator`` on the tensors' device, for reproducibility.
        templates: optional :class:`ExpressionTemplates` for group 3 (``E`` must match).
        config: the constants.
    Returns:
        :class:`AugmentedParams` (detached copies; the inputs are not modified).
    """
    _check(expression, jaw, eyelid)
    if templates is not None and templates.expression.shape[1] != expression.shape[1]:
        raise InputError(f"templates have {templates.expression.shape[1]} expression coefficients, "
                         f"the batch has {expression.shape[1]}")
    g = generator
    dev, dt = expression.device, expression.dtype
    e = expression.detach().clone()
    j = jaw.detach().clone().to(dt)
    lid = eyelid.detach().clone().to(dt)
    N, E = e.shape

    def rand(*shape):
        return torch.rand(*shape, generator=g, device=dev, dtype=dt)

    def randn(*shape):
        return torch.randn(*shape, generator=g, device=dev, dtype=dt)

    def extra(n):
        return config.extra_noise * rand(n, 1) * randn(n, E)

    def random_noise(idx):
        n = len(idx)
        mask = (rand(n, E) < config.noise_mask_prob).to(dt)
        new = e[idx] + randn(n, E) * (1 + 2 * rand(n, 1)) * mask
        return torch.clamp(new, -config.noise_clamp, config.noise_clamp) + extra(n)

    groups = split_groups(N, g, dev)
    g1, g2, g3, g4 = groups

    # 1: masked random noise
    e[g1] = random_noise(g1)
    # 2: permutation within the group
    n2 = len(g2)
    perm = torch.randperm(n2, generator=g, device=dev)
    e[g2] = (config.scale_min + config.scale_range * rand(n2, 1)) * e[g2][perm] + extra(n2)
    # 3: template injection (random noise without templates)
    n3 = len(g3)
    if templates is None:
        e[g3] = random_noise(g3)
    else:
        pick = torch.randint(templates.expression.shape[0], (n3,), generator=g, device=dev)
        t = templates.expression.to(device=dev, dtype=dt)[pick]
        e[g3] = (config.scale_min + config.scale_range * rand(n3, 1)) * t + extra(n3)
        if templates.jaw is not None:
            j[g3] = templates.jaw.to(device=dev, dtype=dt)[pick]
        if templates.eyelid is not None:
            lid[g3] = templates.eyelid.to(device=dev, dtype=dt)[pick]
    # jaw and eyelids of every sample
    axes = torch.tensor(config.jaw_noise_axes, device=dev, dtype=dt)
    on = (rand(N, 1) < config.jaw_noise_prob).to(dt)
    j = j + randn(N, 3) * config.jaw_noise * axes * on
    j[:, 0] = torch.clamp(j[:, 0], 0.0, config.jaw_open_max)
    lid = torch.clamp(lid + (2 * rand(N, 2) - 1) * config.eyelid_shift, 0.0, 1.0)
    # 4: neutral expression, closed jaw, random eyelids
    n4 = len(g4)
    e[g4] = extra(n4)
    j[g4] = 0.0
    lid[g4] = rand(n4, 2)
    return AugmentedParams(expression=e, jaw=j, eyelid=lid, groups=groups)
