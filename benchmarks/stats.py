"""Summary statistics of latency samples (milliseconds) and the one row schema of the harness.

Every measurement the harness writes is one *row*: a flat-ish dict with the configuration
(suite, engine, precision, threads, batch, mode, stage, ...), the statistics of :func:`summarize`
and the context (machine, versions, accuracy, memory). :data:`ROW_FIELDS` lists the scalar
fields in CSV column order; ``accuracy``, ``versions`` and ``machine`` are nested dicts in JSON
and flattened into ``accuracy.*`` / ``versions.*`` / ``machine.*`` columns in CSV.

numpy only.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

STAT_KEYS = ("mean_ms", "std_ms", "p50_ms", "p90_ms", "p99_ms", "min_ms", "max_ms")
"""Statistics of every timed stage, in milliseconds."""

ROW_FIELDS = (
    "run_id", "suite", "config", "engine", "precision", "artifact", "artifact_bytes", "threads", "batch",
    "mode", "input", "refine", "read", "crop_source", "stage", "runs", "warmup", *STAT_KEYS, "items_per_s",
    "peak_rss_mb", "device", "note",
)
"""Scalar row fields, in CSV column order (nested dicts follow, flattened)."""

NESTED_FIELDS = ("accuracy", "model", "versions", "machine")

STAGES = ("decode_image", "detect", "check", "crop", "encode", "decode", "project", "smooth", "read", "total")
"""Stages of the SDK's per-frame timings (:attr:`smirk_edge.Reconstructor.timings`), in order; ``read`` is the
harness's own: reading the faces' fields (:data:`READS`), which the SDK computes when first read."""

READS = {
    "params": (),
    "landmarks": ("landmarks68",),
    "all": ("vertices", "vertices_image", "landmarks68", "landmarks105", "head_pose"),
}
"""What a pipeline configuration reads from every face after each call (``--read``): the parameters
only, the 68 landmarks, or every field (what the SDK computed in the call before outputs were deferred)."""


def summarize(samples_ms: Iterable[float]) -> dict[str, float]:
    """mean, std (population), p50, p90, p99, min, max of ``samples_ms`` (milliseconds).

    Percentiles use linear interpolation (numpy's default). Empty input gives NaNs.
    """
    x = np.asarray(list(samples_ms), dtype=np.float64)
    if x.size == 0:
        return {k: float("nan") for k in STAT_KEYS}
    p50, p90, p99 = np.percentile(x, [50, 90, 99])
    return {"mean_ms": float(x.mean()), "std_ms": float(x.std()), "p50_ms": float(p50), "p90_ms": float(p90),
            "p99_ms": float(p99), "min_ms": float(x.min()), "max_ms": float(x.max())}


def stage_table(per_run: list[dict[str, float]], stages: Iterable[str] = STAGES,
                missing_as_zero: bool = True) -> dict[str, dict[str, float]]:
    """Per-stage statistics over runs of ``{stage: ms}`` dicts.

    A stage missing from some runs (the detector while tracking, the refine pass) counts as 0 ms in
    those runs when ``missing_as_zero`` (the amortised per-frame cost); a stage missing from every
    run is left out.
    """
    out = {}
    for s in stages:
        if not any(s in r for r in per_run):
            continue
        vals = [r.get(s, 0.0) for r in per_run] if missing_as_zero else [r[s] for r in per_run if s in r]
        out[s] = summarize(vals)
    return out
