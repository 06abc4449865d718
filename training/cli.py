"""Command lines of ``smirk-edge train``, ``finetune``, ``evaluate`` and ``pack``.

Light at import (argparse only): each ``*_run`` imports torch and the training code.
:data:`smirk_edge.cli.SUBCOMMANDS` names each ``<command>_add_arguments`` / ``<command>_run`` pair;
:func:`main` builds its parser from those rows too.

Also runnable directly (what torchrun and ``training/gpu_run.sh`` use)::

    python -m smirk_edge.training.cli train --config configs/stage1.yaml ...
    torchrun --nproc_per_node 8 -m smirk_edge.training.cli train --config configs/stage1.yaml ...
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence


def _config_path(name: str) -> str:
    from .config import configs_dir

    p = Path(name)
    if p.is_file():
        return str(p)
    cand = configs_dir() / name
    if cand.is_file():
        return str(cand)
    from smirk_edge.errors import InputError

    raise InputError(f"config {name!r} not found (looked in the current folder and {configs_dir()})")


def _common_train_args(p: argparse.ArgumentParser, default_config: str) -> None:
    from .config import configs_dir

    where = configs_dir()
    names = ", ".join(sorted(f.name for f in where.glob("*.yaml"))) or "none found"
    p.add_argument("--config", default=default_config, metavar="YAML",
                   help=f"training config file, or the name of a shipped one (default {default_config}); "
                        f"shipped configs in {where}: {names}")
    p.add_argument("--out", default=None, metavar="DIR", help="run folder (default runs/<config name>)")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="image folder the annotation paths are relative to (default: the annotation index's root)")
    p.add_argument("--annotations", default=None, metavar="ANN",
                   help="annotation folder (smirk-edge annotate); replaces the config's sources")
    p.add_argument("--shards", action="append", default=[], metavar="DIR",
                   help="packed shard folder (smirk-edge pack); repeatable; replaces the config's sources")
    p.add_argument("--split", default=None, metavar="JSON", help="split file: train on its 'train' list")
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="PATH",
                   help="continue a run (default: <out>/resume.pt)")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--max-minutes", type=float, default=None)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.lr=1e-4 (repeatable)")


def _build_config(args, extra: Sequence[str] = ()):
    from .config import config_from_dict, read_mapping

    data = read_mapping(_config_path(args.config))
    sources = []
    if args.annotations:
        sources.append({"kind": "folder", "annotations": args.annotations, "path": args.data, "split": args.split})
    for s in args.shards:
        sources.append({"kind": "shards", "path": s, "split": args.split})
    if sources:
        data.setdefault("data", {})["sources"] = sources
    sets = list(extra) + list(args.set)
    if args.max_steps is not None:
        sets.append(f"run.max_steps={args.max_steps}")
    if args.max_minutes is not None:
        sets.append(f"run.max_minutes={args.max_minutes}")
    if args.device:
        sets.append(f"run.device={args.device}")
    return config_from_dict(data, sets)


def _fit(cfg, out: str | None, resume) -> int:
    from .trainer import Trainer

    out_dir = out or str(Path("runs") / cfg.name)
    trainer = Trainer(cfg, out_dir, resume=resume)
    try:
        summary = trainer.fit()
    finally:
        trainer.close()
    if trainer.dist.is_main:
        print(json.dumps(summary))
    return 0


# ------------------------------------------------------------------------------------------ train


def train_add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``smirk-edge train``."""
    _common_train_args(p, "stage1.yaml")
    p.add_argument("--stage", type=int, choices=[1, 2], default=None, help="override the config's stage")
    p.add_argument("--init-from", default=None, metavar="CKPT",
                   help="start from a checkpoint in the official layout (stage 2: the stage-1 result); "
                        "'default': the default model, 'fast' / 'full': the embedded model of that encoder variant")


def train_run(args: argparse.Namespace) -> int:
    """Train one stage; prints a JSON summary (steps, stop reason, checkpoint)."""
    extra = []
    if args.stage:
        extra.append(f"stage={args.stage}")
    if args.init_from:
        extra.append(f"model.init_from={args.init_from}")
    return _fit(_build_config(args, extra), args.out, args.resume)


# ------------------------------------------------------------------------------------------ finetune


def finetune_add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``smirk-edge finetune``."""
    p.add_argument("--from", dest="from_ckpt", required=True, metavar="CKPT",
                   help="checkpoint to fine-tune (official layout: ours or SMIRK_em1.pt); 'default': the default model, 'fast' / 'full': the embedded model of that variant")
    _common_train_args(p, "finetune.yaml")
    p.add_argument("--freeze-blocks", type=int, default=None, metavar="N",
                   help="freeze each backbone's stem and first N stages (config default 3)")
    p.add_argument("--train", default=None, metavar="BRANCHES",
                   help="comma-separated branches that learn: pose,shape,expression (config default)")


def finetune_run(args: argparse.Namespace) -> int:
    """Fine-tune a checkpoint on site data (stage-1 losses, frozen early blocks, lower lr)."""
    extra = [f"model.init_from={args.from_ckpt}", "finetune.enabled=true"]
    if args.freeze_blocks is not None:
        extra.append(f"finetune.freeze_blocks={args.freeze_blocks}")
    if args.train:
        extra.append("finetune.train=[" + ",".join(b.strip() for b in args.train.split(",")) + "]")
    return _fit(_build_config(args, extra), args.out, args.resume)


# ------------------------------------------------------------------------------------------ evaluate


def evaluate_add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``smirk-edge evaluate``."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", metavar="CKPT", help="checkpoint in the official layout (torch)")
    src.add_argument("--bundle", metavar="DIR", help="model bundle (runs through smirk_edge.Reconstructor)")
    p.add_argument("--annotations", metavar="ANN", help="annotated photos: landmark NME (+ probe, contact sheet)")
    p.add_argument("--data", metavar="DIR", help="image folder of the annotations (default: their index's root)")
    p.add_argument("--shards", metavar="DIR", help="packed shards (smirk-edge pack) instead of --annotations")
    p.add_argument("--split", metavar="JSON", help="evaluate only the names of one part of a split file")
    p.add_argument("--subset", default="val", help="part of the split file (default val)")
    p.add_argument("--expressive-csv", metavar="CSV",
                   help="faces/expressive.csv: linear probe of expression parameters against its emotions")
    p.add_argument("--probe-unscored", action="append", default=[], metavar="SUBJECT",
                   help="a subject of --expressive-csv whose labels trained the model: the probe learns from it "
                        "but is not scored on it (repeatable; the emotion_subjects recorded in a checkpoint or bundle are added)")
    p.add_argument("--synthetic", type=int, default=0, metavar="N",
                   help="N synthetic faces: parameter/vertex error and left-right accuracy (checkpoint only)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="at most N annotated faces for the NME")
    p.add_argument("--landmarks68", action="append", default=[], metavar="DIR[:SUBSET]",
                   help="a 300-W folder with human 68-point annotations (e.g. ../shared/data/landmarks68/afw): "
                        "68-point NME overall and per yaw bin; :SUBSET keeps one part of --landmarks68-split "
                        "(repeatable; needs --annotations made over a root that contains the folder)")
    p.add_argument("--landmarks68-split", metavar="JSON", help="split file for DIR:SUBSET above")
    p.add_argument("--pipeline", choices=("landmarks", "full"), default="landmarks",
                   help="landmarks: SMIRK's test crop from the annotation's MediaPipe box (default); full (a "
                        "bundle only): what a user gets, Reconstructor(bundle)(image) with its detector")
    p.add_argument("--face-model", metavar="NPZ", help="face model (default: the stand-in)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--out", metavar="DIR", help="write eval.json and contact_sheet.png here")


def evaluate_run(args: argparse.Namespace) -> int:
    """Print the evaluation report as JSON (and write it under ``--out``)."""
    from .evaluate import evaluate

    rep = evaluate(checkpoint=args.checkpoint, bundle=args.bundle, annotations=args.annotations, shards=args.shards,
                   image_root=args.data, split=args.split, subset=args.subset, expressive_csv=args.expressive_csv,
                   synthetic=args.synthetic, limit=args.limit, out_dir=args.out, device=args.device,
                   face_model=args.face_model, progress=lambda s: print(s, file=sys.stderr),
                   landmarks68=args.landmarks68, landmarks68_split=args.landmarks68_split,
                   pipeline=args.pipeline, probe_unscored=args.probe_unscored)
    print(json.dumps(rep, indent=1))
    return 0


# ------------------------------------------------------------------------------------------ pack


def pack_add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``smirk-edge pack``."""
    p.add_argument("--annotations", required=True, metavar="ANN", help="annotation folder (smirk-edge annotate)")
    p.add_argument("--data", default=None, metavar="DIR", help="image folder (default: the annotation index's root)")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="shard folder to write")
    p.add_argument("--include", action="append", default=[], metavar="PREFIX",
                   help="only names starting with PREFIX, e.g. expressive/ (repeatable)")
    p.add_argument("--landmarks68", default=None, metavar="DIR",
                   help="a 300-W folder (NAME.jpg + NAME.json, e.g. ../shared/data/landmarks68/helen_train): "
                        "pack its annotated faces with their human 68 points")
    p.add_argument("--split", default=None, metavar="JSON", help="only the names of one part of a split file")
    p.add_argument("--subset", default="train")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="at most N faces (after --shuffle-seed)")
    p.add_argument("--shuffle-seed", type=int, default=None, metavar="S", help="shuffle before --limit")
    p.add_argument("--size", type=int, default=192, help="stored crop side in pixels (default 192)")
    p.add_argument("--margin", type=float, default=2.2, help="stored square / landmark box (default 2.2)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality (default 90)")
    p.add_argument("--shard-mib", type=float, default=60.0, help="largest shard file in MiB (default 60)")
    p.add_argument("--max-mib", type=float, default=None, help="stop after this many MiB in all")
    p.add_argument("--split-out", default=None, metavar="JSON",
                   help="also write a subject-grouped split of the packed names here")
    p.add_argument("--subjects-csv", default=None, metavar="CSV",
                   help="csv with image,subject columns (faces/expressive.csv) for --split-out groups")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--test-fraction", type=float, default=0.0)
    p.add_argument("--no-progress", action="store_true")


def pack_run(args: argparse.Namespace) -> int:
    """Write shards (and optionally a split); prints a JSON summary."""
    import numpy as np

    from .annotate import read_index
    from .data import (make_split, pack_shards, read_split, subjects_from_csv, table_from_annotations,
                       with_annotated_68, write_split)

    table = table_from_annotations(args.annotations, args.data)
    if args.landmarks68:
        table = with_annotated_68(table, args.landmarks68, args.data or read_index(args.annotations)["root"])
    keep = np.ones(len(table), bool)
    if args.include:
        keep &= np.array([any(str(n).startswith(p) for p in args.include) for n in table.names], bool)
    if args.split:
        names = read_split(args.split, args.subset)
        keep &= np.array([n in names for n in table.names], bool)
    idx = np.flatnonzero(keep)
    if args.shuffle_seed is not None:
        idx = np.random.default_rng(args.shuffle_seed).permutation(idx)
    if args.limit is not None:
        idx = idx[:args.limit]
    table = table.select(np.sort(idx))
    label = ",".join(args.include) if args.include else Path(args.annotations).name
    s = pack_shards(table, args.output, size=args.size, margin=args.margin, quality=args.quality,
                    shard_mib=args.shard_mib, max_mib=args.max_mib, source_name=label, progress=not args.no_progress)
    out = {"output": str(s.output), "faces": s.faces, "shards": s.shards, "mib": round(s.bytes / 2 ** 20, 2),
           "seconds": round(s.seconds, 1)}
    if args.split_out:
        names = [str(n) for n in table.names]
        groups = subjects_from_csv(names, args.subjects_csv) if args.subjects_csv else None
        split = make_split(names, groups, args.val_fraction, args.test_fraction)
        out["split"] = str(write_split(args.split_out, split))
        out["split_sizes"] = {k: len(split[k]) for k in ("train", "val", "test")}
    print(json.dumps(out))
    return 0


# ------------------------------------------------------------------------------------------ main


MODULE = "smirk_edge.training.cli"  # this module's import name (``__name__`` is ``__main__`` under ``python -m``)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m smirk_edge.training.cli COMMAND ...``: the training rows of ``smirk-edge`` (same options)."""
    from smirk_edge.cli import SUBCOMMANDS
    from smirk_edge.cli import main as cli_main

    rows = {name: spec for name, spec in SUBCOMMANDS.items() if spec.module == MODULE}
    return cli_main(argv, rows, prog="python -m smirk_edge.training.cli")


if __name__ == "__main__":
    sys.exit(main())
