"""SMIRK training: stage 1 (three encoders, landmarks) and stage 2 (analysis by neural synthesis).

Stage 1 trains the pose, shape and expression encoders on landmarks: MSE in NDC on the 17 jaw
contour points and the 105 MediaPipe points (x100 each), expression L2 (x1e-2) and, in place of
SMIRK's MICA shape supervision (x10), :func:`~smirk_edge.training.losses.shape_supervision_loss`
(a PCA-prior pull plus identity consistency between two augmentations of a photo when
``data.views = 2``). Adam, lr 2e-4, batch 32.

Stage 2 trains the expression encoder and the generator (pose and shape encoders frozen, in eval
mode). Each step runs:

1. **Reconstruction pass**: encode, decode the face model, render the grey face, build the masked
   image (:mod:`.masking`: context outside the dilated landmark hull, ~1 % sparse hints, noise,
   holes), let the generator reconstruct the crop; losses: landmarks x100, L1 x10, perceptual x10,
   jaw reg x1e-2, expression reg x1e-3.
2. **Cycle pass** (every ``loss.cycle_every`` steps): augment the expressions
   (:mod:`.augment`), render them, let the generator synthesise the new face from the masked image
   whose hints are moved onto the augmented mesh, re-encode it; the cycle loss (x1) asks for the
   augmented parameters back. On even steps the encoder is frozen for this term (its parameters are
   used detached: only the generator learns to make images that encode correctly); on odd steps the
   generator is frozen (its output is computed without gradient: only the encoder learns).

One backward per step: both passes' losses are summed. Freezing inside the cycle pass never
toggles ``requires_grad``, so DistributedDataParallel sees the same parameters every step.
Optimiser: Adam with the expression encoder at ``0.25 x lr`` (lr 1e-3) and the generator at
``lr`` with betas (0.5, 0.999); generator gradient norm clipped at 0.1; cosine schedule to
``0.01 x lr`` restarted each epoch.

Infrastructure: torchrun / DDP (``env://``; NCCL on GPU, gloo on CPU; a :class:`MixtureSampler`
shards the data by rank), bf16 autocast on CUDA for the networks only (face model, projection,
renderer and losses stay fp32), rank-0 logging (JSON lines, TensorBoard when installed, a progress
bar) and checkpointing: ``resume.pt`` (everything needed to continue bit-for-bit: models,
optimiser, scheduler, step, epoch, position in the epoch, RNG states) and the official flat layout
(``smirk_latest.pt``, ``checkpoints/smirk_step*.pt``) that export and
:func:`~smirk_edge.training.checkpoint.build_encoder` read like ``SMIRK_em1.pt``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from smirk_edge.errors import CheckpointError, InputError

from .config import TrainConfig
from .data import MixedDataset, MixtureSampler, build_dataset, ndc_to_crop_px

RESUME_FILE = "resume.pt"
LATEST_FILE = "smirk_latest.pt"
LOG_FILE = "log.jsonl"


# ------------------------------------------------------------------------------------------ distributed


@dataclass
class DistInfo:
    """Process-group facts: ``rank``, ``world_size``, ``local_rank``, ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    started_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group torchrun describes (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``,
    ``MASTER_ADDR``/``PORT``), with NCCL on CUDA and gloo on CPU; a single process needs nothing."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise InputError("run.device is cuda but no CUDA device is available")
    dev = torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    started = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", init_method="env://", rank=rank, world_size=world)
        started = True
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank, world, local, dev, started)


# ------------------------------------------------------------------------------------------ freezing


def _backbone_prefixes(encoder_module: nn.Module, blocks: int) -> list[str]:
    """Names of a timm backbone's stem and first ``blocks`` stages."""
    names = [n for n, _ in encoder_module.named_children() if n in ("conv_stem", "bn1", "act1")]
    if blocks > 0 and hasattr(encoder_module, "blocks"):
        names += [f"blocks.{i}" for i in range(min(blocks, len(encoder_module.blocks)))]
    return names


BRANCHES = {"pose": "pose_encoder", "shape": "shape_encoder", "expression": "expression_encoder"}


# ------------------------------------------------------------------------------------------ trainer


class Trainer:
    """One training run (stage 1 or 2) of a :class:`~smirk_edge.training.config.TrainConfig`.

    Args:
        config: the run's configuration.
        out_dir: run folder (logs, checkpoints). Created.
        dataset: optional map dataset in the item layout of :mod:`.data` (replaces ``config.data.sources``).
        resume: ``None`` (fresh), ``"auto"`` (``out_dir/resume.pt`` when it exists) or a ``resume.pt`` path.

    Use :meth:`fit` for the whole run, :meth:`train_step` for one optimisation step on a batch.
    """

    def __init__(self, config: TrainConfig, out_dir: str | os.PathLike, dataset=None, resume: str | None = None):
        from smirk_edge.face_model import standin_path

        from . import losses as L
        from .checkpoint import load_encoder_state, read_checkpoint, warm_start_shared
        from .encoder import EncoderConfig, SmirkEncoder
        from .face_model import FaceModelLayer

        self.cfg = config.validate(require_sources=dataset is None)
        self.out = Path(out_dir)
        self.dist = init_distributed(config.run.device)
        self.device = self.dist.device
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        run = config.run
        self.stage = config.stage
        self._seed_everything(run.seed + self.dist.rank)
        if run.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.amp = (run.amp == "bf16") or (run.amp == "auto" and self.device.type == "cuda")

        # models --------------------------------------------------------------------------
        torch.manual_seed(run.seed)  # identical initial weights on every rank
        self.encoder = SmirkEncoder(EncoderConfig.named(config.model.encoder))
        self.encoder.init_weights()
        self.generator = None
        ckpt = read_checkpoint(config.model.init_from) if config.model.init_from else None
        self.source_meta = ckpt.meta if ckpt is not None else {}  # provenance: terms are inherited
        if ckpt is not None:
            if self.encoder.config.shared and any(k.startswith("shape_encoder.encoder.") for k in ckpt.encoder):
                # a shared-backbone student from a three-backbone encoder: the matching branch and heads
                copied = warm_start_shared(self.encoder, ckpt.encoder)
                if self.dist.is_main:
                    print(f"warm start of the {config.model.encoder} encoder from {config.model.init_from}: "
                          + ", ".join(f"{k} <- {v}" for k, v in copied.items()), flush=True)
            else:
                load_encoder_state(self.encoder, ckpt.encoder)
        self.face = FaceModelLayer.from_file(config.model.face_model or standin_path()).to(self.device)
        self.face.requires_grad_(False)
        self.teacher = None
        if config.model.teacher:  # distillation: the teacher's outputs on the same crops (no gradient)
            from .checkpoint import build_encoder

            self.teacher = build_encoder(read_checkpoint(config.model.teacher)).to(self.device).eval()
            self.teacher.requires_grad_(False)
        if self.encoder.config.shared and (self.stage != 1 or (config.finetune.enabled and
                                                                set(config.finetune.train) != set(BRANCHES))):
            from .config import ConfigError

            raise ConfigError(f"encoder {config.model.encoder!r} shares one backbone between its three heads: "
                              "train all of it in stage 1 (distillation), not one branch")
        self.weights = L.LossWeights.from_mapping(config.loss.weights, stage=self.stage)
        self.synthetic_weights = L.SyntheticWeights.from_mapping(config.loss.synthetic)
        self.synth = None
        self.synth_lr_pairs: tuple = ()
        if config.loss.synthetic_batch > 0:
            from .synthetic import STANDIN_LR_PAIRS, SyntheticFaces

            self.synth_lr_pairs = STANDIN_LR_PAIRS  # the pairs the sampler makes one-sided
            self.synth = SyntheticFaces(config.model.face_model, config.data.image_size, self.device)
        self.cycle_weights = L.CycleWeights.from_mapping(config.loss.cycle)
        self.shape_weights = L.ShapeSupervisionWeights.from_mapping(config.loss.shape_supervision)
        if self.stage == 1:
            trained = list(config.finetune.train) if config.finetune.enabled else list(BRANCHES)
        else:
            from .generator import GeneratorConfig, SmirkGenerator, load_generator_state
            from .renderer import MeshRenderer

            trained = ["expression"]
            gcfg = GeneratorConfig.official() if config.model.generator == "official" else GeneratorConfig.tiny()
            self.generator = SmirkGenerator(gcfg)
            if ckpt is not None and ckpt.generator:
                load_generator_state(self.generator, ckpt.generator)
            self.generator.to(self.device)
            self.renderer = MeshRenderer.from_face_model(self.face, image_size=config.data.image_size).to(self.device)
            self.perceptual = L.make_perceptual_loss(config.model.vgg_weights).to(self.device)
            self.region_faces = self.face.faces[self.face.face_region_faces]
        self.encoder.to(self.device)
        self.trained = trained
        self._frozen_modules: list[nn.Module] = []
        for name, attr in BRANCHES.items():
            branch = getattr(self.encoder, attr)
            if name not in trained:
                branch.requires_grad_(False)
                self._frozen_modules.append(branch)
            elif config.finetune.enabled and config.finetune.freeze_blocks >= 0:
                bb = branch.encoder
                prefixes = _backbone_prefixes(bb, config.finetune.freeze_blocks) if config.finetune.freeze_blocks else []
                for pre in prefixes:
                    mod = bb.get_submodule(pre)
                    mod.requires_grad_(False)
                    self._frozen_modules.append(mod)

        # DDP -----------------------------------------------------------------------------
        if self.stage == 1:
            self.enc_train = self._wrap(self.encoder)
        else:
            self.enc_train = self._wrap(self.encoder.expression_encoder)
            self.gen_train = self._wrap(self.generator)

        # optimiser + schedule ----------------------------------------------------------
        o = config.optim
        enc_params = [p for p in self.encoder.parameters() if p.requires_grad]
        groups = [{"params": enc_params, "lr": o.lr * o.encoder_lr_factor, "betas": tuple(o.betas), "name": "encoder"}]
        self.emotion_head: nn.Module | None = None
        if self.weights.emotion_label:  # a linear classifier over expression + jaw + eyelid; not in the checkpoint
            from .data import EMOTION_CLASSES
            from .encoder import N_EXPRESSION, N_EYELID, N_JAW

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(run.seed + 17)
                self.emotion_head = nn.Linear(N_EXPRESSION + N_JAW + N_EYELID, len(EMOTION_CLASSES)).to(self.device)
            groups.append({"params": list(self.emotion_head.parameters()), "lr": o.lr * 10, "betas": tuple(o.betas),
                           "name": "emotion_head"})
        if self.generator is not None:
            groups.append({"params": list(self.generator.parameters()), "lr": o.lr, "betas": tuple(o.generator_betas),
                           "name": "generator"})
        self.optimizer = torch.optim.Adam(groups, lr=o.lr, weight_decay=o.weight_decay)

        # data ----------------------------------------------------------------------------
        if dataset is None:
            dataset = build_dataset(config.data, train=True, face_model_path=config.model.face_model)
        if not isinstance(dataset, MixedDataset):
            dataset = MixedDataset([dataset])
        self.dataset = dataset
        self.sampler = MixtureSampler(dataset, config.data.epoch_size, seed=run.seed, rank=self.dist.rank,
                                      world_size=self.dist.world_size)
        self.steps_per_epoch = max(1, (self.sampler.epoch_size // self.dist.world_size) // run.batch_size)
        T, m = self.steps_per_epoch, o.min_lr_factor
        if o.schedule == "cosine_run":
            T = max(1, int(run.max_steps))
        if o.schedule in ("cosine", "cosine_run"):
            wrap = (lambda s: s % T) if o.schedule == "cosine" else (lambda s: min(s, T))  # noqa: E731
            decay = lambda s: m + (1 - m) * 0.5 * (1 + math.cos(math.pi * wrap(s) / T))  # noqa: E731
        else:
            decay = lambda s: 1.0  # noqa: E731
        W = max(0, int(o.warmup_steps))
        fn = (lambda s: decay(s) * min(1.0, (s + 1) / W)) if W else decay  # noqa: E731
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, fn)

        # state ---------------------------------------------------------------------------
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.elapsed = 0.0
        self._acc: dict[str, torch.Tensor] = {}
        self._acc_n = 0
        self._tb = None
        if resume:
            path = self.out / RESUME_FILE if resume == "auto" else Path(resume)
            if path.is_dir():
                path = path / RESUME_FILE
            if path.is_file():
                self.load_state(path)
            elif resume != "auto":
                raise CheckpointError(f"cannot resume: {path} not found")

    # ---------------------------------------------------------------------------------- helpers

    @staticmethod
    def _seed_everything(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed % (2 ** 32))
        torch.manual_seed(seed)

    def _wrap(self, module: nn.Module) -> nn.Module:
        if not self.dist.distributed:
            return module
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DDP(module, device_ids=ids, broadcast_buffers=False)

    def _autocast(self):
        if self.amp and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        if self.amp:
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _f32(self, d: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.float() for k, v in d.items()}

    def set_modes(self) -> None:
        """Train mode for what learns; eval mode for frozen branches/blocks (and BN if ``freeze_bn``)."""
        self.encoder.train()
        if self.generator is not None:
            self.generator.train()
        if self.stage == 2:
            self.encoder.pose_encoder.eval()
            self.encoder.shape_encoder.eval()
        for m in self._frozen_modules:
            m.eval()
        if self.cfg.finetune.freeze_bn:
            for m in self.encoder.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()

    def _step_generator(self) -> torch.Generator:
        g = torch.Generator(device=self.device)
        g.manual_seed((self.cfg.run.seed * 1_000_003 + self.step * 7919 + self.dist.rank) % (2 ** 63))
        return g

    def _combine(self, terms: Mapping[str, torch.Tensor]) -> torch.Tensor:
        total = None
        for key, value in terms.items():
            w = getattr(self.weights, "landmark" if key.startswith("landmark") else key)
            if w:
                total = w * value if total is None else total + w * value
        return total if total is not None else torch.zeros((), device=self.device)

    def _batch_to(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        nb = self.device.type == "cuda"
        out = {}
        for k, v in batch.items():
            if not isinstance(v, torch.Tensor):
                continue
            if v.dim() >= 2 and k in ("image", "landmarks478", "landmarks105", "landmarks68", "valid", "real68", "emotion"):
                v = v.flatten(0, 1)  # (B, V, ...) -> (B*V, ...)
            out[k] = v.to(self.device, non_blocking=nb)
        return out

    # ---------------------------------------------------------------------------------- losses

    def _landmark_terms(self, params: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]):
        from . import losses as L
        from .face_model import project_ndc

        geo = self.face(params["shape"], params["expression"], params["pose"], params["jaw"], params["eyelid"])
        cam = params["cam"]
        l68 = project_ndc(geo["landmarks68"], cam)[..., :2]
        l105 = project_ndc(geo["landmarks105"], cam)[..., :2]
        valid = b["valid"]
        real = b.get("real68")
        err = self.cfg.loss.landmark_error
        if real is None:
            terms = {"landmark_contour": L.contour_landmark_loss(l68, b["landmarks68"], valid, err)}
        else:  # annotated 68 points where a photo has them; the mesh-derived contour elsewhere
            real = real.to(l68.dtype)
            terms = {"landmark_contour": L.contour_landmark_loss(l68, b["landmarks68"], valid[:, None] * (1 - real), err),
                     "real68": L.landmark_loss(l68, b["landmarks68"], valid[:, None] * real, err)}
        terms["landmark_mediapipe"] = L.mediapipe_landmark_loss(l105, b["landmarks105"], valid, err)
        return terms, geo

    @staticmethod
    def _split(out: Mapping[str, torch.Tensor], n: int):
        return {k: v[:n] for k, v in out.items()}, {k: v[n:] for k, v in out.items()}

    def _synthetic_batch(self, b: Mapping[str, torch.Tensor]) -> dict | None:
        """``loss.synthetic_batch`` faces of known parameters rendered on the training device.

        Half get a background cut from a random corner of this batch's photos, enlarged (skin,
        hair and clothes texture at the right colours), the rest smooth noise or a gradient."""
        if self.synth is None:
            return None
        n = self.cfg.loss.synthetic_batch
        g = torch.Generator(device=self.device)
        g.manual_seed((self.cfg.run.seed * 7_368_787 + self.step * 104_729 + self.dist.rank) % (2 ** 63))
        params = self.synth.sample_params(n, g)
        bg = self.synth.backgrounds(n, g)
        real = b["image"]
        S = real.shape[-1]
        k = n // 2
        if k and len(real):
            pick = torch.randint(len(real), (k,), generator=g, device=self.device)
            side = S // 4
            y0, x0 = [int(v) for v in torch.randint(S - side + 1, (2,), generator=g, device=self.device)]
            patch = real[pick, :, y0:y0 + side, x0:x0 + side].float()
            bg[:k] = torch.nn.functional.interpolate(patch, size=(S, S), mode="bilinear", align_corners=False)
        with torch.no_grad():
            r = self.synth.render(params, g, background=bg)
        return {"image": r["image"], "landmarks68": r["landmarks68"], "landmarks105": r["landmarks105"],
                "valid": torch.ones(n, device=self.device), "params": params}

    def _synthetic_terms(self, out: Mapping[str, torch.Tensor], syn: Mapping) -> dict[str, torch.Tensor]:
        from . import losses as L

        lt, _ = self._landmark_terms(out, syn)
        return {"landmark_synthetic": lt["landmark_contour"] + lt["landmark_mediapipe"],
                "synthetic": L.synthetic_param_loss(out, syn["params"], self.synthetic_weights, self.synth_lr_pairs)}

    def stage1_losses(self, b: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Unweighted stage-1 loss terms of a device batch (images flattened to ``(B*V, 3, S, S)``)."""
        from . import losses as L

        syn = self._synthetic_batch(b)
        img = b["image"] if syn is None else torch.cat([b["image"], syn["image"]])
        with self._autocast():
            out = self.enc_train(img)
        out = self._f32(out)
        if syn is not None:
            out, out_syn = self._split(out, len(b["image"]))
        terms, geo = self._landmark_terms(out, b)
        if syn is not None:
            terms.update(self._synthetic_terms(out_syn, syn))
        if self.teacher is not None:
            terms.update(self._teacher_terms(img, out, geo, None if syn is None else out_syn))
        terms["expression_reg"] = L.l2_regularizer(out["expression"])
        terms["jaw_reg"] = L.l2_regularizer(out["jaw"])
        if self.emotion_head is not None and "emotion" in b:
            feats = torch.cat([out["expression"], out["jaw"], out["eyelid"]], 1)
            terms["emotion_label"] = L.emotion_label_loss(feats, b["emotion"], self.emotion_head)
        V = self.cfg.data.views
        if V == 2:
            s = out["shape"].view(-1, 2, out["shape"].shape[-1])
            terms["shape_prior"] = L.shape_supervision_loss(s[:, 0], s[:, 1], self.shape_weights)
        else:
            terms["shape_prior"] = L.shape_supervision_loss(out["shape"], None, self.shape_weights)
        return terms

    def _teacher_terms(self, img: torch.Tensor, out: Mapping[str, torch.Tensor], geo: Mapping[str, torch.Tensor],
                       out_syn: Mapping[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
        """Distillation on every crop of the step (photos and renders): :func:`losses.teacher_losses`."""
        from . import losses as L
        from .face_model import project_ndc

        with torch.no_grad():
            with self._autocast():
                t = self.teacher(img)
            t = self._f32(t)
            tg = self.face(t["shape"], t["expression"], t["pose"], t["jaw"], t["eyelid"])
        student = dict(out) if out_syn is None else {k: torch.cat([out[k], out_syn[k]]) for k in out}
        sg = {k: geo[k] for k in ("landmarks68", "landmarks105")}
        if out_syn is not None:  # the renders' geometry, decoded once more for the student
            g2 = self.face(out_syn["shape"], out_syn["expression"], out_syn["pose"], out_syn["jaw"], out_syn["eyelid"])
            sg = {k: torch.cat([sg[k], g2[k]]) for k in sg}

        def points(g: Mapping[str, torch.Tensor], cam: torch.Tensor) -> torch.Tensor:
            return torch.cat([project_ndc(g["landmarks68"], cam)[..., :2], project_ndc(g["landmarks105"], cam)[..., :2]], 1)

        n_shape = getattr(self.face, "n_shape_used", 300) or 300
        return L.teacher_losses(student, t, points(sg, student["cam"]), points(tg, t["cam"]), n_shape)

    def stage2_losses(self, b: Mapping[str, torch.Tensor], g: torch.Generator) -> dict[str, torch.Tensor]:
        """Unweighted stage-2 loss terms: reconstruction pass + (every ``cycle_every`` steps) cycle pass."""
        from torch.func import functional_call

        from . import losses as L
        from .augment import augment_expressions
        from .face_model import project_ndc
        from .masking import CYCLE_HOLE_RATE, hull_mask, masked_generator_input  # noqa: F401

        lc = self.cfg.loss
        img = b["image"]
        S = img.shape[-1]
        enc = self.encoder
        syn = self._synthetic_batch(b)
        with torch.no_grad(), self._autocast():
            fixed = {**enc.pose_encoder(img), **enc.shape_encoder(img)}
        with self._autocast():
            ex = self.enc_train(img if syn is None else torch.cat([img, syn["image"]]))
        ex = self._f32(ex)
        if syn is not None:
            ex, ex_syn = self._split(ex, len(img))
        params = self._f32({**fixed, **ex})
        terms, geo = self._landmark_terms(params, b)
        if syn is not None:
            terms["synthetic"] = L.synthetic_param_loss(ex_syn, syn["params"], self.synthetic_weights,
                                                        self.synth_lr_pairs)
        terms["jaw_reg"] = L.l2_regularizer(params["jaw"])
        terms["expression_reg"] = L.l2_regularizer(params["expression"])
        cam = params["cam"]
        ndc = project_ndc(geo["vertices"], cam)
        render = self.renderer(ndc)
        hull = hull_mask(ndc_to_crop_px(b["landmarks478"], S), S).to(self.device)
        masked = masked_generator_input(img, hull, ndc, self.region_faces, render.mask, ratio=lc.mask_ratio,
                                        hole_rate=lc.hole_rate, generator=g)
        with self._autocast():
            recon = self.gen_train(torch.cat([render.image, masked.image], 1))
        recon = recon.float()
        terms["reconstruction"] = L.reconstruction_l1(recon, img)
        terms["perceptual"] = self.perceptual(recon, img)
        self._last_images = {"image": img.detach(), "render": render.image.detach(), "masked": masked.image.detach(),
                             "recon": recon.detach()}
        if self.weights.cycle > 0 and self.step % lc.cycle_every == 0:
            k = lc.cycle_repeat
            rep = (lambda t: t.detach().repeat(k, *([1] * (t.dim() - 1)))) if k > 1 else (lambda t: t.detach())
            aug = augment_expressions(rep(params["expression"]), rep(params["jaw"]), rep(params["eyelid"]), generator=g)
            shape0, pose0, cam0 = rep(params["shape"]), rep(params["pose"]), rep(cam)
            with torch.no_grad():
                geo_a = self.face(shape0, aug.expression, pose0, aug.jaw, aug.eyelid)
                ndc_a = project_ndc(geo_a["vertices"], cam0)
                render_a = self.renderer(ndc_a)
            masked_a = masked_generator_input(rep(img), rep(hull), rep(ndc), self.region_faces, render_a.mask,
                                              ratio=lc.mask_ratio, hole_rate=lc.cycle_hole_rate,
                                              target_ndc_vertices=ndc_a, generator=g)
            gen_in = torch.cat([render_a.image.detach(), masked_a.image], 1)
            expr_module = self.encoder.expression_encoder
            freeze_encoder = self.step % 2 == 0
            if freeze_encoder:  # the generator learns from the cycle; the encoder is used detached
                with self._autocast():
                    img_a = self.generator(gen_in)
                    detached = {n: p.detach() for n, p in expr_module.named_parameters()}
                    re = functional_call(expr_module, detached, (img_a,))
                    re_shape = enc.shape_encoder(img_a)
                re = self._f32({**re, **re_shape})
            else:  # the encoder learns from the cycle; the generator's output is a constant
                with torch.no_grad(), self._autocast():
                    img_a = self.generator(gen_in)
                with self._autocast():
                    re = expr_module(img_a.float())
                re = self._f32(re)
            target = {"expression": aug.expression, "jaw": aug.jaw, "eyelid": aug.eyelid, "shape": shape0}
            terms["cycle"] = L.cycle_loss(re, target, self.cycle_weights, use_shape=freeze_encoder)
            self._last_images["cycle"] = img_a.detach().float()
        return terms

    # ---------------------------------------------------------------------------------- steps

    def train_step(self, batch: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """One optimisation step on a loader batch; returns nothing heavy (losses are accumulated
        as tensors and read at log time). Returns the loss terms as floats only when asked by tests
        via :meth:`last_terms`."""
        self.set_modes()
        b = self._batch_to(batch)
        g = self._step_generator()
        terms = self.stage1_losses(b) if self.stage == 1 else self.stage2_losses(b, g)
        total = self._combine(terms)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        o = self.cfg.optim
        if o.grad_clip_encoder:
            torch.nn.utils.clip_grad_norm_([p for p in self.encoder.parameters() if p.requires_grad],
                                           o.grad_clip_encoder)
        if o.grad_clip_generator and self.generator is not None:
            torch.nn.utils.clip_grad_norm_(self.generator.parameters(), o.grad_clip_generator)
        self.optimizer.step()
        self.scheduler.step()
        terms = {k: v.detach() for k, v in terms.items()}
        terms["loss"] = total.detach()
        for k, v in terms.items():
            self._acc[k] = self._acc.get(k, torch.zeros((), device=self.device)) + v.float()
        self._acc_n += 1
        self._last_terms = terms
        self.step += 1
        self.batch_in_epoch += 1
        return terms

    def last_terms(self) -> dict[str, float]:
        return {k: float(v) for k, v in self._last_terms.items()}

    # ---------------------------------------------------------------------------------- logging

    def _reduce_log(self) -> dict[str, float]:
        keys = sorted(self._acc)
        vec = torch.stack([self._acc[k] for k in keys]) / max(self._acc_n, 1)
        if self.dist.distributed:
            dist.all_reduce(vec)
            vec /= self.dist.world_size
        vals = vec.tolist()
        self._acc, self._acc_n = {}, 0
        return dict(zip(keys, vals))

    def _write_log(self, record: dict) -> None:
        with open(self.out / LOG_FILE, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.cfg.run.tensorboard:
            if self._tb is None:
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    self._tb = SummaryWriter(str(self.out / "tb"))
                except Exception:  # tensorboard missing or broken: JSON log only
                    self._tb = False
            if self._tb:
                for k, v in record.items():
                    if isinstance(v, (int, float)) and k not in ("step", "epoch"):
                        self._tb.add_scalar(f"stage{self.stage}/{k}", v, record["step"])

    # ---------------------------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict:
        """Everything :meth:`load_state` needs to continue this run exactly."""
        npst = np.random.get_state()
        rng = {"python": list(random.getstate()[1]) + [random.getstate()[2] or 0],
               "python_version": random.getstate()[0],
               "numpy": {"keys": torch.from_numpy(npst[1].astype(np.int64)), "pos": int(npst[2]),
                         "has_gauss": int(npst[3]), "cached": float(npst[4])},
               "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return {
            "format": "smirk-edge-resume", "version": 1,
            "stage": self.stage, "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
            "elapsed": self.elapsed, "world_size": self.dist.world_size,
            "encoder": self.encoder.state_dict(),
            "generator": self.generator.state_dict() if self.generator is not None else {},
            "emotion_head": self.emotion_head.state_dict() if self.emotion_head is not None else {},
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "rng": rng, "config": json.dumps(self.cfg.to_dict()),
        }

    def load_state(self, path: str | os.PathLike) -> None:
        """Continue from a ``resume.pt`` (weights_only load: no code runs)."""
        try:
            st = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(f"cannot read resume state {path}: {exc}") from exc
        if not isinstance(st, dict) or st.get("format") != "smirk-edge-resume":
            raise CheckpointError(f"{path} is not a smirk-edge resume file (use model.init_from for weights)")
        if st["stage"] != self.stage:
            raise CheckpointError(f"{path} is a stage-{st['stage']} state; this run is stage {self.stage}")
        if st.get("world_size", 1) != self.dist.world_size and self.dist.is_main:
            print(f"warning: resuming a {st['world_size']}-process run with {self.dist.world_size} processes: "
                  "the data order changes from here on", file=sys.stderr)
        self.encoder.load_state_dict(st["encoder"])
        if self.generator is not None and st["generator"]:
            self.generator.load_state_dict(st["generator"])
        if self.emotion_head is not None and st.get("emotion_head"):
            self.emotion_head.load_state_dict(st["emotion_head"])
        self.optimizer.load_state_dict(st["optimizer"])
        self.scheduler.load_state_dict(st["scheduler"])
        self.step, self.epoch, self.batch_in_epoch = int(st["step"]), int(st["epoch"]), int(st["batch_in_epoch"])
        self.elapsed = float(st.get("elapsed", 0.0))
        rng = st["rng"]
        py = rng["python"]
        random.setstate((rng["python_version"], tuple(int(x) for x in py[:-1]), py[-1] or None))
        n = rng["numpy"]
        np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
        torch.set_rng_state(rng["torch"])
        if rng.get("cuda") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        if self.dist.is_main and (self.out / LOG_FILE).is_file():  # drop log lines past the resumed step
            lines = (self.out / LOG_FILE).read_text().splitlines()
            keep = [ln for ln in lines if ln.strip() and json.loads(ln).get("step", 0) <= self.step]
            (self.out / LOG_FILE).write_text("".join(ln + "\n" for ln in keep))

    def save(self, final: bool = False) -> Path | None:
        """Rank 0 writes ``resume.pt``, ``smirk_latest.pt`` and ``checkpoints/smirk_step*.pt``."""
        from smirk_edge.provenance import inherited_meta

        from .checkpoint import save_checkpoint

        if not self.dist.is_main:
            return None
        tmp = self.out / (RESUME_FILE + ".tmp")
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, self.out / RESUME_FILE)
        meta = {"stage": self.stage, "step": self.step, "epoch": self.epoch, "name": self.cfg.name,
                "deviations": self.cfg.deviations, "face_model": self.face.model_id, "trainer": "smirk-edge",
                "terms": self.cfg.terms, "training_data": self.cfg.training_data,
                "emotion_subjects": list(self.cfg.data.emotion_subjects) if self.emotion_head is not None else [],
                "training": f"smirk-edge trainer, config {self.cfg.name}, stage {self.stage}, {self.step} steps"}
        meta = inherited_meta({k: v for k, v in meta.items() if v not in ("", [])}, self.source_meta)
        ck_dir = self.out / "checkpoints"
        path = save_checkpoint(ck_dir / f"smirk_step{self.step:08d}.pt", self.encoder, self.generator, meta)
        shutil.copyfile(path, self.out / (LATEST_FILE + ".tmp"))
        os.replace(self.out / (LATEST_FILE + ".tmp"), self.out / LATEST_FILE)
        old = sorted(ck_dir.glob("smirk_step*.pt"))
        for p in old[:-max(1, self.cfg.run.keep_checkpoints)]:
            p.unlink()
        return self.out / LATEST_FILE

    # ---------------------------------------------------------------------------------- loop

    def _loader(self):
        from torch.utils.data import DataLoader

        nw = self.cfg.data.num_workers
        return DataLoader(self.dataset, batch_size=self.cfg.run.batch_size, sampler=self.sampler, num_workers=nw,
                          drop_last=True, pin_memory=self.device.type == "cuda", persistent_workers=False,
                          prefetch_factor=4 if nw > 0 else None)

    def _agree(self, flag: bool) -> bool:
        if not self.dist.distributed:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def fit(self) -> dict[str, Any]:
        """Train until ``max_steps`` / ``max_epochs`` / ``max_minutes``; checkpoint and return a summary."""
        run = self.cfg.run
        budget_s = run.max_minutes * 60.0 if run.max_minutes else None
        t0 = time.perf_counter()
        start_elapsed = self.elapsed
        bar = None
        if self.dist.is_main and run.progress:
            try:
                from tqdm import tqdm

                total = run.max_steps or (run.max_epochs * self.steps_per_epoch if run.max_epochs else None)
                bar = tqdm(total=total, initial=self.step, desc=f"stage {self.stage}", unit="step", dynamic_ncols=True,
                           file=sys.stderr)
            except ImportError:
                bar = None
        images_per_step = run.batch_size * self.cfg.data.views * self.dist.world_size
        last_t, last_step = time.perf_counter(), self.step
        stop = False
        reason = "done"
        while not stop:
            if run.max_epochs is not None and self.epoch >= run.max_epochs:
                reason = "max_epochs"
                break
            if self.batch_in_epoch >= self.steps_per_epoch:
                self.epoch, self.batch_in_epoch = self.epoch + 1, 0
                continue
            self.sampler.set_epoch(self.epoch, start=self.batch_in_epoch * run.batch_size)
            for batch in self._loader():
                self.train_step(batch)
                if bar is not None:
                    bar.update(1)
                now = time.perf_counter()
                self.elapsed = start_elapsed + (now - t0)
                done = (run.max_steps is not None and self.step >= run.max_steps)
                over = budget_s is not None and (now - t0) >= budget_s
                stopping = self._agree(done or over)  # same answer on every rank
                if self.step % run.log_every == 0 or stopping:  # the last step is always logged
                    vals = self._reduce_log()
                    if self.device.type == "cuda":
                        torch.cuda.synchronize(self.device)
                    now = time.perf_counter()
                    ips = images_per_step * (self.step - last_step) / max(now - last_t, 1e-9)
                    last_t, last_step = now, self.step
                    if self.dist.is_main:
                        rec = {"step": self.step, "epoch": self.epoch, "stage": self.stage,
                               "lr": self.scheduler.get_last_lr()[0], **vals, "images_per_s": ips,
                               "elapsed_s": self.elapsed}
                        self._write_log(rec)
                        if bar is not None:
                            bar.set_postfix(loss=f"{vals.get('loss', float('nan')):.4g}", ips=f"{ips:.0f}")
                if run.ckpt_every and self.step % run.ckpt_every == 0:
                    self.save()
                if stopping:
                    stop = True
                    reason = "max_steps" if done else "max_minutes"
                    break
            else:
                self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        if bar is not None:
            bar.close()
        latest = self.save(final=True)
        if self._tb:
            self._tb.flush()
        if self.dist.distributed:
            dist.barrier()
        return {"stage": self.stage, "steps": self.step, "epochs": self.epoch, "stopped": reason,
                "seconds": self.elapsed, "checkpoint": str(latest) if latest else None}

    def close(self) -> None:
        """Release the process group if this trainer started it."""
        if self._tb:
            self._tb.close()
        if self.dist.started_here and dist.is_initialized():
            dist.destroy_process_group()
