"""GPU mode of the harness: torch eager vs CUDA graphs vs torch.compile, fp32 / fp16 / bf16, NCHW /
channels_last, batch 1..256 (the official path), the SDK's own GPU path, and the CPU engines of the GPU machine.

Run it on the GPU machine from a plain repository checkout with ``benchmarks/gpu_entry.sh``
(it bootstraps the ``smirk_edge`` namespace without installing anything; see
:mod:`gpu_entry <benchmarks.gpu_entry>`)::

    benchmarks/gpu_entry.sh --quick            # < 8 minutes; rows in $OUT/gpu_results.json

What is measured (suites in the rows):

* ``gpu-encoder``: the full SMIRK encoder (random weights), per mode, dtype, layout and batch:
  ``eager+autograd`` (how the upstream demo calls it), ``eager`` (``inference_mode``),
  ``cudagraph`` (one captured graph), ``cudagraph-3streams`` (the three sub-encoders captured on
  three forked streams so they overlap: batch 1 is launch-bound), ``compile`` (``torch.compile``,
  inductor with freezing, mode ``default`` with ``--quick`` else ``max-autotune-no-cudagraphs``,
  replayed inside our own CUDA graph). Time: CUDA events
  around each call, synchronised, after warm-up.
* ``sdk-gpu``: the SDK itself, ``Reconstructor(backend="torch", device="cuda")``: ``image`` (one
  720p frame with a real face per call: detection on the CPU engine, then crop, encode, decode and
  projection on the GPU), ``video`` (``stream``'s tracker, one frame per call) and ``batch``
  (``rec.batch`` of face photos: all faces through the GPU as one batch); wall clock per public
  call with the results on the host, plus the call's own stage timings (``stage``), and for
  ``batch`` the ``encode+decode+project`` part of the call.
* ``gpu-host-cpu``: ONNX Runtime (CPU provider) on that machine's cores: the encoder (``--bundle``'s
  ONNX artifacts, else an ONNX exported there) and the BlazeFace detector on the 720p frame;
  OpenVINO too when installed (it is not on the project's GPU machine: a ``skipped`` row says so).

Each group of configurations runs in a fresh process; a time budget (``--max-minutes``) skips
what would not fit, with a row saying so.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

QUICK_BATCHES = (1, 16, 64, 256)
FULL_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


# ------------------------------------------------------------------------------------- helpers
def _describe() -> tuple[dict, dict]:
    from smirk_edge.system import describe

    info = describe(probe=False)
    versions = info.pop("packages")
    return info, versions


def _stats_row(base: dict, samples: list[float], **extra) -> dict:
    from .stats import summarize

    r = dict(base)
    r.update(summarize(samples))
    r.update(runs=len(samples), **extra)
    if r.get("batch") and r.get("p50_ms"):
        r["items_per_s"] = r["batch"] * 1e3 / r["p50_ms"]
    return r


class Timer:
    """Per-call timing: CUDA events on a GPU (synchronised after each call), perf_counter otherwise."""

    def __init__(self, device):
        import torch

        self.cuda = device.type == "cuda"
        self.torch = torch

    def time(self, fn, runs: int, warmup: int) -> list[float]:
        torch = self.torch
        for _ in range(warmup):
            fn()
        if self.cuda:
            torch.cuda.synchronize()
        out = []
        for _ in range(runs):
            if self.cuda:
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                fn()
                b.record()
                b.synchronize()
                out.append(a.elapsed_time(b))
            else:
                t = time.perf_counter()
                fn()
                out.append((time.perf_counter() - t) * 1e3)
        return out


def _encoder(variant: str, device, dtype, channels_last: bool):
    import torch

    from smirk_edge.runtimes.torch_encoder import random_encoder

    enc = random_encoder(variant).to(device=device, dtype=dtype)
    if channels_last:
        enc = enc.to(memory_format=torch.channels_last)
    return enc


def _input(batch: int, device, dtype, channels_last: bool):
    import torch

    g = torch.Generator().manual_seed(batch)
    x = torch.rand(batch, 3, 224, 224, generator=g).to(device=device, dtype=dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _three_streams(enc, device):
    """forward() running the pose / shape / expression sub-encoders on three forked CUDA streams."""
    import torch

    from smirk_edge.runtimes.torch_encoder import OUTPUT_NAMES

    subs = [enc.pose_encoder, enc.shape_encoder, enc.expression_encoder]
    streams = [torch.cuda.Stream(device) for _ in subs]

    def fwd(x):
        cur = torch.cuda.current_stream(device)
        outs = {}
        for sub, s in zip(subs, streams):
            s.wait_stream(cur)
            with torch.cuda.stream(s):
                outs.update(sub(x))
        for s in streams:
            cur.wait_stream(s)
        return {k: outs[k] for k in OUTPUT_NAMES}

    return fwd


def _capture(fn, x, warm: int = 3):
    """Capture ``fn(x_static)`` in a CUDA graph. Returns (replay, static_in, static_out)."""
    import torch

    static_in = x.clone()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s), torch.inference_mode():
        for _ in range(warm):
            fn(static_in)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g), torch.inference_mode():
        static_out = fn(static_in)
    return g.replay, static_in, static_out


# ------------------------------------------------------------------------------------- groups
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def group_encoder(cfg: dict) -> list[dict]:
    """One encoder mode over its (dtype, layout, batch) points."""
    import torch

    device = torch.device(cfg["device"])
    timer = Timer(device)
    rows = _Rows(cfg.get("out_path"))
    base = dict(cfg["base"])
    deadline = cfg["deadline"]
    for point in cfg["points"]:
        dt_name, layout, batch = point["dtype"], point["layout"], point["batch"]
        dtype = getattr(torch, DTYPES[dt_name])
        cl = layout == "channels_last"
        r0 = {**base, "suite": "gpu-encoder", "engine": cfg["mode"], "precision": dt_name, "layout": layout,
              "batch": batch, "stage": "encode", "config": f"gpu/{cfg['mode']}/{dt_name}/{layout}/b{batch}"}
        if time.time() > deadline:
            rows.append({**r0, "stage": "error", "note": "skipped: time budget spent"})
            continue
        try:
            enc = _encoder(cfg["variant"], device, dtype, cl)
            x = _input(batch, device, dtype, cl)
            note = ""
            t_build = time.perf_counter()
            mode = cfg["mode"]
            if mode == "eager+autograd":
                def fn():
                    return enc(x)
            elif mode == "eager":
                def fn():
                    with torch.inference_mode():
                        return enc(x)
            elif mode in ("cudagraph", "cudagraph-3streams"):
                f = _three_streams(enc, device) if mode == "cudagraph-3streams" else enc
                replay, _, _ = _capture(f, x)
                fn = replay
            elif mode.startswith("compile"):
                import torch._inductor.config as inductor_config

                inductor_config.freezing = True  # fold weights: conv + BN fusion under inference_mode
                cmode = cfg.get("compile_mode", "default")
                compiled = torch.compile(enc, mode=cmode, dynamic=False)
                with torch.inference_mode():
                    compiled(x)  # compile now (timed as build)
                if device.type == "cuda":
                    replay, _, _ = _capture(compiled, x)
                    fn = replay
                    note = f"torch.compile(mode={cmode!r}) replayed in a CUDA graph"
                else:
                    def fn():
                        with torch.inference_mode():
                            return compiled(x)
                    note = f"torch.compile(mode={cmode!r})"
            else:
                raise ValueError(f"unknown mode {mode}")
            build_s = time.perf_counter() - t_build
            runs = cfg["runs"] if batch <= 64 else max(20, cfg["runs"] // 4)
            samples = timer.time(fn, runs, cfg["warmup"])
            rows.append(_stats_row(r0, samples, warmup=cfg["warmup"], build_s=round(build_s, 2), note=note,
                                   peak_gpu_mb=round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
                                   if device.type == "cuda" else None))
            del enc, x, fn
            if device.type == "cuda":
                torch.cuda.empty_cache()
        except Exception as exc:  # noqa: BLE001 - one failing point must not lose the others
            rows.append({**r0, "stage": "error", "note": f"{type(exc).__name__}: {str(exc)[:300]}"})
    return rows


def group_sdk(cfg: dict) -> list[dict]:
    """The SDK's own GPU path: ``Reconstructor(backend="torch", device=...)`` on a 720p frame with a
    real face (``image``: detection + reconstruction per call; ``video``: ``stream``'s tracker, one
    frame per call; ``batch``: ``rec.batch`` of face photos). Wall-clock per public call, results on
    the host (every call returns numpy :class:`~smirk_edge.results.Face` records); the stage rows
    are the call's own ``timings``."""
    import cv2
    import torch

    from smirk_edge import Reconstructor
    from smirk_edge.benchmarks.stress_sheet import example_photo

    from .inputs import synthetic_720p

    device = cfg["device"]
    precision = cfg.get("dtype", "fp16" if device.startswith("cuda") else "fp32")
    runs, warmup = cfg["runs"], cfg["warmup"]
    frame = synthetic_720p().frames[0]
    base = {**cfg["base"], "suite": "sdk-gpu", "engine": "torch", "precision": precision, "layout": "channels_last",
            "model": {"bundle": cfg.get("bundle") or "default"}}
    rows = _Rows(cfg["out_path"])

    def timed(fn):
        out = None
        for _ in range(warmup):
            out = fn()
        samples = []
        for _ in range(runs):
            t = time.perf_counter()
            out = fn()
            samples.append((time.perf_counter() - t) * 1e3)
        return samples, out

    def stage_rows(mode: str, batch: int, result_timings: list[dict], items: int) -> None:
        keys = sorted({k for t in result_timings for k in t if k != "total"})
        for k in keys:
            vals = [t.get(k, 0.0) for t in result_timings]
            rows.append(_stats_row({**base, "mode": mode, "batch": batch, "stage": k,
                                    "config": f"sdk-gpu/{mode}/{batch}/{k}"}, vals))

    with Reconstructor(cfg.get("bundle"), backend="torch", device=device, precision=precision) as rec:
        base["engine_detail"] = rec.engine
        base["model"] = {**rec.model, "bundle": cfg.get("bundle") or "default"}
        # image: detect + reconstruct, one public call per frame
        timings: list[dict] = []

        def image_call():
            res = rec(frame)
            timings.append(res.timings)
            return res

        samples, res = timed(image_call)
        timings = timings[-runs:]
        rows.append(_stats_row({**base, "mode": "image", "batch": 1, "stage": "total", "faces": len(res),
                                "config": "sdk-gpu/image/1/total", "refine": rec.refine}, samples))
        stage_rows("image", 1, timings, 1)
        # video: the tracker of stream(), one frame per call (tracked after the first)
        tracker = rec.tracker()
        state = {"i": 0}
        vt: list[dict] = []

        def video_call():
            r = tracker.step(frame, state["i"], None)
            state["i"] += 1
            vt.append(r.timings)
            return r

        samples, res = timed(video_call)
        vt = vt[-runs:]
        detected = sum(1 for t in vt if "detect" in t)
        rows.append(_stats_row({**base, "mode": "video", "batch": 1, "stage": "total", "faces": len(res),
                                "config": "sdk-gpu/video/1/total", "detector_frames": detected}, samples))
        stage_rows("video", 1, vt, 1)
        # batch: rec.batch of face photos (one face each), all faces through the GPU as one batch
        photo = cv2.imread(str(example_photo()), cv2.IMREAD_COLOR)
        for n in cfg.get("batches", [64, 256]):
            imgs = [photo] * n
            bt: list[dict] = []

            def batch_call(imgs=imgs, bt=bt):
                out = rec.batch(imgs)
                bt.append(out[0].timings if out else {})
                return out

            samples, out = timed(batch_call)
            faces = sum(len(r) for r in out)
            row = _stats_row({**base, "mode": "batch", "batch": n, "stage": "total", "faces": faces,
                              "config": f"sdk-gpu/batch/{n}/total", "input": f"{n} photos {photo.shape[1]}x{photo.shape[0]}"},
                             samples)
            rows.append(row)
            bt = bt[-runs:]
            core = [sum(t.get(k, 0.0) for k in ("encode", "decode", "project")) for t in bt]
            rows.append(_stats_row({**base, "mode": "batch", "batch": n, "stage": "encode+decode+project",
                                    "config": f"sdk-gpu/batch/{n}/encode+decode+project",
                                    "input": f"{n} photos"}, core))
            stage_rows("batch", n, bt, n)

            def batch_mesh_call(imgs=imgs):  # the same call, every face's image-frame mesh read too
                out = rec.batch(imgs)
                for r in out:
                    for f in r:
                        _ = f.vertices_image
                return out

            samples, out = timed(batch_mesh_call)
            rows.append(_stats_row({**base, "mode": "batch", "batch": n, "stage": "total+vertices", "faces": faces,
                                    "config": f"sdk-gpu/batch/{n}/total+vertices",
                                    "input": f"{n} photos {photo.shape[1]}x{photo.shape[0]}"}, samples))
        del torch
    return rows


def _onnx_for(cfg: dict, work: Path) -> tuple[list[tuple[str, str]], str]:
    """(precision, path) of encoder ONNX files: the bundle's, else one exported here."""
    if cfg.get("bundle"):
        from smirk_edge.bundle import Bundle

        b = Bundle(cfg["bundle"])
        return [(a.precision, str(b.main_path(a))) for a in b.find(role="encoder", kind="onnx")], "bundle"
    import torch

    from smirk_edge.runtimes.torch_encoder import OUTPUT_NAMES

    from smirk_edge.runtimes.torch_encoder import random_encoder

    enc = random_encoder(cfg["variant"])
    path = work / "encoder.onnx"
    try:
        torch.onnx.export(enc, (torch.rand(2, 3, 224, 224),), str(path), input_names=["image"],
                          output_names=list(OUTPUT_NAMES),
                          dynamic_shapes={"image": {0: torch.export.Dim("batch", min=1, max=1024)}},
                          opset_version=18, external_data=False, dynamo=True, verbose=False)
        how = "exported here (dynamo, opset 18)"
    except Exception:  # noqa: BLE001 - no onnxscript: the legacy exporter (slower graph, see TOOLCHAIN_NOTES)
        torch.onnx.export(enc, (torch.rand(2, 3, 224, 224),), str(path), input_names=["image"],
                          output_names=list(OUTPUT_NAMES), dynamic_axes={"image": {0: "batch"}},
                          opset_version=17, dynamo=False)
        how = "exported here (legacy TorchScript exporter: ~30% slower graph than dynamo's)"
    return [("fp32", str(path))], how


def group_host_cpu(cfg: dict) -> list[dict]:
    """ONNX Runtime (and OpenVINO when installed) on the GPU machine's CPU cores."""
    from smirk_edge._lazy import available

    from .inputs import synthetic_720p
    from .worker import real_crops

    rows = _Rows(cfg.get("out_path"))
    base = {**cfg["base"], "suite": "gpu-host-cpu", "device": "cpu"}
    inp = synthetic_720p(cfg.get("face_photo"))
    crops = real_crops(inp.frames, inp.boxes, 8)
    work = Path(cfg["work"])
    engines = [e for e in ("onnxruntime", "openvino") if available(e)]
    for missing in {"onnxruntime", "openvino"} - set(engines):
        rows.append({**base, "engine": missing, "stage": "error", "config": f"gpu-host-cpu/{missing}",
                     "note": f"{missing} is not installed on this machine"})
    if not engines:
        return rows
    files, how = _onnx_for(cfg, work)
    from smirk_edge.runtimes import registry

    for engine in engines:
        for prec, path in files:
            for th in cfg["threads"]:
                if time.time() > cfg["deadline"]:
                    rows.append({**base, "engine": engine, "precision": prec, "threads": th, "stage": "error",
                                 "config": f"gpu-host-cpu/{engine}/{prec}/t{th}", "note": "skipped: time budget spent"})
                    continue
                try:
                    r = registry.make_runner(engine, path, precision=prec, threads=th).activate()
                    for b in cfg["batches"]:
                        feed = {"image": np.ascontiguousarray(crops[np.arange(b) % len(crops)])}
                        for _ in range(cfg["warmup"]):
                            r.infer(feed)
                        s = []
                        for _ in range(cfg["runs"] if b <= 16 else max(10, cfg["runs"] // 5)):
                            t = time.perf_counter()
                            r.infer(feed)
                            s.append((time.perf_counter() - t) * 1e3)
                        rows.append(_stats_row({**base, "engine": engine, "precision": prec, "threads": th, "batch": b,
                                                "stage": "encode", "artifact": os.path.basename(path),
                                                "config": f"gpu-host-cpu/{engine}/{prec}/t{th}"}, s,
                                               warmup=cfg["warmup"], note=how))
                    r.deactivate()
                except Exception as exc:  # noqa: BLE001
                    rows.append({**base, "engine": engine, "precision": prec, "threads": th, "stage": "error",
                                 "config": f"gpu-host-cpu/{engine}/{prec}/t{th}",
                                 "note": f"{type(exc).__name__}: {str(exc)[:300]}"})
    try:  # the detector on the 720p frame (it runs on the CPU next to a GPU encoder)
        from smirk_edge.detector import FaceDetector, model_path

        for th in cfg["threads"]:
            runners = {v: registry.make_runner("onnxruntime", model_path(v), threads=th).activate()
                       for v in ("short", "full")}
            det = FaceDetector(runners)
            for _ in range(cfg["warmup"]):
                det.detect(inp.frames[0])
            s = []
            for _ in range(cfg["runs"]):
                t = time.perf_counter()
                det.detect(inp.frames[0])
                s.append((time.perf_counter() - t) * 1e3)
            rows.append(_stats_row({**base, "engine": "onnxruntime", "precision": "fp32", "threads": th, "batch": 1,
                                    "stage": "detect", "artifact": "BlazeFace short+full",
                                    "config": f"gpu-host-cpu/detect/t{th}"}, s, warmup=cfg["warmup"],
                                   note="720p frame, letterbox + both models + NMS"))
    except Exception as exc:  # noqa: BLE001
        rows.append({**base, "engine": "detector", "stage": "error", "config": "gpu-host-cpu/detect",
                     "note": f"{type(exc).__name__}: {str(exc)[:300]}"})
    return rows


GROUPS = {"encoder": group_encoder, "sdk": group_sdk, "host-cpu": group_host_cpu}


class _Rows(list):
    """A row list that rewrites the worker's output file on every append, so a group killed by the time
    budget still hands back the points it finished."""

    def __init__(self, path: str | None):
        super().__init__()
        self.path = path

    def _flush(self) -> None:
        if self.path:
            Path(self.path).write_text(json.dumps(list(self), default=str), encoding="utf-8")

    def append(self, row) -> None:  # noqa: D102
        super().append(row)
        self._flush()

    def __iadd__(self, rows):
        super().__iadd__(rows)
        self._flush()
        return self


# ------------------------------------------------------------------------------------- parent
def plan(quick: bool, device: str) -> list[dict]:
    """The groups to run (each in a fresh process), in order of importance."""
    cuda = device.startswith("cuda")
    batches = QUICK_BATCHES if quick else FULL_BATCHES
    layouts = ("channels_last",) if quick else ("channels_last", "nchw")

    def pts(dtypes, bs=batches, lays=layouts):
        return [{"dtype": d, "layout": lay, "batch": b} for d in dtypes for lay in lays for b in bs]

    groups = [
        {"group": "encoder", "mode": "eager+autograd", "points": pts(["fp32"], (1, 16) if quick else batches, ("nchw",))},
        {"group": "encoder", "mode": "eager", "points": pts(["fp32", "fp16", "bf16"], (1, 64) if quick else batches)},
    ]
    if cuda:
        groups += [
            {"group": "encoder", "mode": "cudagraph", "points": pts(["fp32", "fp16", "bf16"])},
            {"group": "encoder", "mode": "cudagraph-3streams", "points": pts(["fp16"], (1, 4, 16) if quick else batches)},
            {"group": "sdk", "dtype": "fp16", "batches": [64, 256]},
            {"group": "sdk", "dtype": "fp32", "batches": [64]},
            {"group": "host-cpu", "batches": [1, 16], "threads": None},
            {"group": "encoder", "mode": "compile",
             "compile_mode": "default" if quick else "max-autotune-no-cudagraphs",
             "points": pts(["fp16"], (1, 64) if quick else (1, 16, 64, 256), ("channels_last",))},
        ]
    else:
        groups += [{"group": "sdk", "dtype": "fp32", "batches": [4]},
                   {"group": "host-cpu", "batches": [1], "threads": None}]
    return groups


def _bootstrap_cmd() -> list[str]:
    return [sys.executable, str(Path(__file__).resolve().with_name("gpu_entry.py"))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/gpu_entry.sh", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT", "gpu-results"), help="output folder (default $OUT)")
    p.add_argument("--quick", action="store_true", help="the short sweep (< 8 minutes on an H100)")
    p.add_argument("--bundle", default=None, help="bundle whose ONNX encoders the CPU engines run")
    p.add_argument("--device", default=None, help="cuda (default when available) or cpu (code-path check)")
    p.add_argument("--variant", default="full", choices=["full", "tiny"], help="encoder size (tiny: tests)")
    p.add_argument("--runs", type=int, default=None, help="timed runs per point (default 100, quick 50)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up runs (default 20, quick 10)")
    p.add_argument("--max-minutes", type=float, default=None, help="time budget (default 7 quick, 25 full)")
    p.add_argument("--only", default=None, help="comma-separated groups/modes to run (e.g. eager,cudagraph,e2e)")
    p.add_argument("--worker", nargs=2, metavar=("CFG", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        cfg = json.loads(Path(args.worker[0]).read_text(encoding="utf-8"))
        cfg["out_path"] = args.worker[1]
        rows = GROUPS[cfg["group"]](cfg)
        Path(args.worker[1]).write_text(json.dumps(rows, default=str), encoding="utf-8")
        return 0

    import datetime as _dt
    import uuid

    t_start = time.time()
    try:
        import torch

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        gpu_name = torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu"
        torch_version = torch.__version__
    except ImportError:
        print("GPU mode needs torch", file=sys.stderr)
        return 2
    runs = args.runs or (50 if args.quick else 100)
    warmup = args.warmup if args.warmup is not None else (10 if args.quick else 20)
    budget = 60 * (args.max_minutes or (7.0 if args.quick else 25.0))
    out = Path(args.out)
    work = out / "gpu_work"
    work.mkdir(parents=True, exist_ok=True)
    run_id = "gpu-" + _dt.datetime.now().strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    machine, versions = _describe()
    versions = {**versions, "torch(runtime)": torch_version,
                "cuda": getattr(torch.version, "cuda", None), "cudnn": str(torch.backends.cudnn.version())}
    base = {"run_id": run_id, "device": gpu_name, "input": "720p", "threads": None, "machine": machine,
            "versions": versions, "model": {"encoder_variant": args.variant, "weights": "random (seed 0)"}}
    groups = plan(args.quick, device)
    if args.only:
        keep = {s.strip() for s in args.only.split(",")}
        groups = [g for g in groups if g["group"] in keep or g.get("mode") in keep]
    rows: list[dict] = []
    import multiprocessing

    for i, g in enumerate(groups):
        label = g.get("mode", g["group"])
        left = budget - (time.time() - t_start)
        cfg = {**g, "device": device, "variant": args.variant, "runs": runs, "warmup": warmup, "base": base,
               "deadline": t_start + budget - 20, "work": str(work), "bundle": args.bundle}
        if cfg.get("threads", 0) is None:
            n = multiprocessing.cpu_count()
            cfg["threads"] = sorted({1, n})
        if left < 30:
            rows.append({**base, "suite": "gpu-" + g["group"], "engine": label, "stage": "error",
                         "config": f"gpu/{label}", "note": "skipped: time budget spent"})
            continue
        print(f"[gpu] {i + 1}/{len(groups)} {label} ({left:.0f} s left)", file=sys.stderr, flush=True)
        cpath, opath = work / f"g{i}.json", work / f"g{i}.rows.json"
        cpath.write_text(json.dumps(cfg, default=str), encoding="utf-8")
        try:
            proc = subprocess.run(_bootstrap_cmd() + ["--worker", str(cpath), str(opath)], capture_output=True,
                                  text=True, timeout=max(30.0, left - 10))
            err = proc.stderr[-1500:] if proc.returncode else ""
        except subprocess.TimeoutExpired:
            err = "timed out (time budget); the points finished before are kept"
        if opath.is_file():
            try:
                got = json.loads(opath.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                got = []
            rows += got
        if not err and opath.is_file():
            print(f"[gpu]   {sum(1 for r in got if r.get('stage') != 'error')} rows", file=sys.stderr, flush=True)
        else:
            line = (err.strip().splitlines() or ["no rows"])[-1][:300]
            print(f"[gpu]   failed: {line}", file=sys.stderr, flush=True)
            rows.append({**base, "suite": "gpu-" + g["group"], "engine": label, "stage": "error",
                         "config": f"gpu/{label}", "note": line, "error": err})
    inv = {"run_id": run_id, "argv": ["--gpu"] + (argv if argv is not None else sys.argv[1:]),
           "seconds": round(time.time() - t_start, 1),
           "written": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    for r in rows:
        r.setdefault("invocation", inv)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_results.json").write_text(json.dumps(rows, indent=1, default=str), encoding="utf-8")
    try:
        from . import report

        (out / "gpu_results.md").write_text(report.markdown(rows, None, "smirk-edge GPU benchmarks"), encoding="utf-8")
        report.write_csv(rows, out / "gpu_results.csv")
        line = report.summary_line(rows)
    except Exception as exc:  # noqa: BLE001 - the JSON is what matters
        line = f"(report failed: {exc})"
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    ok = [r for r in rows if r.get("stage") != "error"]
    best = min((r for r in ok if r.get("suite") == "gpu-encoder" and r.get("batch") == 1), key=lambda r: r["p50_ms"],
               default=None)
    print(f"[gpu] {len(ok)} rows, {len(rows) - len(ok)} skipped/failed in {time.time() - t_start:.0f} s -> "
          f"{out / 'gpu_results.json'}" + (f"; best encoder batch 1: {best['p50_ms']:.2f} ms ({best['engine']} "
                                           f"{best['precision']} {best['layout']})" if best else ""))
    print(line)
    return 0
