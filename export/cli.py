"""Command lines of the export toolchain: ``smirk-edge export``, ``build-engine`` and ``selftest``.

Each subcommand is a ``<command>_add_arguments`` / ``<command>_run`` pair named by its row in
:data:`smirk_edge.cli.SUBCOMMANDS` (light at import: argparse only):

* ``export``: ``smirk-edge export --checkpoint CKPT -o BUNDLE --calib DIR ...``
* ``build-engine``: ``smirk-edge build-engine BUNDLE --precision fp16|int8 ...`` (on the target)
* ``selftest``: ``smirk-edge selftest BUNDLE [--backend ...] [--precision ...]``

:func:`export_main`, :func:`build_engine_main` and :func:`selftest_main` run one of them from
Python: they take ``argv`` (without the subcommand name) and return the exit code: 0 on success,
1 when a gate or selftest fails or a typed error is raised (its message is printed), 2 for bad
arguments. Tables are printed to stdout; errors to stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from collections.abc import Sequence


def _csv(choices: Sequence[str] | None):
    """argparse type: a comma-separated list, each item one of ``choices`` (None: any name)."""
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        if choices is None:
            if not items:
                raise argparse.ArgumentTypeError(f"give at least one name (comma-separated), got {text!r}")
            return items
        bad = [t for t in items if t not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)} (comma-separated), got {text!r}")
        return items
    return parse


def export_add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``smirk-edge export``."""
    from .kinds import FORMATS, PRECISIONS

    p.description = ("Export a SMIRK checkpoint to a gated model bundle (ONNX, OpenVINO; TensorRT engines are "
                     "built on the target with build-engine).")
    p.add_argument("--checkpoint", required=True,
                   help="checkpoint in the official SMIRK key layout (.pt); 'default': the default model's encoder")
    p.add_argument("--face-model", default=None, help="face-model .npz (default: the shipped stand-in)")
    p.add_argument("-o", "--output", required=True, help="bundle folder to write")
    p.add_argument("--formats", type=_csv(FORMATS), default=["onnx", "openvino", "torch"],
                   help="comma-separated: onnx, openvino, tensorrt (the TensorRT-ready int8 QDQ ONNX), torch (the "
                        "fp16 checkpoint backend='torch' runs). Default: onnx,openvino,torch")
    p.add_argument("--precisions", type=_csv(PRECISIONS), default=list(PRECISIONS),
                   help="comma-separated: fp32, fp16, int8. Default: all")
    p.add_argument("--calib", required=True, help="folder of face photos: calibration and held-back gate crops")
    p.add_argument("--fused", action="store_true", help="also write encoder + face-model ONNX graphs "
                                                        "(outputs vertices, landmarks68, landmarks105)")
    p.add_argument("--allow-degraded", action="store_true", help="keep artifacts that fail the gate, marked degraded")
    p.add_argument("--gate-count", type=int, default=200, help="held-back crops for the accuracy gate (default 200)")
    p.add_argument("--calib-count", type=int, default=500, help="at most this many calibration crops (default 500)")
    p.add_argument("--golden-count", type=int, default=16, help="crops stored in golden.npz (default 16)")
    p.add_argument("--report-dir", default=None, help="save the comparator's outputs and report here")
    p.add_argument("--keep", type=_csv(None), default=None, metavar="NAMES",
                   help="comma-separated artifact names to gate and write (default: all that are made)")
    p.add_argument("--golden-from", nargs="+", default=None, metavar="IMAGE",
                   help="photos for golden.npz (jittered crops) instead of held-back crops of --calib: "
                        "for bundles you publish when the calibration photos may not travel")
    p.add_argument("--card-notes", default=None, metavar="MD",
                   help="Markdown placed at the top of the bundle's MODEL_CARD.md (data, terms, evaluation)")
    p.add_argument("--int8-cpu-class", default=None,
                   choices=["amx", "avx512-vnni", "avx-vnni", "avx512", "avx2", "generic"],
                   help="CPU class the ONNX Runtime int8 artifact is for (default: this machine's, "
                        "smirk_edge.cpu.cpu_class). Classes without VNNI get 7-bit weights (reduce_range). "
                        "The gate runs here, so it must be this machine's class; the manifest records it "
                        "(attrs.cpu_classes: that class, or every VNNI class for one of them) and the SDK skips the "
                        "artifact on other classes")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def export_parser() -> argparse.ArgumentParser:
    """The parser of ``smirk-edge export`` on its own."""
    p = argparse.ArgumentParser(prog="smirk-edge export")
    export_add_arguments(p)
    return p


def export_run(args: argparse.Namespace) -> int:
    """Run ``smirk-edge export``: the gate table, the bundle and the times; 1 when the gate fails."""
    from .gate import GateError
    from .pipeline import ExportOptions, export_bundle

    opts = ExportOptions(checkpoint=args.checkpoint, output=args.output, face_model=args.face_model,
                         formats=args.formats, precisions=args.precisions, calib=args.calib, fused=args.fused,
                         allow_degraded=args.allow_degraded, gate_count=args.gate_count,
                         min_gate_count=min(200, args.gate_count), calib_count=args.calib_count,
                         golden_count=args.golden_count, report_dir=args.report_dir,
                         card_notes=args.card_notes, keep=args.keep, golden_from=args.golden_from,
                         progress=not args.no_progress, int8_cpu_class=args.int8_cpu_class)
    try:
        report = export_bundle(opts)
    except GateError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    print(report.table())
    print(f"\nbundle: {report.bundle.root}  ({len(report.written)} artifacts gated and written)")
    print("times (s): " + ", ".join(f"{k} {v:.1f}" for k, v in report.timings.items()))
    return 0


def export_main(argv: Sequence[str] | None = None) -> int:
    """``smirk-edge export`` from Python; returns the exit code."""
    from smirk_edge.cli import run_command

    return run_command("export", argv)


def selftest_add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``smirk-edge selftest``."""
    p.description = ("Run the bundle's golden crops through an engine and check its outputs against the "
                     "workstation's fp32 reference.")
    p.add_argument("bundle", help="bundle folder, 'default' for the embedded default model, or 'fast' / 'full' "
                                  "for the embedded model of that encoder variant")
    p.add_argument("--backend", default="auto", help="auto, onnxruntime, openvino or tensorrt (default auto)")
    p.add_argument("--precision", default=None, choices=["fp32", "fp16", "bf16", "int8"],
                   help="only artifacts of this precision (default: all the engine opens)")
    p.add_argument("--device", default=None, help="engine device, e.g. GPU for OpenVINO")
    p.add_argument("--artifact", default=None, help="test one artifact by manifest name")
    p.add_argument("--report-dir", default=None, help="save outputs and report.json here")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")


def selftest_run(args: argparse.Namespace) -> int:
    """Run ``smirk-edge selftest``; exit code 0 only when every tested artifact passes."""
    from smirk_edge.cpu import describe_flags

    from .golden import selftest, selftest_table, selftest_verdict

    if args.bundle in ("default", "fast", "full") and not Path(args.bundle).exists():  # an embedded bundle
        from smirk_edge.reconstructor import default_bundle_path

        args.bundle = str(default_bundle_path(None if args.bundle == "default" else args.bundle))

    rows = selftest(args.bundle, backend=args.backend, precision=args.precision, device=args.device,
                    artifact=args.artifact, out_dir=args.report_dir)
    if args.json:
        import json

        print(json.dumps([r.to_json() for r in rows], indent=2))
    else:
        print(f"CPU class: {describe_flags()}")
        print(selftest_table(rows))
    ok = selftest_verdict(rows)
    applying = [r for r in rows if r.applies]
    line = f"\nselftest: {'PASS' if ok else 'FAIL'} ({sum(r.passed for r in applying)}/{len(applying)} artifacts"
    others = [r.name for r in rows if not r.applies]
    if others:
        line += f" valid on this CPU; not for this CPU class, not counted: {', '.join(others)}"
    print(line + ")")
    return 0 if ok else 1


def selftest_main(argv: Sequence[str] | None = None) -> int:
    """``smirk-edge selftest`` from Python; exit code 0 only when every tested artifact passes."""
    from smirk_edge.cli import run_command

    return run_command("selftest", argv)


def build_engine_add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``smirk-edge build-engine``."""
    p.description = ("Build a TensorRT 10 engine from the bundle's ONNX on this GPU (engines are not portable: "
                     "run this on the target).")
    p.add_argument("bundle", help="bundle folder")
    p.add_argument("--precision", required=True, choices=["fp16", "int8"],
                   help="fp16 (from encoder.onnx) or int8 (explicit quantization from the TensorRT QDQ ONNX)")
    p.add_argument("--min-batch", type=int, default=1)
    p.add_argument("--opt-batch", type=int, default=1)
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--timing-cache", default=None, help="timing cache file (read if present, updated after the build)")
    p.add_argument("--workspace", type=float, default=None, help="workspace memory pool limit in GiB")
    p.add_argument("--dla", type=int, default=None, help="build for DLA core N (Jetson), GPU fallback on")
    p.add_argument("--fused", action="store_true", help="build from the fused graph instead of the encoder")
    p.add_argument("--no-selftest", action="store_true", help="skip the golden check after building")


def build_engine_run(args: argparse.Namespace) -> int:
    """Run ``smirk-edge build-engine``: build, add the engine to the manifest, run the selftest on it."""
    from .tensorrt_build import BuildOptions, build_engine

    result = build_engine(args.bundle, BuildOptions(
        precision=args.precision, min_batch=args.min_batch, opt_batch=args.opt_batch, max_batch=args.max_batch,
        timing_cache=args.timing_cache, workspace_gib=args.workspace, dla_core=args.dla, fused=args.fused))
    print(f"engine: {result.path}  ({result.seconds:.1f} s)")
    if args.no_selftest:
        return 0
    from .golden import selftest, selftest_table

    rows = selftest(args.bundle, backend="tensorrt", artifact=result.artifact)
    print(selftest_table(rows))
    return 0 if rows and all(r.passed for r in rows) else 1


def build_engine_main(argv: Sequence[str] | None = None) -> int:
    """``smirk-edge build-engine`` from Python; returns the exit code."""
    from smirk_edge.cli import run_command

    return run_command("build-engine", argv)
