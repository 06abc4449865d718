"""Report writer: benchmark rows -> JSON, CSV, Markdown, PNG plots, and a one-line summary.

``python -m smirk_edge.benchmarks.report CPU.json [GPU.json ...] -o docs/benchmarks.md`` merges
result files (each a JSON list of rows, from ``smirk-edge bench`` or the GPU entry point) into one
Markdown report; plots go beside it (``--plots-dir``, default ``<md folder>/images``) when
matplotlib is installed.

Ratios (our speedup over the reference path) are only formed between rows of the **same run**
(same ``run_id``: same machine, same invocation), never across files.

Imports numpy only at module level; matplotlib inside :func:`write_plots`.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterable, NamedTuple, Sequence

from .stats import NESTED_FIELDS, ROW_FIELDS, STAGES, STAT_KEYS

TARGETS = {
    "image_e2e_ms": 4.0,
    "video_frame_ms": 2.5,
    "int8_encoder_ms": 1.5,
    "reference_ms": 37.0,
}
"""Targets on the 2-core development machine at 2 threads (not asserted; reported)."""



class GpuTarget(NamedTuple):
    """A target of the SDK on a CUDA GPU (issue "The SDK on NVIDIA GPUs"): ``stage``'s ``key`` of an
    ``sdk-gpu`` configuration, at most (``le``) or at least (``ge``) ``value`` ``unit``."""

    stage: str
    key: str
    better: str
    value: float
    unit: str


SDK_GPU_TARGETS = {
    "image": GpuTarget("total", "p50_ms", "le", 2.0, "ms"),
    "video": GpuTarget("total", "p50_ms", "le", 1.0, "ms"),
    "batch": GpuTarget("encode+decode+project", "items_per_s", "ge", 40_000.0, "faces/s"),
}
"""Targets of ``Reconstructor(backend="torch", device="cuda")`` per ``sdk-gpu`` mode (p50 ms of the public call
with detection for ``image``, of a tracked frame for ``video``; faces/s of encoder + decode + projection with the
results on the host for ``batch``). Reported, not asserted."""

PLOT_FILES = {"stages": "bench_latency_stages.png", "accuracy": "bench_accuracy_latency.png",
              "throughput": "bench_throughput.png"}


# ------------------------------------------------------------------------------------------ io
def load_rows(paths: Iterable[str | os.PathLike]) -> list[dict]:
    """Rows of one or more result files (a JSON list of rows, or ``{"rows": [...]}``)."""
    rows: list[dict] = []
    for p in paths:
        data = json.loads(Path(p).read_text(encoding="utf-8"))
        rows += data["rows"] if isinstance(data, dict) else data
    return rows


def _flatten(prefix: str, value, out: dict) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}", v, out)
    elif isinstance(value, (list, tuple)):
        out[prefix] = json.dumps(value)
    else:
        out[prefix] = value


def csv_columns(rows: Sequence[dict]) -> list[str]:
    """CSV header: :data:`ROW_FIELDS`, other scalar fields, then flattened nested fields."""
    cols = list(ROW_FIELDS)
    extra, nested = [], []
    for r in rows:
        flat: dict = {}
        for k, v in r.items():
            if k in ("invocation", "error"):
                continue
            if k in NESTED_FIELDS or isinstance(v, dict):
                _flatten(k, v, flat)
                nested += [c for c in flat if c not in nested]
                flat.clear()
            elif k not in cols and k not in extra:
                extra.append(k)
    return cols + extra + nested


def write_csv(rows: Sequence[dict], path: str | os.PathLike) -> list[str]:
    """Write ``rows`` as CSV (one line per row); returns the columns."""
    cols = csv_columns(rows)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            flat: dict = {}
            for k, v in r.items():
                if k in NESTED_FIELDS or isinstance(v, dict):
                    _flatten(k, v, flat)
                elif isinstance(v, (list, tuple)):
                    flat[k] = json.dumps(v)
                else:
                    flat[k] = v
            w.writerow({c: flat.get(c, "") for c in cols})
    return cols


# ----------------------------------------------------------------------------------- selection
def _ok(r: dict) -> bool:
    return r.get("stage") != "error"


def _sel(rows, **want) -> list[dict]:
    return [r for r in rows if _ok(r) and all(r.get(k) == v for k, v in want.items())]


def _fmt(v, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and (math.isnan(v) or math.isinf(v))):
        return "-"
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 100:
            return f"{v:.0f}" if digits <= 2 else f"{v:.1f}"
        return f"{v:.{digits}f}"
    return str(v)


def _table(header: Sequence[str], lines: Sequence[Sequence]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(_fmt(c) for c in line) + " |" for line in lines]
    return "\n".join(out)


def _label(r: dict) -> str:
    parts = [str(r.get("engine")), str(r.get("precision"))]
    if r.get("threads"):
        parts.append(f"{r['threads']}t")
    if r.get("suite") == "pipeline":
        parts.append(str(r.get("mode")))
        if r.get("refine") is False:
            parts.append("no refine")
        elif r.get("refine") is True:
            parts.append("refine always")
        if r.get("read") not in (None, "all"):
            parts.append(f"reads {r['read']}")
    return " ".join(parts)


def _configs(rows, suite: str) -> "OrderedDict[tuple, dict[str, dict]]":
    """(run_id, config) -> {stage: row} for one suite, in row order."""
    out: OrderedDict = OrderedDict()
    for r in rows:
        if r.get("suite") == suite and _ok(r):
            out.setdefault((r.get("run_id"), r.get("config")), {})[r.get("stage")] = r
    return out


def _stat(cfg: dict, stage: str, key: str = "p50_ms"):
    r = cfg.get(stage)
    return None if r is None else r.get(key)


def _best(configs: dict, pred, stage: str = "total") -> tuple[dict | None, float | None]:
    best, val = None, None
    for cfg in configs.values():
        any_row = next(iter(cfg.values()))
        if not pred(any_row):
            continue
        v = _stat(cfg, stage)
        if v is not None and (val is None or v < val):
            best, val = cfg, v
    return best, val


def _is_gpu(r: dict) -> bool:
    """A row of the GPU entry point (``gpu-*`` suites and the SDK's own ``sdk-gpu``)."""
    suite = str(r.get("suite", ""))
    return suite.startswith("gpu") or suite == "sdk-gpu"


_CPU_SUITES = ("pipeline", "encoder", "reference")


def _cpu_runs(rows: Sequence[dict]) -> list[str]:
    """The run ids of the CPU suites, in row order (one per ``smirk-edge bench`` invocation)."""
    return list(dict.fromkeys(r.get("run_id") for r in rows if r.get("suite") in _CPU_SUITES))


def _run_cpu(rows: Sequence[dict], run) -> dict:
    """``machine.cpu`` of a CPU run ({} when its rows record none)."""
    return next((r["machine"].get("cpu") or {} for r in rows if r.get("run_id") == run
                 and r.get("suite") in _CPU_SUITES and isinstance(r.get("machine"), dict)), {})


def _tagger(rows: Sequence[dict]):
    """``label -> label`` naming the row's CPU class and run where rows of several CPU runs (machines)
    are merged, so that no two machines' configurations read alike; the identity for one run."""
    runs = _cpu_runs(rows)
    if len(runs) < 2:
        return lambda r, label: label
    tags = {run: f"[{_run_cpu(rows, run).get('class', '?')}, {_run_cpu(rows, run).get('model', '?')}] "
            for run in runs}
    return lambda r, label: tags.get(r.get("run_id"), "") + label


def _run_time(r: dict) -> str:
    """When a row's run was written (``invocation.written``), else its run id (which starts with the start time)."""
    inv = r.get("invocation")
    written = inv.get("written") if isinstance(inv, dict) else None
    return str(written or r.get("run_id") or "")


def newest_gpu_rows(rows: Sequence[dict]) -> tuple[list[dict], list[str]]:
    """The GPU rows with, for every microbenchmark configuration (``gpu-*`` suites) measured in several runs, only
    the newest run's rows; the SDK's own ``sdk-gpu`` rows of every run are kept (they track the targets run by run).

    A configuration is (suite, config, precision, batch, stage); the newest run is the one written last
    (:func:`_run_time`). Returns the kept rows (in row order) and one note per run that lost rows to a newer
    one."""
    g = [r for r in rows if _is_gpu(r)]
    when: dict = {}
    for r in g:
        when[r.get("run_id")] = max(when.get(r.get("run_id"), ""), _run_time(r))
    key = lambda r: (r.get("suite"), r.get("config"), r.get("precision"), r.get("batch"), r.get("stage"),
                     r.get("run_id") if r.get("suite") == "sdk-gpu" else None)
    newest: dict = {}
    for r in g:
        k, run = key(r), r.get("run_id")
        if k not in newest or when[run] > when[newest[k]]:
            newest[k] = run
    kept, dropped = [], OrderedDict()
    for r in g:
        by = newest[key(r)]
        if r.get("run_id") == by:
            kept.append(r)
        else:
            dropped.setdefault((r.get("run_id"), by), []).append(r)
    notes = [f"{len(v)} GPU row(s) of run {old} ({_gpu_name(v[0])}) not shown: the same configurations were "
             f"measured again in the newer run {new} ({_gpu_name(next(r for r in kept if r.get('run_id') == new))})"
             for (old, new), v in dropped.items()]
    return kept, notes


def _gpu_name(r: dict) -> str:
    """The GPU of a row: its ``device`` when that names one, else the machine's first GPU."""
    dev = r.get("device")
    if dev and dev != "cpu":
        return str(dev)
    gpus = (r.get("machine") or {}).get("gpus") if isinstance(r.get("machine"), dict) else None
    return str(gpus[0].get("name", "?")) if gpus else "?"


def _encoder_points(rows) -> list[dict]:
    return [r for r in rows if r.get("suite") == "encoder" and _ok(r) and r.get("stage") in ("encode", "encode+decode")]


# --------------------------------------------------------------------------------------- summary
def headline(rows: Sequence[dict]) -> dict:
    """The numbers of the summary: best 720p image / video end to end, int8 encoder, reference (p50 ms, 2 threads
    where measured, else the most threads measured), with their configurations."""
    pipe = _configs(rows, "pipeline")
    full = OrderedDict((k, c) for k, c in pipe.items() if next(iter(c.values())).get("read") in (None, "all"))
    pipe = full or pipe  # the headline reads every field of every face where such configurations ran
    ref = _configs(rows, "reference")
    th_all = sorted({r.get("threads") or 0 for r in rows if r.get("suite") in ("pipeline", "encoder", "reference")})
    th = 2 if 2 in th_all else (th_all[-1] if th_all else None)
    out: dict = {"threads": th}
    cfg, v = _best(pipe, lambda r: r.get("mode") == "image" and r.get("threads") == th)
    out["image"] = (v, _label(next(iter(cfg.values()))) if cfg else None, cfg)
    cfg, v = _best(pipe, lambda r: r.get("mode") == "video" and r.get("threads") == th)
    out["video"] = (v, _label(next(iter(cfg.values()))) if cfg else None, cfg)
    enc = [r for r in _encoder_points(rows) if r["stage"] == "encode" and r.get("batch") == 1 and r.get("threads") == th
           and r.get("precision") == "int8"]
    e = min(enc, key=lambda r: r["p50_ms"]) if enc else None
    out["int8_encoder"] = (e["p50_ms"] if e else None, _label(e) if e else None, e)
    cfg, v = _best(ref, lambda r: r.get("threads") == th)
    out["reference"] = (v, "torch eager fp32 (autograd on)" if cfg else None, cfg)
    return out


def summary_line(rows: Sequence[dict]) -> str:
    """One line: best image / video end to end, int8 encoder, reference and the speedup (p50); one
    part per CPU run where rows of several runs are merged (a speedup is never formed across runs)."""
    runs = _cpu_runs(rows)
    if len(runs) < 2:
        return _summary_one(rows)
    other = [r for r in rows if r.get("suite") not in _CPU_SUITES]
    parts = [_summary_one([r for r in rows if r.get("run_id") == run and r.get("suite") in _CPU_SUITES]
                          + (other if i == len(runs) - 1 else [])) for i, run in enumerate(runs)]
    return " || ".join(parts)


def _summary_one(rows: Sequence[dict]) -> str:
    h = headline(rows)
    parts = []
    if h["image"][0] is not None:
        parts.append(f"720p image e2e {h['image'][0]:.2f} ms ({h['image'][1]})")
    if h["video"][0] is not None:
        parts.append(f"video frame {h['video'][0]:.2f} ms ({h['video'][1]})")
    if h["int8_encoder"][0] is not None:
        parts.append(f"int8 encoder {h['int8_encoder'][0]:.2f} ms")
    if h["reference"][0] is not None:
        parts.append(f"reference {h['reference'][0]:.1f} ms")
        if h["image"][0]:
            parts.append(f"speedup x{h['reference'][0] / h['image'][0]:.1f}")
    gpu = [r for r in rows if _is_gpu(r) and _ok(r)]
    if gpu:
        parts.append(f"{len(gpu)} GPU rows")
    errors = [r for r in rows if not _ok(r)]
    tail = f"; {len(errors)} failed configuration(s)" if errors else ""
    where = f"p50, {h['threads']} threads" if h["threads"] else "p50"
    cpu = next((r["machine"].get("cpu") for r in rows if isinstance(r.get("machine"), dict)
                and r["machine"].get("cpu") and r.get("suite") in ("pipeline", "encoder", "reference")), None)
    if cpu:
        where += f", CPU {cpu.get('class', '?')}: {_isa(cpu)}"
    if h["reference"][0] is None and (why := _no_reference(rows)):
        parts.append(f"reference not measured ({why})")
    return (f"smirk-edge bench ({where}): " + " | ".join(parts or ["no timings"])
            + f" [{len(rows)} rows{tail}]")


def _isa(cpu: dict) -> str:
    """``AVX2 yes, AVX-512 no, VNNI no, AMX no (avx2 fma)`` from a row's ``machine.cpu``."""
    from smirk_edge.cpu import isa_summary

    flags = cpu.get("flags") or []
    return f"{isa_summary(flags)} ({' '.join(flags) or 'no flags recorded'})"


def _no_reference(rows) -> str | None:
    """Why a CPU run has no reference rows (the invocation records it), or None."""
    for r in rows:
        inv = r.get("invocation")
        if isinstance(inv, dict) and inv.get("reference_skipped"):
            return str(inv["reference_skipped"])
    return None


# ------------------------------------------------------------------------------------- markdown
def _machines(rows) -> "OrderedDict[str, tuple[dict, dict]]":
    out: OrderedDict = OrderedDict()
    # versions from the SDK's own processes first (the MediaPipe side process has its own environment)
    for r in sorted(rows, key=lambda r: r.get("suite") == "crop_source"):
        m = r.get("machine")
        if not isinstance(m, dict):
            continue
        cpu = m.get("cpu", {})
        gpus = ", ".join(g.get("name", "?") for g in m.get("gpus", [])) or "none"
        key = f"{cpu.get('model', '?')} / {gpus} / {m.get('platform', '?')}"
        if key not in out:
            out[key] = (m, r.get("versions") or {})
    return out


def _machine_section(rows) -> str:
    lines = ["## Machine" + ("s" if len(_machines(rows)) > 1 else "")]
    for key, (m, versions) in _machines(rows).items():
        cpu = m.get("cpu", {})
        gpus = "; ".join(f"{g.get('name')} ({g.get('memory', '')}, driver {g.get('driver', '-')}, "
                         f"cc {g.get('compute_capability', '-')})" for g in m.get("gpus", [])) or "none"
        runs = sorted({r.get("run_id") for r in rows if isinstance(r.get("machine"), dict)
                       and r["machine"].get("cpu", {}).get("model") == cpu.get("model")
                       and r["machine"].get("platform") == m.get("platform")})
        mp = next((r.get("versions") for r in rows if r.get("suite") == "crop_source" and r.get("versions")), None)
        if mp:
            versions = {**versions, "mediapipe (side process)": mp.get("mediapipe")}
        vers = ", ".join(f"{k} {v}" for k, v in versions.items() if v)
        lines += [f"- **CPU**: {cpu.get('model')} ({cpu.get('usable_cores')}/{cpu.get('logical_cores')} cores usable, "
                  f"{cpu.get('arch')}; CPU class {cpu.get('class', 'not recorded')}; {_isa(cpu)})",
                  f"  **GPU**: {gpus}",
                  f"  **Python** {m.get('python')} on {m.get('platform')}; smirk-edge {m.get('smirk_edge')}",
                  f"  **Packages**: {vers or '-'}",
                  f"  **Runs**: {', '.join(str(x) for x in runs)}"]
    return "\n".join(lines)


def _stage_section(rows) -> str:
    pipe = _configs(rows, "pipeline")
    ref = _configs(rows, "reference")
    if not pipe and not ref:
        return ""
    stages = [s for s in STAGES if s != "total" and any(s in c for c in list(pipe.values()) + list(ref.values()))]
    head = ["configuration", *stages, "total mean", "p50", "p90", "p99", "runs", "peak RSS MB"]
    lines = []
    tag = _tagger(rows)
    for cfg in list(pipe.values()) + list(ref.values()):
        any_row = cfg.get("total") or next(iter(cfg.values()))
        label = tag(any_row, _label(any_row) if any_row.get("suite") == "pipeline"
                    else f"**reference** ({any_row.get('threads')}t)")
        lines.append([label, *[_stat(cfg, s, "mean_ms") for s in stages], _stat(cfg, "total", "mean_ms"),
                      _stat(cfg, "total"), _stat(cfg, "total", "p90_ms"), _stat(cfg, "total", "p99_ms"),
                      any_row.get("runs"), any_row.get("peak_rss_mb")])
    text = ["## Where the time goes: end to end, per stage (ms)",
            "Stage columns are **means** over the runs (they add up to the total mean; a stage that does not run "
            "every frame, such as the detector while tracking, counts 0 ms in the frames without it). `encode` with "
            "refine on holds two encoder passes (the detector box, then the box of the predicted landmarks); "
            "`decode` holds the landmark decode of the refine pass too. A face's geometry is computed when first read: "
            "`read` is the harness reading every face's fields after the call (all of them unless the configuration "
            "says `reads landmarks` or `reads params`), and `total` is the SDK's own end-to-end timer plus `read`.",
            "", _table(head, lines)]
    notes = sorted({f"{_label(c.get('total') or next(iter(c.values())))}: crop source = {r.get('crop_source')}"
                    for c in pipe.values() for r in [c.get("total") or next(iter(c.values()))]
                    if r.get("crop_source") and r.get("crop_source") != "detector"})
    if notes:
        text += ["", "Crop source differs from the detector in: " + "; ".join(notes)]
    ref_notes = sorted({r.get("crop_source") for c in ref.values() for r in c.values() if r.get("crop_source")})
    if ref_notes:
        text += ["", "Reference crop source: " + "; ".join(ref_notes) + "."]
    return "\n".join(text)


def _speedup_section(rows) -> str:
    pipe = _configs(rows, "pipeline")
    ref = _configs(rows, "reference")
    if pipe and not ref and (why := _no_reference(rows)):
        return f"## Speedup over the reference path\nNot measured in this run: {why}."
    if not ref or not pipe:
        return ""
    ref_by = {(k[0], (next(iter(c.values()))).get("threads")): c for k, c in ref.items()}
    enc = {(r.get("run_id"), r.get("engine"), r.get("precision"), r.get("threads")): r
           for r in _encoder_points(rows) if r["stage"] == "encode" and r.get("batch") == 1}
    lines = []
    tag = _tagger(rows)
    for (run, _), cfg in pipe.items():
        r = cfg.get("total")
        if r is None:
            continue
        rc = ref_by.get((run, r.get("threads")))
        if rc is None:
            continue
        e = enc.get((run, r.get("engine"), r.get("precision"), r.get("threads")))
        ref_total, ref_enc = _stat(rc, "total"), _stat(rc, "encode")
        lines.append([tag(r, _label(r)), r["p50_ms"], ref_total, ref_total / r["p50_ms"] if r["p50_ms"] else None,
                      e["p50_ms"] if e else None, ref_enc, (ref_enc / e["p50_ms"]) if e and ref_enc else None])
    if not lines:
        return ""
    return "\n".join([
        "## Speedup over the reference path (same run, same machine)",
        "The reference is what a user of the official SMIRK code runs today (written by us from SMIRK_FACTS.md; "
        "see `benchmarks/reference.py`): the crop source (MediaPipe face mesh when configured, else our BlazeFace), "
        "a float64 bilinear warp of the whole frame, the torch eager fp32 encoder **with autograd on**, and the "
        "torch FLAME decode. Ratios are p50 / p50 between rows of the same invocation; the video rows are compared "
        "with the reference's per-image path (the official code has no tracking).",
        "",
        _table(["ours", "ours e2e p50", "reference e2e p50", "speedup", "our encoder p50 (batch 1)",
                "reference encoder p50", "encoder speedup"], lines)])


def _targets_section(rows) -> str:
    runs = _cpu_runs(rows)
    if len(runs) < 2:
        return _targets_one(rows)
    parts = []
    for run in runs:
        cpu = _run_cpu(rows, run)
        text = _targets_one([r for r in rows if r.get("run_id") == run and r.get("suite") in _CPU_SUITES])
        if text:
            parts.append(text.replace(" threads, p50 ms, best configuration)",
                                      f" threads, p50 ms, best configuration; {cpu.get('model', '?')}, "
                                      f"CPU class {cpu.get('class', '?')}, run {run})", 1))
    return "\n\n".join(parts)


def _targets_one(rows) -> str:
    h = headline(rows)
    if all(h[k][0] is None for k in ("image", "video", "int8_encoder", "reference")):
        return ""
    th = h["threads"]
    rows_out = []
    for key, what, tkey, better in (("image", "720p image, end to end", "image_e2e_ms", "le"),
                                    ("video", "video frame (tracking), end to end", "video_frame_ms", "le"),
                                    ("int8_encoder", "int8 encoder, batch 1", "int8_encoder_ms", "le"),
                                    ("reference", "reference path (for scale)", "reference_ms", "info")):
        v, label, _ = h[key]
        target = TARGETS[tkey]
        met = "-" if v is None else ("~" if better == "info" else ("yes" if v <= target else "no"))
        rows_out.append([what, f"<= {target:g}" if better == "le" else f"~{target:g}", v, label or "-", met])
    text = [f"## Targets ({th} threads, p50 ms, best configuration)",
            "Targets of the 2-core development machine, not asserted. Where one is missed, the stage table "
            "below shows where the time goes."]
    loads = [r["loadavg_start"][0] for r in rows if isinstance(r.get("loadavg_start"), list) and r["loadavg_start"]]
    cores = [((r.get("machine") or {}).get("cpu") or {}).get("usable_cores") for r in rows]
    cores = [c for c in cores if c]
    if loads and cores and max(loads) > min(cores):
        text.append(f"**The machine was busy with other work**: 1-minute load average {min(loads):.1f}-{max(loads):.1f} "
                    f"on {min(cores)} usable cores when the configurations started. Multi-threaded rows then compete "
                    f"with other processes for every core (a 2-thread engine waits for its slowest thread), so "
                    f"they read far slower than on an idle machine; the 1-thread rows and the ratios within one run "
                    f"are the trustworthy figures of such a run.")
    return "\n".join(text + ["", _table(["what", "target", "measured", "configuration", "met"], rows_out)])


def _throughput_section(rows) -> str:
    pts = _encoder_points(rows)
    if not pts:
        return ""
    by: OrderedDict = OrderedDict()
    for r in pts:
        by.setdefault((r.get("run_id"), r.get("config"), r.get("batch")), {})[r["stage"]] = r
    lines = []
    for (_, _, b), d in by.items():
        e, ed = d.get("encode"), d.get("encode+decode")
        r = e or ed
        lines.append([_label(r), b, e and e["p50_ms"], e and e["p99_ms"], e and e.get("items_per_s"),
                      ed and ed["p50_ms"], ed and ed.get("items_per_s"), r.get("runs")])
    return "\n".join([
        "## Encoder throughput (batches of real face crops)",
        "`encode`: the engine alone on a batch of crops; `encode+decode`: plus the numpy face-model decode "
        "(vertices and landmarks) of the batch. faces/s = batch x 1000 / p50. Large batches may use fewer than the "
        "requested runs (never fewer than 10) to bound the time per point; `runs` says how many.",
        "", _table(["configuration", "batch", "encode p50 ms", "p99", "faces/s", "encode+decode p50", "faces/s",
                    "runs"], lines)])


def _accuracy_section(rows) -> str:
    pts = [r for r in _encoder_points(rows) if r["stage"] == "encode" and r.get("batch") == 1]
    if not pts:
        return ""
    th = max((r.get("threads") or 0) for r in pts)
    lines = []
    for r in pts:
        if (r.get("threads") or 0) != th:
            continue
        a = r.get("accuracy") or {}
        size = r.get("artifact_bytes")
        lines.append([r.get("artifact"), r.get("engine"), r.get("precision"), size / 1e6 if size else None,
                      a.get("lmk_mean_px"), a.get("lmk_p99_px"), a.get("vertex_mean_mm"), a.get("expression_mae"),
                      ("yes" if a.get("passed") else "no") if a else "-", r["p50_ms"], r.get("items_per_s")])
    return "\n".join([
        f"## Accuracy beside latency ({th} threads, batch 1)",
        "Accuracy: the export gate's numbers against fp32 torch on held-back real face crops, read from the bundle "
        "manifest (`attrs['accuracy']`; `-` when the artifact carries none). Landmark errors in pixels of the 224 "
        "crop, vertex error in mm.", "",
        _table(["artifact", "engine", "precision", "size MB", "lmk mean px", "lmk p99 px", "vertex mm",
                "expr MAE", "gate passed", "encode p50 ms", "faces/s"], lines)])


def _memory_section(rows) -> str:
    lines = []
    for suite in ("pipeline", "encoder", "reference"):
        for cfg in _configs(rows, suite).values():
            r = next(iter(cfg.values()))
            label = _label(r) if suite != "reference" else f"reference ({r.get('threads')}t)"
            load = r.get("loadavg_start")
            lines.append([suite, label, r.get("peak_rss_mb"), _stat(cfg, "open"), _stat(cfg, "first_call"),
                          _stat(cfg, "total") if suite != "encoder" else None,
                          load[0] if isinstance(load, (list, tuple)) and load else None])
    stream = [r for r in rows if r.get("suite") == "memory-stream"]
    if not lines and not stream:
        return ""
    out = ["## Memory and start-up"]
    if lines:
        out += ["Peak RSS of the configuration's own process (`VmHWM`), the time to open it (bundle check "
                "and engine start, or runner activation) and its first, cold call. `load` is the machine's "
                "1-minute load average when the process started (above the number of cores means other work "
                "competed for the CPU).", "",
                _table(["suite", "configuration", "peak RSS MB", "open ms", "first call ms", "steady p50 ms",
                        "load"], lines)]
    if stream:
        srows = []
        for r in stream:
            cpu = (r.get("machine") or {}).get("cpu") or {}
            variant = (r.get("model") or {}).get("variant")
            bundle = f"{r.get('bundle')} ({variant})" if variant else r.get("bundle")
            srows.append([r.get("engine"), bundle, Path(str(r.get("source"))).name, r.get("canvas") or "-",
                          r.get("threads"), r.get("frames"), r.get("rss_mb_before_reconstructor"),
                          r.get("rss_mb_after_warmup"), r.get("rss_mb_end"), r.get("rss_growth_percent"),
                          r.get("peak_rss_mb"), r.get("fps"), cpu.get("class"),
                          (r.get("loadavg_start") or [None])[0]])
        out += ["", "A long stream (`python -m smirk_edge.benchmarks.soak --video CLIP --canvas 1280x720`): "
                "`Reconstructor().stream()` over a clip decoded one frame at a time and centred on a 720p "
                "canvas, as a camera delivers it, so that no preloaded input counts. RSS in MiB: before the "
                "Reconstructor is made (Python, numpy, OpenCV), after the warm-up frames, at the end, and the "
                "process's peak (`VmHWM`). frames/s depends on the machine's load when the run started "
                "(`load`, the 1-minute average; 2 cores here): compare memory, not speed, between rows.", "",
                _table(["engine", "bundle", "source", "canvas", "threads", "frames", "RSS before", "after warm-up",
                        "end", "growth %", "peak RSS MB", "frames/s", "CPU class", "load"], srows)]
    return "\n".join(out)


def _full_stats_section(rows) -> str:
    lines = []
    for r in rows:
        if not _ok(r) or r.get("suite") not in ("pipeline", "reference", "crop_source") or r.get("stage") in (
                "open", "first_call"):
            continue
        label = _label(r) if r.get("suite") == "pipeline" else (
            f"reference ({r.get('threads')}t)" if r.get("suite") == "reference" else f"mediapipe {r.get('mode')}")
        lines.append([label, r.get("stage"), *[r.get(k) for k in STAT_KEYS], r.get("runs")])
    if not lines:
        return ""
    return "\n".join(["<details><summary>Full statistics of every stage (ms)</summary>", "",
                      _table(["configuration", "stage", *[k.replace("_ms", "") for k in STAT_KEYS], "runs"], lines),
                      "", "</details>"])


def _target_mark(mode: str, cfg: dict) -> tuple[str, float | None, str]:
    """(target text, measured value, met) of an ``sdk-gpu`` configuration ({stage: row}) of ``mode``."""
    t = SDK_GPU_TARGETS.get(mode)
    if t is None:
        return "-", None, "-"
    v = _stat(cfg, t.stage, t.key)
    what = "" if t.stage == "total" else f"{t.stage} "
    text = f"{what}{'<=' if t.better == 'le' else '>='} {_fmt(t.value)} {t.unit}"
    if v is None:
        return text, None, "-"
    met = v <= t.value if t.better == "le" else v >= t.value
    return text, v, "yes" if met else "no"


def _bundle_name(bundle: Any) -> str:
    """A short name of a benchmarked bundle: ``default``, or its folder name."""
    if not bundle or bundle == "default":
        return "default"
    return Path(str(bundle)).name or str(bundle)


def _sdk_gpu_section(g: Sequence[dict]) -> str:
    """The SDK end to end on the GPU: one line per (run, mode, precision, batch) of the ``sdk-gpu`` rows."""
    cfgs: OrderedDict = OrderedDict()
    for r in g:
        if r.get("suite") == "sdk-gpu":
            model = (r.get("model") or {}).get("variant") or _bundle_name((r.get("model") or {}).get("bundle"))
            cfgs.setdefault((r.get("run_id"), model, r.get("mode"), r.get("precision"), r.get("batch")),
                            {})[r.get("stage")] = r
    if not cfgs:
        return ""
    seen = [s for c in cfgs.values() for s in c if s != "total"]
    stages = [s for s in STAGES if s in seen] + list(OrderedDict.fromkeys(s for s in seen if s not in STAGES))
    lines = []
    for (run, model, mode, precision, batch), cfg in cfgs.items():
        any_row = cfg.get("total") or next(iter(cfg.values()))
        target, measured, met = _target_mark(mode, cfg)
        lines.append([_gpu_name(any_row), run, model, mode, any_row.get("input", "-"), precision, batch, _stat(cfg, "total"),
                      _stat(cfg, "total", "items_per_s"), *[_stat(cfg, s) for s in stages], target, measured, met])
    return "\n".join([
        "### SDK end to end (`Reconstructor(backend=\"torch\", device=\"cuda\")`)",
        "Wall clock of each public call with the results on the host (`image`: `rec(frame)` on a 720p frame, "
        "detection included; `video`: one tracked frame of `stream`'s tracker; `batch`: `rec.batch` of face photos, "
        "detection included). Stage columns are the **p50** of the call's own timings: a stage that runs in fewer "
        "than half of the calls (the detector while tracking) reads 0, and the stage p50s do not add up to the "
        "total. `items/s` is items x 1000 / total p50 (frames, or faces for `batch`). Targets are those of the "
        "issue \"The SDK on NVIDIA GPUs\" (`batch`: faces/s of encoder + decode + projection); `measured` is the "
        "value the target reads.", "",
        _table(["GPU", "run", "model", "mode", "input", "precision", "batch", "total p50 ms", "items/s", *stages, "target",
                "measured", "met"], lines)])


def _gpu_section(rows) -> str:
    g, superseded = newest_gpu_rows([r for r in rows if _ok(r)])
    if not g:
        return ""
    text = ["## GPU", "Measured with CUDA events around each call (torch), wall clock for CPU engines on that "
            "machine; p50 over the runs after warm-up. `eager+autograd` is how the upstream demo runs the encoder."]
    if superseded:
        text.append("Where several runs measured the same configuration, only the newest run's rows are shown "
                    "(see the notes).")
    sdk = _sdk_gpu_section(g)
    if sdk:
        text += ["", sdk]
    enc = [r for r in g if r.get("suite") == "gpu-encoder"]
    if enc:
        lines = [[_gpu_name(r), r.get("engine"), r.get("precision"), r.get("layout", "-"), r.get("batch"), r["p50_ms"],
                  r["p99_ms"], r.get("items_per_s"), r.get("runs"), r.get("note", "")] for r in enc]
        text += ["", "### Encoder", "", _table(["GPU", "mode", "dtype", "layout", "batch", "p50 ms", "p99 ms",
                                                "faces/s", "runs", "note"], lines)]
    e2e = _configs(g, "gpu-e2e")
    if e2e:
        stages = ["upload", "crop", "encode", "decode", "project", "download"]
        lines = []
        for cfg in e2e.values():
            r = cfg.get("total") or next(iter(cfg.values()))
            lines.append([f"{r.get('engine')} {r.get('precision')}", r.get("batch"),
                          *[_stat(cfg, s, "mean_ms") for s in stages], _stat(cfg, "total", "mean_ms"),
                          _stat(cfg, "total"), _stat(cfg, "total", "p99_ms")])
        text += ["", "### End to end on the GPU (720p frame uploaded, crop by affine_grid + grid_sample with the "
                 "SDK's crop matrix, encoder, FLAME decode, projection, results downloaded; crop from the known "
                 "box, as while tracking)", "",
                 _table(["encoder", "faces", *stages, "total mean", "p50", "p99"], lines)]
    cpu = [r for r in g if r.get("suite") == "gpu-host-cpu"]
    if cpu:
        lines = [[r.get("engine"), r.get("precision"), r.get("threads"), r.get("batch"), r.get("stage"), r["p50_ms"],
                  r["p99_ms"], r.get("items_per_s")] for r in cpu]
        text += ["", "### CPU engines on the GPU machine", "",
                 _table(["engine", "precision", "threads", "batch", "stage", "p50 ms", "p99 ms", "items/s"], lines)]
    skipped = sorted({r.get("note") for r in rows if _is_gpu(r) and not _ok(r)})
    if skipped:
        text += ["", "Not measured there: " + "; ".join(s for s in skipped if s)]
    return "\n".join(text)


def _hotpath_section(rows) -> str:
    hp = [r for r in rows if r.get("suite") == "hotpath" and _ok(r)]
    if not hp:
        return ""
    lines = [[r.get("probe"), r.get("variant"), r.get("p50_ms"), r.get("mean_ms"), r.get("p90_ms"), r.get("runs"),
              r.get("note", "")] for r in hp]
    return "\n".join([
        f"## Hot-path probes ({hp[0].get('threads')} thread)",
        "Pieces of the SDK's per-frame work on the 720p frame, and a cheaper way to do the same work where one "
        "exists (measured by `benchmarks/hotpath.py`, not applied to the SDK).", "",
        _table(["probe", "variant", "p50 ms", "mean ms", "p90 ms", "runs", "note"], lines)])


def _notes_section(rows) -> str:
    notes = []
    models = {json.dumps(r.get("model"), sort_keys=True) for r in rows if r.get("model")}
    for m in sorted(models):
        d = json.loads(m)
        notes.append(f"Model: encoder `{d.get('encoder_variant')}`, weights: {d.get('weights')}, face model "
                     f"`{d.get('face_model_id')}`.")
    if any("random" in str((r.get("model") or {}).get("weights", "")) for r in rows):
        notes.append("The encoder weights are **random** (no trained demo model exists yet): latency does not depend "
                     "on the weights, but the accuracy numbers only say how far each artifact drifts from fp32 torch "
                     "on the same random network.")
    notes.append("Shared, noisy machines: every configuration ran in a fresh process; compare ratios within one run "
                 "rather than absolute times across runs.")
    notes += newest_gpu_rows([r for r in rows if _ok(r)])[1]
    errs = [r for r in rows if not _ok(r)]
    for r in errs:
        notes.append(f"Failed / skipped: `{r.get('config')}`: {r.get('note')}")
    return "## Notes\n" + "\n".join(f"- {n}" for n in notes)


def markdown(rows: Sequence[dict], plots: dict[str, str] | None = None, title: str = "smirk-edge benchmarks",
             sources: Sequence[str] = ()) -> str:
    """The Markdown report of ``rows`` (``plots``: name -> relative path of the PNGs to link)."""
    runs = sorted({str(r.get("run_id")) for r in rows})
    inv = [r.get("invocation") for r in rows if isinstance(r.get("invocation"), dict)]
    # argv as recorded; `python -m smirk_edge.benchmarks bench ...` records the subcommand itself
    argvs = sorted({" ".join((i.get("argv") or [])[1:] if (i.get("argv") or [""])[0] == "bench"
                             else (i.get("argv") or [])) for i in inv})
    argvs = [f"benchmarks/gpu_entry.sh {a[len('--gpu'):].strip()}".strip() if a.startswith("--gpu") else
             f"smirk-edge bench {a}".strip() for a in argvs]
    parts = [f"# {title}", "",
             "<!-- GENERATED by smirk_edge.benchmarks.report from benchmark rows; do not edit by hand. -->",
             f"Generated from {len(rows)} rows of run(s) {', '.join(runs)}"
             + (f" ({', '.join(Path(s).name for s in sources)})" if sources else "") + ".",
             "Regenerate: `smirk-edge bench -o DIR` (CPU), `benchmarks/gpu_entry.sh` (GPU), then "
             "`python -m smirk_edge.benchmarks.report DIR/results.json GPU.json -o docs/benchmarks.md`."]
    if argvs:
        parts.append("Invocations: " + "; ".join(f"`{a}`" for a in argvs) + ".")
    parts += ["", summary_line(rows).replace("smirk-edge bench", "**Summary**", 1)]
    for section in (_targets_section, _stage_section, _speedup_section, _throughput_section, _accuracy_section,
                    _memory_section, _hotpath_section, _gpu_section, _machine_section, _full_stats_section,
                    _notes_section):
        s = section(rows)
        if s:
            parts += ["", s]
    if plots:
        parts += ["", "## Plots"] + [f"![{k}]({v})" for k, v in plots.items()]
    elif plots is not None:
        parts += ["", "_Plots skipped: matplotlib is not installed (pip install matplotlib)._"]
    return "\n".join(parts) + "\n"


# ----------------------------------------------------------------------------------------- plots
def write_plots(rows: Sequence[dict], folder: str | os.PathLike) -> dict[str, Path]:
    """PNG plots: per-stage stacked latency bars, accuracy vs latency, throughput. {} without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    cfgs = list(_configs(rows, "pipeline").values()) + list(_configs(rows, "reference").values())
    if cfgs:
        stages = [s for s in STAGES if s != "total" and any(s in c for c in cfgs)]
        labels = []
        for c in cfgs:
            r = c.get("total") or next(iter(c.values()))
            labels.append(_label(r) if r.get("suite") == "pipeline" else f"reference {r.get('threads')}t")
        fig, ax = plt.subplots(figsize=(9, 0.38 * len(cfgs) + 1.5))
        left = [0.0] * len(cfgs)
        for s in stages:
            vals = [(_stat(c, s, "mean_ms") or 0.0) for c in cfgs]
            ax.barh(labels, vals, left=left, label=s)
            left = [a + b for a, b in zip(left, vals)]
        totals = sorted(left)
        cap = 3.0 * totals[len(totals) // 2] if totals else 0.0
        if totals and totals[-1] > cap > 0:  # a few very slow rows would flatten the rest: clip and label them
            ax.set_xlim(0, cap)
            for i, v in enumerate(left):
                if v > cap:
                    ax.text(cap * 0.98, i, f"{v:,.0f} ms >", ha="right", va="center", fontsize=7, color="white")
        ax.set_xlabel("ms per frame (stage means, stacked)")
        ax.set_title("Latency per stage")
        ax.invert_yaxis()
        ax.legend(fontsize=7, ncol=4, loc="lower right")
        fig.tight_layout()
        p = folder / PLOT_FILES["stages"]
        fig.savefig(p, dpi=110)
        plt.close(fig)
        out["stages"] = p
    pts = [r for r in _encoder_points(rows) if r["stage"] == "encode" and r.get("batch") == 1
           and (r.get("accuracy") or {}).get("lmk_mean_px") is not None]
    if pts:
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        for r in pts:
            ax.scatter(r["p50_ms"], r["accuracy"]["lmk_mean_px"], s=30)
            ax.annotate(_label(r), (r["p50_ms"], r["accuracy"]["lmk_mean_px"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
        ax.set_xlabel("encoder p50 ms (batch 1)")
        ax.set_ylabel("landmark error vs fp32 (px at 224)")
        ax.set_yscale("symlog", linthresh=1e-3)
        ax.set_title("Accuracy vs latency")
        fig.tight_layout()
        p = folder / PLOT_FILES["accuracy"]
        fig.savefig(p, dpi=110)
        plt.close(fig)
        out["accuracy"] = p
    enc = [r for r in _encoder_points(rows) if r["stage"] == "encode"]
    gpu = [r for r in newest_gpu_rows([r for r in rows if _ok(r)])[0] if r.get("suite") == "gpu-encoder"]
    several = len({_gpu_name(r) for r in gpu}) > 1
    if enc or gpu:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        series: OrderedDict = OrderedDict()
        for r in enc:
            series.setdefault(_label(r), []).append((r["batch"], r.get("items_per_s")))
        for r in gpu:
            name = _gpu_name(r) if several else "GPU"
            series.setdefault(f"{name} {r.get('engine')} {r.get('precision')} {r.get('layout', '')}", []).append(
                (r["batch"], r.get("items_per_s")))
        for k, v in series.items():
            v = sorted(x for x in v if x[1])
            if v:
                ax.plot([a for a, _ in v], [b for _, b in v], marker="o", label=k)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch")
        ax.set_ylabel("faces/s (encoder)")
        ax.set_title("Encoder throughput")
        ax.legend(fontsize=6)
        fig.tight_layout()
        p = folder / PLOT_FILES["throughput"]
        fig.savefig(p, dpi=110)
        plt.close(fig)
        out["throughput"] = p
    return out


def write_outputs(rows: Sequence[dict], out: str | os.PathLike, plots: bool = True) -> dict[str, Path]:
    """``results.json``, ``results.csv``, ``results.md`` and ``plots/*.png`` in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "csv": out / "results.csv", "md": out / "results.md"}
    paths["json"].write_text(json.dumps(list(rows), indent=1, default=str), encoding="utf-8")
    write_csv(rows, paths["csv"])
    pngs = write_plots(rows, out / "plots") if plots else {}
    paths.update({f"plot_{k}": v for k, v in pngs.items()})
    rel = {k: os.path.relpath(v, out) for k, v in pngs.items()} if plots else None
    paths["md"].write_text(markdown(rows, rel), encoding="utf-8")
    return paths


# -------------------------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m smirk_edge.benchmarks.report",
                                description="Merge benchmark result files into one Markdown report (and CSV).")
    p.add_argument("results", nargs="+", help="results.json files (CPU and/or GPU)")
    p.add_argument("-o", "--output", required=True, help="Markdown file to write (e.g. docs/benchmarks.md)")
    p.add_argument("--plots-dir", default=None, help="where the PNGs go (default: <output folder>/images)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--csv", default=None, help="also write the merged rows as CSV here")
    p.add_argument("--title", default="smirk-edge benchmarks")
    args = p.parse_args(argv)
    rows = load_rows(args.results)
    md = Path(args.output)
    md.parent.mkdir(parents=True, exist_ok=True)
    plots = None
    if not args.no_plots:
        folder = Path(args.plots_dir) if args.plots_dir else md.parent / "images"
        pngs = write_plots(rows, folder)
        plots = {k: os.path.relpath(v, md.parent) for k, v in pngs.items()}
    md.write_text(markdown(rows, plots, args.title, args.results), encoding="utf-8")
    if args.csv:
        write_csv(rows, args.csv)
    print(summary_line(rows))
    print(f"wrote {md}" + (f" and {len(plots)} plot(s)" if plots else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
