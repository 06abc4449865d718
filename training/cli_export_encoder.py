"""Copy the encoder of an official-layout checkpoint into an encoder-only checkpoint (same layout).

``python -m smirk_edge.training.cli_export_encoder IN.pt OUT.pt``: keeps ``smirk_encoder.*`` and
``smirk_edge_meta`` (a stage-2 file with the generator is ~140 MB; the encoder alone is ~14 MB).
Declared like every subcommand (:class:`smirk_edge.cli.Subcommand`: ``add_arguments`` / ``run``),
but not one of ``smirk-edge``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

HELP = "copy the encoder of an official-layout checkpoint into an encoder-only checkpoint"
PROG = "python -m smirk_edge.training.cli_export_encoder"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", metavar="IN.pt", help="checkpoint in the official layout (e.g. a stage-2 run's)")
    p.add_argument("output", metavar="OUT.pt", help="encoder-only checkpoint to write")


def run(args: argparse.Namespace) -> int:
    import torch

    from .checkpoint import ENCODER_PREFIX, META_KEY, read_checkpoint

    ck = read_checkpoint(args.input)  # validates the layout
    state = torch.load(args.input, map_location="cpu", weights_only=True)
    keep = {k: v for k, v in state.items() if k.startswith(ENCODER_PREFIX) or k == META_KEY}
    torch.save(keep, args.output)
    print(f"{args.output}: {len(ck.encoder)} encoder tensors (step {ck.meta.get('step')}, stage {ck.meta.get('stage')})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from smirk_edge.cli import Subcommand, run_command

    return run_command(Subcommand(HELP, "smirk_edge.training.cli_export_encoder"), argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
