"""Copy the encoder of an official-layout checkpoint into an encoder-only checkpoint (same layout).

``python -m smirk_edge.training.cli_export_encoder IN.pt OUT.pt``: keeps ``smirk_encoder.*`` and
``smirk_edge_meta`` (a stage-2 file with the generator is ~140 MB; the encoder alone is ~14 MB).
"""

from __future__ import annotations

import sys


def main(argv=None) -> int:
    import torch

    from .checkpoint import ENCODER_PREFIX, META_KEY, read_checkpoint

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m smirk_edge.training.cli_export_encoder IN.pt OUT.pt", file=sys.stderr)
        return 2
    ck = read_checkpoint(args[0])  # validates the layout
    state = torch.load(args[0], map_location="cpu", weights_only=True)
    keep = {k: v for k, v in state.items() if k.startswith(ENCODER_PREFIX) or k == META_KEY}
    torch.save(keep, args[1])
    print(f"{args[1]}: {len(ck.encoder)} encoder tensors (step {ck.meta.get('step')}, stage {ck.meta.get('stage')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
