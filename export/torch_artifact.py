"""The ``torch-checkpoint`` artifact: the encoder for ``Reconstructor(backend="torch")``.

The file is the encoder's state dict in the official SMIRK key layout (``smirk_encoder.*`` plus
``smirk_edge_meta``), weights stored in fp16, saved with ``torch.save`` and opened with
``torch.load(weights_only=True)`` (no code in it can run). Its manifest precision is ``fp32``: the
torch runner computes at the precision the caller asks for (fp32, fp16 on CUDA, bf16), and at fp32
it uses exactly the weights the fp32 ONNX encoder was exported from when that encoder came from
an fp16 checkpoint (the default model's does). ``attrs.weights = "fp16"`` says how it is stored.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from smirk_edge.bundle import Artifact, BundleWriter

NAME = "encoder.torch.pt"
KIND = "torch-checkpoint"
ATTRS = {"weights": "fp16", "layout": "official SMIRK (smirk_encoder.*)"}


def save_fp16_checkpoint(encoder: Any, path: str | os.PathLike, meta: Mapping[str, Any] | None = None) -> Path:
    """Write ``encoder``'s weights (fp16) in the official layout to ``path``."""
    import torch

    from smirk_edge.runtimes.torch_encoder import ENCODER_PREFIX, META_KEY

    state: dict[str, Any] = {}
    for k, v in encoder.state_dict().items():
        t = v.detach().cpu()
        state[ENCODER_PREFIX + k] = (t.half() if t.is_floating_point() else t).contiguous()
    info = dict(meta or {})
    cfg = getattr(encoder, "config", None)
    if cfg is not None:
        info["encoder_variant"] = cfg.variant_name()
    state[META_KEY] = json.dumps(info, sort_keys=True)
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def add_torch_artifact(writer: BundleWriter, encoder: Any, workdir: str | os.PathLike,
                       meta: Mapping[str, Any] | None = None, attrs: Mapping[str, Any] | None = None) -> Artifact:
    """Save ``encoder`` as :data:`NAME` in ``workdir`` and register it in ``writer`` (moved in)."""
    path = save_fp16_checkpoint(encoder, Path(workdir) / NAME, meta)
    return writer.add(NAME, KIND, "encoder", path, precision="fp32",
                      attrs={**ATTRS, **dict(attrs or {})},
                      move=True)
