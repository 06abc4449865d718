"""Command-line entry points of the export toolchain (wired into ``smirk-edge`` by smirk_edge/cli.py).

* :func:`export_main`: ``smirk-edge export --checkpoint CKPT -o BUNDLE --calib DIR ...``
* :func:`build_engine_main`: ``smirk-edge build-engine BUNDLE --precision fp16|int8 ...`` (on the target)
* :func:`selftest_main`: ``smirk-edge selftest BUNDLE [--backend ...] [--precision ...]``

Each takes ``argv`` (without the subcommand name) and returns the exit code: 0 on success, 1 when a
gate or selftest fails or a typed error is raised (its message is printed), 2 for bad arguments.
Tables are printed to stdout; errors to stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from collections.abc import Sequence

from smirk_edge.errors import SmirkEdgeError


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


def export_parser() -> argparse.ArgumentParser:
    from .pipeline import FORMATS, PRECISIONS

    p = argparse.ArgumentParser(prog="smirk-edge export",
                                description="Export a SMIRK checkpoint to a gated model bundle (ONNX, OpenVINO; "
                                            "TensorRT engines are built on the target with build-engine).")
    p.add_argument("--checkpoint", required=True,
                   help="checkpoint in the official SMIRK key layout (.pt); 'default': the default model's encoder")
    p.add_argument("--face-model", default=None, help="face-model .npz (default: the shipped stand-in)")
    p.add_argument("-o", "--output", required=True, help="bundle folder to write")
    p.add_argument("--formats", type=_csv(FORMATS), default=["onnx", "openvino"],
                   help="comma-separated: onnx, openvino, tensorrt (the TensorRT-ready int8 QDQ ONNX). "
                        "Default: onnx,openvino")
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
                        "(attrs.cpu_classes) and the SDK skips the artifact on other classes")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _run(fn, argv) -> int:
    try:
        return fn(argv)
    except SmirkEdgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def export_main(argv: Sequence[str] | None = None) -> int:
    """``smirk-edge export``; returns the exit code."""
    def body(argv):
        args = export_parser().parse_args(argv)
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
    return _run(body, argv)


def selftest_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="smirk-edge selftest",
                                description="Run the bundle's golden crops through an engine and check its outputs "
                                            "against the workstation's fp32 reference.")
    p.add_argument("bundle", help="bundle folder, or 'default' for the embedded default model")
    p.add_argument("--backend", default="auto", help="auto, onnxruntime, openvino or tensorrt (default auto)")
    p.add_argument("--precision", default=None, choices=["fp32", "fp16", "bf16", "int8"],
                   help="only artifacts of this precision (default: all the engine opens)")
    p.add_argument("--device", default=None, help="engine device, e.g. GPU for OpenVINO")
    p.add_argument("--artifact", default=None, help="test one artifact by manifest name")
    p.add_argument("--report-dir", default=None, help="save outputs and report.json here")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    return p


def selftest_main(argv: Sequence[str] | None = None) -> int:
    """``smirk-edge selftest``; exit code 0 only when every tested artifact passes."""
    def body(argv):
        args = selftest_parser().parse_args(argv)
        from smirk_edge.cpu import describe_flags

        from .golden import selftest, selftest_table, selftest_verdict

        if args.bundle == "default" and not Path(args.bundle).exists():  # the embedded default bundle
            from smirk_edge.reconstructor import default_bundle_path

            args.bundle = str(default_bundle_path())

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
    return _run(body, argv)


def build_engine_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="smirk-edge build-engine",
                                description="Build a TensorRT 10 engine from the bundle's ONNX on this GPU "
                                            "(engines are not portable: run this on the target).")
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
    return p


def build_engine_main(argv: Sequence[str] | None = None) -> int:
    """``smirk-edge build-engine``; builds, adds the engine to the manifest, runs the selftest on it."""
    def body(argv):
        args = build_engine_parser().parse_args(argv)
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
    return _run(body, argv)
