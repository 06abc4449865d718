"""Checkpoints in the official SMIRK layout (``SMIRK_em1.pt``).

The file is a flat state dict saved with ``torch.save``. Encoder weights carry the prefix
``smirk_encoder.`` and generator weights ``smirk_generator.``; anything else is ignored by the
official loader. smirk-edge adds one optional key, ``smirk_edge_meta`` (a JSON string: encoder
variant, training step, config), which the official code ignores too. Files are opened with
``torch.load(weights_only=True)``: no code in a checkpoint can run.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from smirk_edge.bundle import sha256_file as file_sha256
from smirk_edge.errors import CheckpointError

from .encoder import EncoderConfig, SmirkEncoder

ENCODER_PREFIX = "smirk_encoder."
GENERATOR_PREFIX = "smirk_generator."
META_KEY = "smirk_edge_meta"
# ``default`` names the default model's encoder, shipped in the package (checkout and wheel alike)
DEFAULT_NAME = "default"


def default_checkpoint_path() -> Path:
    """The default model's encoder checkpoint (fp16 weights, official layout), shipped as package data."""
    return Path(__file__).resolve().parent / "checkpoints" / "default_encoder_fp16.pt"


@dataclass
class Checkpoint:
    """A loaded checkpoint: stripped encoder/generator state dicts and metadata."""

    encoder: dict[str, torch.Tensor]
    generator: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    sha256: str = ""
    path: str = ""


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint in the official layout (no model is built here); ``"default"``: the default model's.

    Raises:
        CheckpointError: missing file, not a state dict, unsafe content, or no encoder keys.
    """
    path = default_checkpoint_path() if str(path) == DEFAULT_NAME else Path(path)
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
    candidates = [config] if config is not None else [EncoderConfig.full(), EncoderConfig.tiny()]
    for cfg in candidates:
        model = SmirkEncoder(cfg)
        if not any(_diff(model, ckpt.encoder)):
            load_encoder_state(model, ckpt.encoder)
            return model.eval()
    model = SmirkEncoder(candidates[0])
    load_encoder_state(model, ckpt.encoder)  # raises with the differences
    return model.eval()


def random_encoder(variant: str = "full", seed: int = 0) -> SmirkEncoder:
    """An encoder of ``variant`` (``full``, ``tiny``) with random weights and SMIRK's head
    initialisation, seeded with ``torch.manual_seed(seed)``, in eval mode: for measurements whose
    numbers do not depend on the weights (latency, memory)."""
    try:
        config = EncoderConfig.named(variant)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from exc
    torch.manual_seed(seed)
    encoder = SmirkEncoder(config)
    encoder.init_weights()
    return encoder.eval()


def load_encoder(path: str | os.PathLike, config: EncoderConfig | None = None) -> SmirkEncoder:
    """Read ``path`` (official layout) and return the encoder in eval mode."""
    return build_encoder(read_checkpoint(path), config)


def save_checkpoint(path: str | os.PathLike, encoder: nn.Module, generator: nn.Module | None = None,
                    meta: Mapping | None = None) -> Path:
    """Write the official flat layout: ``smirk_encoder.*`` (+ ``smirk_generator.*``) + ``smirk_edge_meta``."""
    state: dict[str, object] = {ENCODER_PREFIX + k: v.detach().cpu().contiguous()
                                for k, v in encoder.state_dict().items()}
    if generator is not None:
        state.update({GENERATOR_PREFIX + k: v.detach().cpu().contiguous() for k, v in generator.state_dict().items()})
    info = dict(meta or {})
    cfg = getattr(encoder, "config", None)
    if cfg is not None and "encoder_variant" not in info:
        info["encoder_variant"] = "tiny" if cfg == EncoderConfig.tiny() else (
            "full" if cfg == EncoderConfig.full() else "custom")
    state[META_KEY] = json.dumps(info, sort_keys=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path
