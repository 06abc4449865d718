"""``smirk-edge bench`` (and ``python -m smirk_edge.benchmarks``): its ``add_arguments`` / ``run``
pair, named by the ``bench`` row of :data:`smirk_edge.cli.SUBCOMMANDS`. Light at import
(argparse only).
"""

from __future__ import annotations

import argparse


def _ints(text: str) -> list[int]:
    try:
        vals = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return vals


def _words(choices):
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if choices and t not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)} (comma-separated), got {text!r}")
        return items
    return parse


def _onoff(text: str) -> list:
    table = {"on": True, "off": False, "true": True, "false": False, "1": True, "0": False, "auto": "auto"}
    try:
        return [table[t.strip().lower()] for t in text.split(",") if t.strip()]
    except KeyError:
        raise argparse.ArgumentTypeError(f"expected auto, on, off (comma-separated), got {text!r}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``smirk-edge bench``."""
    p.add_argument("--bundle", default=None,
                   help="bundle to measure (default: build a benchmark bundle: full encoder, random weights)")
    p.add_argument("--bundle-cache", default=None,
                   help="where the benchmark bundle is built and reused (default: OUT/bundle)")
    p.add_argument("--backends", type=_words(["onnxruntime", "openvino", "tensorrt"]), default=None,
                   help="engines, comma-separated (default: every installed CPU engine)")
    p.add_argument("--precisions", type=_words(["fp32", "fp16", "bf16", "int8"]), default=None,
                   help="artifact precisions (default: every precision in the bundle)")
    p.add_argument("--batch", type=_ints, default=[1, 8, 64], help="encoder batch sizes (default 1,8,64)")
    p.add_argument("--threads", type=_ints, default=[1, 2], help="engine threads (default 1,2)")
    p.add_argument("--input", nargs="+", default=None, metavar="720p|FILE",
                   help="'720p' (default: a real face photo on a 1280x720 frame), image files or one video file")
    p.add_argument("--face-photo", default=None, help="the photo pasted into the 720p frame (default: shared data)")
    p.add_argument("--native", action="store_true", help="use image files as they are (not pasted on 720p)")
    p.add_argument("--mode", type=_words(["image", "video"]), default=["image", "video"],
                   help="image (detector every frame), video (tracking + smoothing); default both")
    p.add_argument("--refine", type=_onoff, default=["auto"],
                   help="refine pass: auto (the SDK default: only where the boxes disagree), on (always), off, "
                        "or a comma-separated list (default auto)")
    p.add_argument("--read", type=_words(["all", "landmarks", "params"]), default=["all"],
                   help="what each timed call reads from every face (the SDK computes geometry when first read): "
                        "all (every field), landmarks (the 68 points), params (parameters only); comma-separated; "
                        "default all")
    p.add_argument("--runs", type=int, default=100, help="timed runs per configuration (default 100)")
    p.add_argument("--warmup", type=int, default=10, help="warm-up runs (default 10)")
    p.add_argument("--decode-image", action="store_true", help="pass JPEG files so image decoding is timed too")
    p.add_argument("--no-reference", action="store_true", help="skip the reference path (torch eager, float64 warp)")
    p.add_argument("--no-encoder", action="store_true", help="skip the encoder-only throughput suite")
    p.add_argument("--no-hotpath", action="store_true", help="skip the hot-path probes (benchmarks/hotpath.py)")
    p.add_argument("--mediapipe-python", default=None,
                   help="interpreter with mediapipe 0.10.21 (default: $SMIRK_EDGE_MEDIAPIPE_PYTHON)")
    p.add_argument("--budget", type=float, default=20.0,
                   help="seconds per throughput point before runs are reduced (never below 10); default 20")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per configuration process")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--keep-work", action="store_true", help="keep OUT/work (configs, inputs, per-process rows)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p.add_argument("-o", "--output", default="bench-results", help="output folder (default bench-results)")
    p.add_argument("--gpu", action="store_true",
                   help="GPU mode: torch eager / CUDA graphs / torch.compile, fp32/fp16/bf16 (see benchmarks/gpu.py)")
    p.add_argument("--quick", action="store_true", help="GPU mode: the short sweep (< 8 minutes)")


def run(args: argparse.Namespace) -> int:
    """Handler of ``smirk-edge bench``."""
    if args.runs < 1 or args.warmup < 0:
        raise SystemExit("smirk-edge bench: --runs must be >= 1 and --warmup >= 0")
    if args.gpu:
        from .gpu import main as gpu_main

        argv = ["--out", args.output] + (["--quick"] if args.quick else []) + (
            ["--bundle", args.bundle] if args.bundle else [])
        return gpu_main(argv)
    from .harness import BenchOptions, run_bench

    opts = BenchOptions(out=args.output, bundle=args.bundle, bundle_cache=args.bundle_cache, backends=args.backends,
                        precisions=args.precisions, batches=args.batch, threads=args.threads, inputs=args.input,
                        face_photo=args.face_photo, native=args.native, modes=args.mode, refine=args.refine, reads=args.read,
                        runs=args.runs, warmup=args.warmup, decode_image=args.decode_image,
                        reference=not args.no_reference, encoder_suite=not args.no_encoder, hotpath=not args.no_hotpath,
                        mediapipe_python=args.mediapipe_python, budget_s=args.budget, timeout_s=args.timeout,
                        plots=not args.no_plots, keep_work=args.keep_work, quiet=args.quiet)
    rows, _ = run_bench(opts)
    return 0 if rows and all(r.get("stage") != "error" for r in rows) else 1
