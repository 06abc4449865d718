"""GPU mode of the harness: torch eager vs CUDA graphs vs torch.compile, fp32 / fp16 / bf16, NCHW /
channels_last, batch 1..256, a GPU end-to-end path, and the CPU engines of the GPU machine.

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
* ``gpu-e2e``: one 720p BGR frame per call: ``upload`` (pinned host -> device), ``crop`` (BGR -> RGB,
  [0, 1], ``affine_grid`` + ``grid_sample`` bilinear with zero borders from the SDK's own crop matrix,
  :func:`theta_from_crop_matrix`), ``encode`` (fp16 channels-last CUDA graph), ``decode`` (the
  FLAME-format layer in fp32 on the GPU), ``project`` (camera + inverse crop to image pixels),
  ``download`` (landmarks and vertices to pinned host memory). Plus ``fused-graph``: the crop,
  encoder, decode and projection captured in one CUDA graph (total only). The crop comes from a
  known face box (as while tracking); the detector's CPU cost is in ``gpu-host-cpu``.
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
def theta_from_crop_matrix(matrix: np.ndarray, width: int, height: int, size: int = 224) -> np.ndarray:
    """``affine_grid`` theta (2x3, ``align_corners=True``) that samples the crop of ``matrix``.

    ``matrix``: the SDK's 2x3 image -> crop pixel affine (:class:`smirk_edge.crop.CropTransform`).
    Output normalised coords ``o`` map to crop pixels ``(o + 1) (S - 1) / 2``, those to image pixels by
    the inverse matrix, and those to the input's normalised coords ``2 u / (W - 1) - 1``. Same bilinear
    sampling with zero borders as ``cv2.warpAffine`` (pixel centres at integer coordinates).
    """
    m = np.vstack([np.asarray(matrix, np.float64), [0.0, 0.0, 1.0]])
    inv = np.linalg.inv(m)
    d_out = np.array([[(size - 1) / 2.0, 0, (size - 1) / 2.0], [0, (size - 1) / 2.0, (size - 1) / 2.0], [0, 0, 1]])
    n_in = np.array([[2.0 / (width - 1), 0, -1.0], [0, 2.0 / (height - 1), -1.0], [0, 0, 1]])
    return (n_in @ inv @ d_out)[:2]


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

    from .bundle_setup import random_encoder

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

    from smirk_edge.training.encoder import OUTPUT_NAMES

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


def group_e2e(cfg: dict) -> list[dict]:
    """The GPU end-to-end path, staged and fully captured (see the module docstring)."""
    import torch
    import torch.nn.functional as F

    from smirk_edge.crop import crop_from_box
    from smirk_edge.face_model import standin_path
    from smirk_edge.training.face_model import FaceModelLayer, project_ndc

    from .inputs import synthetic_720p

    device = torch.device(cfg["device"])
    cuda = device.type == "cuda"
    dt_name = cfg.get("dtype", "fp16" if cuda else "fp32")
    dtype = getattr(torch, DTYPES[dt_name])
    cl = True
    inp = synthetic_720p(cfg.get("face_photo"))
    frame, box = inp.frames[0], inp.boxes[0]
    H, W = frame.shape[:2]
    enc = _encoder(cfg["variant"], device, dtype, cl)
    layer = FaceModelLayer.from_file(cfg.get("face_model") or standin_path()).to(device).eval()
    rows = _Rows(cfg.get("out_path"))
    base = {**cfg["base"], "suite": "gpu-e2e", "precision": dt_name, "layout": "channels_last"}
    for faces in cfg.get("faces", [1]):
        # one crop per face; the faces share the frame (same box, shifted a little)
        mats = [crop_from_box(box + np.array([d, 0, d, 0]) * 2.0).matrix for d in range(faces)]
        theta_np = np.stack([theta_from_crop_matrix(m, W, H) for m in mats]).astype(np.float32)
        inv_np = np.stack([np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2] for m in mats]).astype(np.float32)
        host = torch.from_numpy(frame)
        host_theta = torch.from_numpy(theta_np)
        if cuda:
            host, host_theta = host.pin_memory(), host_theta.pin_memory()
        dev_frame = torch.empty((H, W, 3), dtype=torch.uint8, device=device)
        dev_theta = torch.empty((faces, 2, 3), dtype=torch.float32, device=device)
        inv = torch.from_numpy(inv_np).to(device)
        out_host = torch.empty((faces, 173 + layer.n_vertices, 2), dtype=torch.float32,
                               pin_memory=cuda)

        def crop(dev_frame=dev_frame, dev_theta=dev_theta, faces=faces):
            img = dev_frame.permute(2, 0, 1)[[2, 1, 0]].unsqueeze(0).float().div_(255.0)  # BGR -> RGB, [0, 1]
            grid = F.affine_grid(dev_theta, [faces, 3, 224, 224], align_corners=True)
            x = F.grid_sample(img.expand(faces, -1, -1, -1), grid, mode="bilinear", padding_mode="zeros",
                              align_corners=True)
            return x.to(dtype).contiguous(memory_format=torch.channels_last)

        def decode_project(o, inv=inv):
            o = {k: v.float() for k, v in o.items()}
            geo = layer(o["shape"], o["expression"], o["pose"], o["jaw"], o["eyelid"])
            pts = torch.cat([geo["landmarks68"], geo["landmarks105"], geo["vertices"]], 1)
            return pts, o

        def project(pts, o, inv=inv):
            px = (project_ndc(pts, o["cam"])[..., :2] + 1.0) * 112.0
            return torch.einsum("bij,bnj->bni", inv[:, :, :2], px) + inv[:, None, :, 2]

        with torch.inference_mode():
            dev_frame.copy_(host)
            dev_theta.copy_(host_theta)
            x0 = crop()
            if cuda:
                replay, static_in, static_out = _capture(enc, x0)
            else:
                static_in = x0

                def replay():
                    static_out.update(enc(static_in))
                static_out = dict(enc(x0))
        timer_events = cuda
        stages = ("upload", "crop", "encode", "decode", "project", "download")
        per_run = []
        n_total = cfg["warmup"] + cfg["runs"]
        if time.time() > cfg["deadline"]:
            rows.append({**base, "engine": "staged", "batch": faces, "stage": "error",
                         "config": f"gpu-e2e/staged/{faces}", "note": "skipped: time budget spent"})
            continue
        with torch.inference_mode():
            for i in range(n_total):
                t0 = time.perf_counter()
                ev = [torch.cuda.Event(enable_timing=True) for _ in range(len(stages) + 1)] if timer_events else None
                marks = []

                def mark():
                    if timer_events:
                        ev[len(marks)].record()
                        marks.append(None)
                    else:
                        marks.append(time.perf_counter())
                mark()
                dev_frame.copy_(host, non_blocking=True)
                dev_theta.copy_(host_theta, non_blocking=True)
                mark()
                static_in.copy_(crop())
                mark()
                replay()
                mark()
                pts, o = decode_project(static_out)
                mark()
                img_pts = project(pts, o)
                mark()
                out_host.copy_(img_pts, non_blocking=True)
                mark()
                if cuda:
                    torch.cuda.synchronize()
                total = (time.perf_counter() - t0) * 1e3
                if i >= cfg["warmup"]:
                    if timer_events:
                        t = {s: ev[j].elapsed_time(ev[j + 1]) for j, s in enumerate(stages)}
                    else:
                        t = {s: (marks[j + 1] - marks[j]) * 1e3 for j, s in enumerate(stages)}
                    t["total"] = total
                    per_run.append(t)
        from .stats import stage_table

        b = {**base, "engine": f"staged ({dt_name} CUDA graph encoder)" if cuda else "staged (eager)",
             "batch": faces, "config": f"gpu-e2e/staged/{faces}"}
        for s, st in stage_table(per_run, stages + ("total",)).items():
            rows.append({**b, **st, "stage": s, "runs": len(per_run), "warmup": cfg["warmup"],
                         "items_per_s": faces * 1e3 / st["p50_ms"] if s == "total" else None,
                         "note": "total = wall clock incl. host overhead and the final synchronise" if s == "total" else ""})
        if cuda:  # the whole device-side path in one graph
            try:
                def whole(_):
                    x = crop()
                    pts, o = decode_project(enc(x))
                    return project(pts, o)

                g_replay, _, g_out = _capture(whole, x0)

                def fused():
                    dev_frame.copy_(host, non_blocking=True)
                    dev_theta.copy_(host_theta, non_blocking=True)
                    g_replay()
                    out_host.copy_(g_out, non_blocking=True)

                samples = []
                for i in range(n_total):
                    t0 = time.perf_counter()
                    fused()
                    torch.cuda.synchronize()
                    if i >= cfg["warmup"]:
                        samples.append((time.perf_counter() - t0) * 1e3)
                rows.append(_stats_row({**base, "engine": f"fused-graph ({dt_name})", "batch": faces, "stage": "total",
                                        "config": f"gpu-e2e/fused/{faces}"}, samples, warmup=cfg["warmup"],
                                       note="upload + one CUDA graph (crop, encoder, decode, projection) + download, "
                                            "wall clock"))
            except Exception as exc:  # noqa: BLE001
                rows.append({**base, "engine": "fused-graph", "batch": faces, "stage": "error",
                             "config": f"gpu-e2e/fused/{faces}", "note": f"{type(exc).__name__}: {str(exc)[:300]}"})
    return rows


def _onnx_for(cfg: dict, work: Path) -> tuple[list[tuple[str, str]], str]:
    """(precision, path) of encoder ONNX files: the bundle's, else one exported here."""
    if cfg.get("bundle"):
        from smirk_edge.bundle import Bundle

        b = Bundle(cfg["bundle"])
        return [(a.precision, str(b.main_path(a))) for a in b.find(role="encoder", kind="onnx")], "bundle"
    import torch

    from smirk_edge.training.encoder import OUTPUT_NAMES

    from .bundle_setup import random_encoder

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


GROUPS = {"encoder": group_encoder, "e2e": group_e2e, "host-cpu": group_host_cpu}


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
            {"group": "e2e", "faces": [1, 4] if quick else [1, 4, 16], "dtype": "fp16"},
            {"group": "host-cpu", "batches": [1, 16], "threads": None},
            {"group": "encoder", "mode": "compile",
             "compile_mode": "default" if quick else "max-autotune-no-cudagraphs",
             "points": pts(["fp16"], (1, 64) if quick else (1, 16, 64, 256), ("channels_last",))},
        ]
    else:
        groups += [{"group": "e2e", "faces": [1], "dtype": "fp32"},
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
