"""The ``smirk-edge`` command line.

Subcommands import their heavy modules lazily inside their handlers, so ``smirk-edge info`` or
``smirk-edge reconstruct`` on a device never loads torch.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from dataclasses import dataclass
from typing import Callable, Sequence

from ._version import __version__
from .errors import SmirkEdgeError, install_hint


def info_run(args: argparse.Namespace) -> int:
    from .system import describe

    info = describe(probe=True)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    cpu = info["cpu"]
    print(f"smirk-edge {info['smirk_edge']}  (Python {info['python']}, {info['platform']})")
    print(f"CPU: {cpu['model']}  {cpu['usable_cores']}/{cpu['logical_cores']} cores usable, {cpu['arch']}, "
          f"flags: {' '.join(cpu['flags']) or '-'}")
    if info["gpus"]:
        for g in info["gpus"]:
            print(f"GPU: {g['name']}  {g['memory']}  driver {g['driver'] or '-'}  "
                  f"compute capability {g['compute_capability'] or '-'}")
    else:
        print("GPU: none found")
    print("Packages:")
    for name, version in info["packages"].items():
        print(f"  {name:24s} {version or 'not installed'}")
    print("Engines:")
    engines = info.get("engines", {})
    rows = {
        "onnxruntime": lambda d: "providers: " + ", ".join(d.get("providers", [])),
        "openvino": lambda d: "devices: " + ", ".join(d.get("devices", [])),
        "torch": lambda d: "CUDA: " + (", ".join(d["cuda_devices"]) if d.get("cuda") else "no"),
        "tensorrt": lambda d: "version " + d.get("version", "?"),
    }
    extras = {"onnxruntime": "onnxruntime", "openvino": "openvino", "torch": "torch", "tensorrt": "tensorrt"}
    for name, fmt in rows.items():
        d = engines.get(name)
        if d is None:
            print(f"  {name:12s} not installed  ({install_hint(extras[name])})")
        elif "error" in d:
            print(f"  {name:12s} BROKEN: {d['error']}")
        else:
            print(f"  {name:12s} {fmt(d)}")
    return 0


def info_add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the machine description as JSON")


@dataclass(frozen=True)
class Subcommand:
    """One subcommand, declared one way: the module and the names of its two entry points.

    ``module.<add_arguments>(parser)`` declares the arguments and ``module.<run>(args) -> int`` runs
    them. With ``own_parser=True`` the module parses its own arguments: ``module.<run>(argv) -> int``.
    The module must be light to import (argparse only at module level): ``run`` imports the heavy
    parts, so ``smirk-edge --help`` and device-side commands never load torch.
    """

    help: str
    module: str
    add_arguments: str = "add_arguments"
    run: str = "run"
    own_parser: bool = False

    def entry(self) -> Callable:
        return getattr(importlib.import_module(self.module), self.run)

    def resolve(self) -> tuple[Callable, Callable]:
        mod = importlib.import_module(self.module)
        return getattr(mod, self.add_arguments), getattr(mod, self.run)


_TRAINING = "smirk_edge.training.cli"
_EXPORT = "smirk_edge.export.cli"
SUBCOMMANDS: dict[str, Subcommand] = {
    "info": Subcommand("engines found, versions, CPU and GPU of this machine", __name__,
                       "info_add_arguments", "info_run"),
    "reconstruct": Subcommand("reconstruct faces in images, folders and videos: overlays, meshes, JSON",
                              "smirk_edge.reconstruct_cli"),
    "annotate": Subcommand("MediaPipe landmarks for image folders (training labels; needs a MediaPipe side environment)",
                           "smirk_edge.training.annotate"),
    "train": Subcommand("train SMIRK stage 1 or 2 from a config file", _TRAINING, "train_add_arguments", "train_run"),
    "finetune": Subcommand("fine-tune a checkpoint on site data", _TRAINING, "finetune_add_arguments",
                           "finetune_run"),
    "evaluate": Subcommand("evaluate a checkpoint or bundle: landmark NME, synthetic recovery, expression probe",
                           _TRAINING, "evaluate_add_arguments", "evaluate_run"),
    "pack": Subcommand("pack annotated photos into compact training shards", _TRAINING, "pack_add_arguments",
                       "pack_run"),
    "export": Subcommand("export a checkpoint to a gated bundle: ONNX fp32/fp16/int8, OpenVINO IR, fused graph",
                         _EXPORT, run="export_main", own_parser=True),
    "build-engine": Subcommand("build a TensorRT 10 engine from a bundle on the target GPU",
                               _EXPORT, run="build_engine_main", own_parser=True),
    "selftest": Subcommand("check a bundle's engine against the golden fp32 outputs on this machine",
                           _EXPORT, run="selftest_main", own_parser=True),
    "bench": Subcommand("latency, throughput and memory per stage and engine; JSON/CSV/Markdown/plots",
                        "smirk_edge.benchmarks.cli"),
    "convert-flame": Subcommand("convert licensed FLAME 2020 + SMIRK assets into a smirk-edge face model (.npz)",
                                "smirk_edge.face_model.convert"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smirk-edge", description="SMIRK 3D face reconstruction on edge engines.")
    parser.add_argument("--version", action="version", version=f"smirk-edge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, spec in SUBCOMMANDS.items():
        if spec.own_parser:  # parses its own arguments; listed here for --help only
            sub.add_parser(name, help=spec.help, description=spec.help, add_help=False)
            continue
        add_arguments, run = spec.resolve()
        p = sub.add_parser(name, help=spec.help, description=spec.help)
        add_arguments(p)
        p.set_defaults(handler=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS and SUBCOMMANDS[argv[0]].own_parser:
        entry = SUBCOMMANDS[argv[0]].entry()
        try:
            return int(entry(argv[1:]) or 0)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except SmirkEdgeError as exc:
        print(f"smirk-edge {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
