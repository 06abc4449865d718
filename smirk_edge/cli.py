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
from typing import Callable, Mapping, Sequence

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
    """One subcommand, declared the one way: a module and the names of its two functions there.

    ``module.<add_arguments>(parser)`` declares the arguments (it may set ``parser.description``)
    and ``module.<run>(args) -> int`` runs them and returns the exit code. A module with one
    subcommand names them ``add_arguments`` / ``run``; a module with several, ``<command>_add_arguments``
    / ``<command>_run``. The module must be light to import (argparse only at module level):
    ``run`` imports the heavy parts, so ``smirk-edge --help`` and device-side commands never load
    torch. :func:`main`, :func:`run_command` (a ``python -m`` entry point of one subcommand) and
    the training launcher (``python -m smirk_edge.training.cli``) all build their parsers from
    these rows.
    """

    help: str
    module: str
    add_arguments: str = "add_arguments"
    run: str = "run"

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
                         _EXPORT, "export_add_arguments", "export_run"),
    "build-engine": Subcommand("build a TensorRT 10 engine from a bundle on the target GPU",
                               _EXPORT, "build_engine_add_arguments", "build_engine_run"),
    "selftest": Subcommand("check a bundle's engine against the golden fp32 outputs on this machine",
                           _EXPORT, "selftest_add_arguments", "selftest_run"),
    "bench": Subcommand("latency, throughput and memory per stage and engine; JSON/CSV/Markdown/plots",
                        "smirk_edge.benchmarks.cli"),
    "convert-flame": Subcommand("convert licensed FLAME 2020 + SMIRK assets into a smirk-edge face model (.npz)",
                                "smirk_edge.face_model.convert"),
}


def build_parser(commands: Mapping[str, Subcommand] | None = None, prog: str = "smirk-edge") -> argparse.ArgumentParser:
    """The parser of ``prog``: one subparser per row of ``commands`` (default :data:`SUBCOMMANDS`)."""
    parser = argparse.ArgumentParser(prog=prog, description="SMIRK 3D face reconstruction on edge engines.")
    parser.add_argument("--version", action="version", version=f"smirk-edge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, spec in (SUBCOMMANDS if commands is None else commands).items():
        add_arguments, run = spec.resolve()
        p = sub.add_parser(name, help=spec.help, description=spec.help)
        add_arguments(p)
        p.set_defaults(handler=run)
    return parser


def _handle(run: Callable[[argparse.Namespace], int], args: argparse.Namespace, label: str) -> int:
    """Run a handler: typed errors become one line on stderr and exit code 1, Ctrl-C 130."""
    try:
        return int(run(args) or 0)
    except SmirkEdgeError as exc:
        print(f"{label}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None, commands: Mapping[str, Subcommand] | None = None,
         prog: str = "smirk-edge") -> int:
    """``smirk-edge COMMAND ...`` (or ``prog`` over a subset of the rows); returns the exit code."""
    parser = build_parser(commands, prog)
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 2
    return _handle(args.handler, args, f"{prog} {args.command}")


def run_command(command: str | Subcommand, argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """One subcommand alone: ``run_command("export", argv)`` is ``smirk-edge export ARGV``.

    What a module's ``python -m`` entry point and the ``*_main(argv)`` functions call. ``command``
    is a row name of :data:`SUBCOMMANDS`, or a :class:`Subcommand` of a tool that is no
    ``smirk-edge`` subcommand (then ``prog`` is required); ``prog`` names the command in usage and
    error lines (default ``smirk-edge NAME``).
    """
    if isinstance(command, Subcommand):
        if prog is None:
            raise TypeError("run_command(Subcommand(...)) needs prog, the name the command is run by")
        spec = command
    else:
        spec, prog = SUBCOMMANDS[command], prog or f"smirk-edge {command}"
    add_arguments, run = spec.resolve()
    parser = argparse.ArgumentParser(prog=prog, description=spec.help)
    add_arguments(parser)
    return _handle(run, parser.parse_args(list(sys.argv[1:] if argv is None else argv)), prog)


if __name__ == "__main__":
    sys.exit(main())
