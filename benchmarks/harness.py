"""``smirk-edge bench``: the latency / throughput harness (parent side).

For every configuration (engine x precision x threads x mode x refine, the encoder alone at each
batch size, and the reference path) the harness starts a **fresh Python process**
(:mod:`.worker`), hands it the configuration as JSON and the shared inputs as ``inputs.npz``, and
collects the rows it writes. Then it writes, in ``-o DIR``:

* ``results.json``: the list of rows (:mod:`.stats` describes a row);
* ``results.csv``: the same rows, nested fields flattened;
* ``results.md``: the Markdown report (:mod:`.report`), with the machine, the stage breakdown,
  throughput, accuracy beside latency, memory, and our speedup over the reference path;
* ``plots/*.png`` (when matplotlib is installed): stacked per-stage latency bars per engine and an
  accuracy-vs-latency scatter;

and prints a one-line summary.

Without ``--bundle`` the harness builds a benchmark bundle first (:mod:`.bundle_setup`: the full
encoder with random weights through ``smirk_edge.export``: ONNX fp32 + int8, OpenVINO IR fp32 +
int8, gated on real face crops of ../shared/data) and reuses it on later runs (``--bundle-cache``).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DEFAULT_BATCHES = (1, 8, 64)
DEFAULT_THREADS = (1, 2)


@dataclass
class BenchOptions:
    """Options of one ``smirk-edge bench`` invocation (see :func:`add_arguments` in :mod:`.cli`)."""

    out: str | os.PathLike = "bench-results"
    bundle: str | os.PathLike | None = None
    bundle_cache: str | os.PathLike | None = None
    backends: list[str] | None = None        # None: every installed engine that opens an artifact
    precisions: list[str] | None = None      # None: every precision the bundle has
    batches: list[int] = field(default_factory=lambda: list(DEFAULT_BATCHES))
    threads: list[int] = field(default_factory=lambda: list(DEFAULT_THREADS))
    inputs: list[str] | None = None          # None / ['720p'] or file paths
    face_photo: str | None = None
    native: bool = False                      # image files as they are, not pasted on 720p
    modes: list[str] = field(default_factory=lambda: ["image", "video"])
    refine: list[bool | str] = field(default_factory=lambda: ["auto"])  # True, False, "auto" (the default)
    reads: list[str] = field(default_factory=lambda: ["all"])  # .stats.READS: what each call reads per face
    runs: int = 100
    warmup: int = 10
    decode_image: bool = False
    reference: bool = True
    encoder_suite: bool = True
    hotpath: bool = True                     # the hot-path probes (.hotpath), one thread
    mediapipe_python: str | None = None      # default: $SMIRK_EDGE_MEDIAPIPE_PYTHON
    budget_s: float = 20.0                   # per throughput point: fewer runs (>= 10) when slower
    timeout_s: float = 900.0                 # per configuration process
    plots: bool = True
    keep_work: bool = False
    quiet: bool = False


def _log(opts: BenchOptions, msg: str) -> None:
    if not opts.quiet:
        print(msg, file=sys.stderr, flush=True)


def _save_inputs(path: Path, inp, jpeg_dir: Path | None) -> dict:
    """``inputs.npz``: frames (N, H, W, 3) uint8, boxes (N, 4) (NaN when unknown), meta JSON."""
    import cv2

    meta = inp.describe()
    if jpeg_dir is not None:
        jpeg_dir.mkdir(parents=True, exist_ok=True)
        files = []
        for i, f in enumerate(inp.frames):
            p = jpeg_dir / f"frame_{i:03d}.jpg"
            cv2.imwrite(str(p), f, [cv2.IMWRITE_JPEG_QUALITY, 90])
            files.append(str(p))
        meta["jpeg_files"] = files
    boxes = np.array([b if b is not None else np.full(4, np.nan) for b in inp.boxes], np.float64)
    same = len({f.shape for f in inp.frames}) == 1
    arrays = {"frames": np.stack(inp.frames)} if same else {f"frame_{i:03d}": f for i, f in enumerate(inp.frames)}
    np.savez(path, boxes=boxes, meta=np.array(json.dumps(meta)), **arrays)
    return meta


def _engines_for(bundle, backends: list[str] | None, precisions: list[str] | None) -> list[tuple[str, str]]:
    """(engine, precision) pairs that exist: engine installed and an encoder artifact it opens."""
    from smirk_edge.runtimes import registry

    arts = bundle.encoders()
    installed = registry.available_engines()
    engines = backends or [e for e in ("onnxruntime", "openvino") if e in installed]
    precs = precisions or sorted({a.precision for a in arts if a.precision},
                                 key=lambda p: registry.PRECISION_ORDER.index(p) if p in registry.PRECISION_ORDER else 9)
    pairs = []
    for e in engines:
        for p in precs:
            try:
                registry.select_engine(arts, preferred=e, precision=p)
            except Exception:  # noqa: BLE001 - not installed, or no artifact of that precision
                continue
            pairs.append((e, p))
    return pairs


def _thread_env(threads: int | None) -> dict[str, str]:
    env = dict(os.environ)
    if threads:
        for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[k] = str(threads)
    env.setdefault("PYTHONWARNINGS", "ignore")
    return env


def run_config(cfg: dict, work: Path, timeout_s: float) -> list[dict]:
    """Run one configuration in a fresh interpreter; return its rows (or one ``error`` row)."""
    cpath = work / f"{cfg['id'].replace('/', '_')}.cfg.json"
    opath = work / f"{cfg['id'].replace('/', '_')}.rows.json"
    cpath.write_text(json.dumps(cfg), encoding="utf-8")
    if opath.exists():
        opath.unlink()
    cmd = [sys.executable, "-m", "smirk_edge.benchmarks.worker", str(cpath), str(opath)]
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=_thread_env(cfg.get("threads")), capture_output=True, text=True,
                              timeout=timeout_s)
        err = proc.stderr[-2000:] if proc.returncode != 0 else ""
    except subprocess.TimeoutExpired:
        err = f"timed out after {timeout_s:.0f} s"
    if not err and opath.is_file():
        rows = json.loads(opath.read_text(encoding="utf-8"))
        for r in rows:
            r["process_s"] = round(time.perf_counter() - t, 2)
        return rows
    return [{"run_id": cfg["run_id"], "suite": cfg["kind"], "config": cfg["id"], "engine": cfg.get("engine"),
             "precision": cfg.get("precision"), "threads": cfg.get("threads"), "mode": cfg.get("mode"),
             "stage": "error", "note": (err or "no rows written").strip().splitlines()[-1][:300],
             "error": err}]


def run_mediapipe(python: str, inp, runs: int, warmup: int, work: Path, timeout_s: float) -> dict | None:
    """The MediaPipe side process (:mod:`.mediapipe_side`) on the input frames; None when it fails."""
    import cv2

    paths = []
    for i, f in enumerate(inp.frames):
        p = work / f"mp_frame_{i:03d}.png"
        cv2.imwrite(str(p), f)
        paths.append(str(p))
    req = work / "mp_request.json"
    out = work / "mp_out.json"
    req.write_text(json.dumps({"frames": paths, "runs": runs, "warmup": warmup}), encoding="utf-8")
    script = Path(__file__).with_name("mediapipe_side.py")
    try:
        proc = subprocess.run([python, str(script), str(req), str(out)], capture_output=True, text=True,
                              timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": str(exc)}
    if proc.returncode != 0 or not out.is_file():
        return {"error": proc.stderr[-1000:]}
    return json.loads(out.read_text(encoding="utf-8"))


def _mediapipe_rows(mp: dict, run_id: str, input_name: str, runs: int, warmup: int) -> list[dict]:
    from smirk_edge.system import describe

    from .stats import summarize

    info = describe(probe=False)
    info.pop("packages")
    rows = []
    for mode in ("image", "video"):
        rows.append({"run_id": run_id, "suite": "crop_source", "config": f"mediapipe/{mode}", "engine": "mediapipe",
                     "precision": "fp32", "artifact": "face mesh (478, refine_landmarks)", "threads": None,
                     "batch": 1, "mode": mode, "input": input_name, "stage": "face_mesh", "runs": runs,
                     "warmup": warmup, "device": "cpu", "crop_source": "mediapipe",
                     **summarize(mp[mode]["samples_ms"]),
                     "note": ("static_image_mode=True: detection + mesh every frame" if mode == "image" else
                              "static_image_mode=False: MediaPipe's own tracking"),
                     "versions": {"mediapipe": mp.get("mediapipe"), "numpy": mp.get("numpy"),
                                  "opencv": mp.get("opencv"), "python": mp.get("python")},
                     "machine": info})
    return rows


def run_bench(opts: BenchOptions) -> tuple[list[dict], dict[str, Path]]:
    """Run every configuration and write the outputs. Returns (rows, {output name: path})."""
    from smirk_edge.bundle import Bundle

    from . import report
    from .inputs import make_input
    from .runs import model_info

    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir()
    run_id = _dt.datetime.now().strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    t_start = time.perf_counter()

    if opts.bundle is None:
        from .bundle_setup import build_bench_bundle

        cache = Path(opts.bundle_cache) if opts.bundle_cache else out / "bundle"
        _log(opts, f"[bench] benchmark bundle: {cache}")
        bundle = build_bench_bundle(cache, log=lambda m: _log(opts, m))
    else:
        bundle = Bundle(opts.bundle)
    bundle.verify_all()
    model = model_info(bundle)

    inputs = {}
    for mode in opts.modes:
        inp = make_input(opts.inputs, mode=mode, face_photo=opts.face_photo, paste=not opts.native)
        npz = work / f"inputs_{mode}.npz"
        m = _save_inputs(npz, inp, (work / f"jpeg_{mode}") if opts.decode_image else None)
        inputs[mode] = (inp, npz, m)
    first_mode = opts.modes[0]
    input_name = inputs[first_mode][0].name.replace("-video", "")

    pairs = _engines_for(bundle, opts.backends, opts.precisions)
    if not pairs:
        from smirk_edge.errors import SmirkEdgeError

        raise SmirkEdgeError(f"no engine here opens an encoder artifact of {bundle.root} for backends "
                             f"{opts.backends or 'auto'} / precisions {opts.precisions or 'any'}")
    common = {"run_id": run_id, "bundle": str(bundle.root), "runs": opts.runs, "warmup": opts.warmup,
              "model": model, "input_name": input_name}
    configs = []
    for engine, precision in pairs:
        for th in opts.threads:
            for mode in opts.modes:
                for refine in opts.refine:
                    for read in opts.reads:
                        cid = f"pipeline/{engine}/{precision}/t{th}/{mode}" + {True: "/refine", False: "/norefine"}.get(
                            refine, "") + ("" if read == "all" else f"/read-{read}")
                        configs.append({**common, "kind": "pipeline", "id": cid, "engine": engine,
                                        "precision": precision, "threads": th, "mode": mode, "refine": refine,
                                        "read": read, "inputs": str(inputs[mode][1]),
                                        "decode_image": opts.decode_image and mode == "image"})
            if opts.encoder_suite:
                configs.append({**common, "kind": "encoder", "id": f"encoder/{engine}/{precision}/t{th}",
                                "engine": engine, "precision": precision, "threads": th, "batches": opts.batches,
                                "inputs": str(inputs[first_mode][1]), "budget_s": opts.budget_s, "mode": "image"})

    if opts.hotpath:
        configs.append({**common, "kind": "hotpath", "id": "hotpath/t1", "threads": 1, "mode": "image",
                        "runs": max(opts.runs, 50)})
    rows: list[dict] = []
    mp = None
    reference_skipped = None if opts.reference else "--no-reference"
    if opts.reference:
        from smirk_edge._lazy import available

        mp_python = opts.mediapipe_python or os.environ.get("SMIRK_EDGE_MEDIAPIPE_PYTHON")
        if mp_python:
            _log(opts, f"[bench] MediaPipe face mesh in its own process ({mp_python})")
            ref_inp = inputs.get("image", inputs[first_mode])[0]
            mp = run_mediapipe(mp_python, ref_inp, opts.runs, opts.warmup, work, opts.timeout_s)
            if mp is None or "error" in mp or any(b is None for b in mp.get("landmarks_box", [None])):
                why = (mp or {}).get("error", "no face found by MediaPipe")
                _log(opts, f"[bench] MediaPipe unusable ({str(why).strip()[-200:]}); BlazeFace stands in")
                rows.append({"run_id": run_id, "suite": "crop_source", "config": "mediapipe", "engine": "mediapipe",
                             "stage": "error", "note": str(why).strip()[-300:]})
                mp = None
            else:
                rows += _mediapipe_rows(mp, run_id, input_name, opts.runs, opts.warmup)
        if available("torch") and available("timm"):
            ref_mp = None if mp is None else {"landmarks_box": mp["landmarks_box"],
                                              "samples_ms": mp["image"]["samples_ms"]}
            for th in opts.threads:
                configs.append({**common, "kind": "reference", "id": f"reference/t{th}", "threads": th,
                                "mode": "image", "inputs": str(inputs.get("image", inputs[first_mode])[1]),
                                "mediapipe": ref_mp, "engine": "torch", "precision": "fp32"})
        else:
            reference_skipped = "torch/timm not installed: pip install 'smirk-edge[torch]'"
            _log(opts, f"[bench] the reference path is skipped ({reference_skipped})")

    for i, cfg in enumerate(configs, 1):
        _log(opts, f"[bench] {i}/{len(configs)} {cfg['id']}")
        got = run_config(cfg, work, opts.timeout_s)
        if got and got[0].get("stage") == "error":
            _log(opts, f"[bench]   failed: {got[0]['note']}")
        rows += got

    invocation = {"run_id": run_id, "argv": sys.argv[1:], "seconds": round(time.perf_counter() - t_start, 1),
                  "inputs": {m: v[2] for m, v in inputs.items()}, "model": model,
                  "reference_skipped": reference_skipped,
                  "written": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    for r in rows:
        r.setdefault("invocation", invocation)
    paths = report.write_outputs(rows, out, plots=opts.plots)
    if not opts.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    print(report.summary_line(rows))
    return rows, paths
