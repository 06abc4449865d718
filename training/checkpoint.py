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
from pathlib import Path
from typing import Mapping

import torch
from torch import nn


from smirk_edge.runtimes.torch_encoder import (  # noqa: F401  (the readers live with the torch backend)
    ENCODER_PREFIX, GENERATOR_PREFIX, META_KEY, Checkpoint, _diff, _format_diff, build_encoder, load_encoder_state,
    warm_start_shared)
from smirk_edge.runtimes.torch_encoder import read_checkpoint as _read_checkpoint

from .encoder import EncoderConfig, SmirkEncoder
# ``default`` names the default model's encoder, shipped in the package (checkout and wheel alike);
# ``fast`` and ``full`` the embedded model of that encoder variant (the default is ``fast``)
DEFAULT_NAME = "default"
EMBEDDED_NAMES = (DEFAULT_NAME, "fast", "full")


def default_checkpoint_path(variant: str | None = None) -> Path:
    """The encoder checkpoint (fp16 weights, official layout) of the default model, or of the
    embedded model of ``variant`` (``"fast"``, ``"full"``): that bundle's ``encoder.torch.pt``
    artifact (the torch backend runs the same file), in a checkout and a wheel."""
    from smirk_edge.reconstructor import default_bundle_path

    return default_bundle_path(None if variant in (None, DEFAULT_NAME) else variant) / "encoder.torch.pt"


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint in the official layout (no model is built here); ``"default"``: the default
    model's, ``"fast"`` / ``"full"``: the embedded model of that encoder variant.

    Raises:
        CheckpointError: missing file, not a state dict, unsafe content, or no encoder keys.
    """
    name = str(path)
    embedded = name in EMBEDDED_NAMES and not Path(name).exists()  # a file of that name wins
    return _read_checkpoint(default_checkpoint_path(name) if embedded else path)


def load_encoder(path: str | os.PathLike, config: EncoderConfig | None = None) -> SmirkEncoder:
    """Read ``path`` (official layout, or ``"default"``) and return the encoder in eval mode."""
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
    if cfg is not None:  # the module's own layout, whatever the metadata it inherited says
        info["encoder_variant"] = cfg.variant_name()
    state[META_KEY] = json.dumps(info, sort_keys=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path
