"""Where the SDK's time goes on a CUDA GPU: torch.profiler over the public API.

``python -m smirk_edge.benchmarks.gpu_profile --out DIR`` opens
``Reconstructor(backend="torch", device="cuda", precision="fp16")`` (the embedded default model unless
``--bundle``), makes a 720p frame of the shipped astronaut portrait, and for each mode

* ``image``: ``rec(frame)`` (detection, crop, encode, decode, projection),
* ``video``: one tracked frame of ``rec.tracker()`` (what ``rec.stream`` runs per frame),
* ``batch``: ``rec.batch`` of ``--batch`` copies of the frame,

runs ``--warmup`` calls, then profiles ``--calls`` calls (CPU and CUDA activity) and writes

* ``DIR/profile_<mode>_cuda.txt`` / ``DIR/profile_<mode>_cpu.txt``: the top ``--top`` operators by self
  CUDA time and by self CPU time (``key_averages().table``),
* ``DIR/profile_counts.json``: per call, the CUDA kernels that ran, the kernel and graph launches the host
  issued, and the ``cudaStreamSynchronize`` / ``cudaDeviceSynchronize`` / ``cudaMemcpy*`` calls; plus the
  wall-clock ms per call under the profiler.

On a machine without CUDA (or without torch) it prints one line saying so and exits 0. The defaults finish
in well under 90 s on an H200.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

MODES = ("image", "video", "batch")

LAUNCHES = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx")
GRAPH_LAUNCHES = ("cudaGraphLaunch", "cuGraphLaunch")
SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")
COPIES = ("cudaMemcpy", "cudaMemcpyAsync", "cudaMemcpy2DAsync", "cuMemcpyAsync", "cuMemcpyHtoDAsync_v2",
          "cuMemcpyDtoHAsync_v2")


def frame_720p() -> np.ndarray:
    """``(720, 1280, 3)`` uint8 BGR: the shipped astronaut portrait scaled into a black 720p frame."""
    import cv2

    from .stress_sheet import example_photo

    photo = cv2.imread(str(example_photo()), cv2.IMREAD_COLOR)
    h, w = photo.shape[:2]
    s = min(1280 / w, 720 / h)
    small = cv2.resize(photo, (int(round(w * s)), int(round(h * s))), interpolation=cv2.INTER_AREA)
    frame = np.zeros((720, 1280, 3), np.uint8)
    y0, x0 = (720 - small.shape[0]) // 2, (1280 - small.shape[1]) // 2
    frame[y0:y0 + small.shape[0], x0:x0 + small.shape[1]] = small
    return frame


def _calls(rec: Any, frame: np.ndarray, batch: int) -> dict[str, Callable[[], Any]]:
    tracker = rec.tracker()
    state = {"i": 0}

    def video() -> Any:
        out = tracker.step(frame, state["i"], None)
        state["i"] += 1
        return out

    frames = [frame] * batch
    return {"image": lambda: rec(frame), "video": video, "batch": lambda: rec.batch(frames)}


def _count(averages: Any, names: Sequence[str]) -> int:
    return int(sum(e.count for e in averages if e.key in names))


def counts(prof: Any, calls: int) -> dict[str, float]:
    """Per-call counts of a finished ``torch.profiler.profile``: CUDA kernels run, launches, syncs, copies."""
    from torch.autograd import DeviceType

    kernels = 0
    for e in prof.events():
        if e.device_type == DeviceType.CUDA and not e.name.startswith(("Memcpy", "Memset")):
            kernels += 1
    avg = prof.key_averages()
    out = {"cuda_kernels": kernels, "kernel_launches": _count(avg, LAUNCHES),
           "graph_launches": _count(avg, GRAPH_LAUNCHES)}
    for name in SYNCS + COPIES:
        n = _count(avg, (name,))
        if n or name in ("cudaStreamSynchronize", "cudaMemcpyAsync", "cudaMemcpy"):
            out[name] = n
    return {k: v / calls for k, v in out.items()}


def profile_mode(name: str, fn: Callable[[], Any], out: Path, warmup: int, calls: int, top: int) -> dict[str, Any]:
    """Warm ``fn`` up, profile ``calls`` calls, write the two tables; returns the mode's counts."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t) * 1e3 / calls
    avg = prof.key_averages()
    head = f"# {name}: {calls} calls after {warmup} warm-up calls; {wall:.2f} ms per call under the profiler\n"
    (out / f"profile_{name}_cuda.txt").write_text(
        head + avg.table(sort_by="self_cuda_time_total", row_limit=top) + "\n", encoding="utf-8")
    (out / f"profile_{name}_cpu.txt").write_text(
        head + avg.table(sort_by="self_cpu_time_total", row_limit=top) + "\n", encoding="utf-8")
    return {"ms_per_call_profiled": wall, **counts(prof, calls)}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="folder for profile_*.txt and profile_counts.json")
    p.add_argument("--bundle", default=None, help="model bundle (default: the embedded default model)")
    p.add_argument("--precision", default="fp16", choices=["fp16", "bf16", "fp32"])
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}")
    p.add_argument("--warmup", type=int, default=30, help="calls before profiling, per mode (default 30)")
    p.add_argument("--calls", type=int, default=20, help="profiled calls per mode (default 20)")
    p.add_argument("--batch", type=int, default=64, help="frames per rec.batch call (default 64)")
    p.add_argument("--top", type=int, default=25, help="operators per table (default 25)")


def run(args: argparse.Namespace) -> int:
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = sorted(set(modes) - set(MODES))
    if bad:
        print(f"gpu_profile: unknown mode(s) {bad}; choose from {list(MODES)}", file=sys.stderr)
        return 2
    try:
        import torch
    except ImportError:
        print("gpu_profile: torch is not installed, nothing profiled (pip install \"smirk-edge[torch]\")")
        return 0
    if not torch.cuda.is_available():
        print("gpu_profile: no CUDA device on this machine (torch.cuda.is_available() is False), nothing profiled")
        return 0
    from smirk_edge import Reconstructor

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    frame = frame_720p()
    t0 = time.perf_counter()
    report: dict[str, Any] = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                              "precision": args.precision, "warmup": args.warmup, "calls": args.calls,
                              "batch": args.batch, "modes": {}}
    with Reconstructor(args.bundle, backend="torch", device="cuda", precision=args.precision) as rec:
        report["engine"] = rec.engine
        fns = _calls(rec, frame, args.batch)
        for m in modes:
            c = report["modes"][m] = profile_mode(m, fns[m], out, args.warmup, args.calls, args.top)
            print(f"{m}: {c['ms_per_call_profiled']:.2f} ms/call (profiled), {c['cuda_kernels']:.0f} CUDA kernels, "
                  f"{c['kernel_launches']:.0f} kernel + {c['graph_launches']:.0f} graph launches, "
                  f"{c.get('cudaStreamSynchronize', 0):.0f} stream syncs, "
                  f"{c.get('cudaMemcpyAsync', 0) + c.get('cudaMemcpy', 0):.0f} cudaMemcpy* per call")
    report["seconds"] = round(time.perf_counter() - t0, 1)
    (out / "profile_counts.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    print(f"wrote {out}/profile_*.txt and profile_counts.json in {report['seconds']} s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m smirk_edge.benchmarks.gpu_profile",
                                description="torch.profiler tables of the SDK on a CUDA GPU (image, tracked video "
                                            "frame, batch), through the public API.")
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
