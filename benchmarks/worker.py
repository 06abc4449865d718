"""One benchmark configuration, in a fresh process: ``python -m smirk_edge.benchmarks.worker CFG OUT``.

The parent (:mod:`smirk_edge.benchmarks.harness`) writes the configuration as JSON (``CFG``),
starts this module in a new interpreter with the thread environment of the configuration, and
reads back the rows this process writes to ``OUT`` (a JSON list). A fresh process per
configuration means no engine, allocator or thread pool state leaks from one measurement into
the next, and the peak RSS of a row is the peak of that configuration alone.

Configuration kinds (``cfg["kind"]``):

* ``pipeline``: :class:`smirk_edge.Reconstructor` on the frames, ``mode`` ``image`` (``rec(frame)``)
  or ``video`` (``rec.stream(frames)``: tracking + smoothing); rows per stage of
  :attr:`Reconstructor.timings`, ``read`` (reading the fields ``cfg["read"]`` names from every face,
  :data:`.stats.READS`: the SDK computes a face's geometry when first read) and the end-to-end
  ``total`` (the SDK's timer plus ``read``), plus ``open`` (constructing the Reconstructor) and
  ``first_call`` (the first frame, cold).
* ``encoder``: the encoder artifact alone through :func:`smirk_edge.runtimes.registry.make_runner`
  on real crops of the frame, at each batch size: ``encode`` (engine only) and ``encode+decode``
  (engine + numpy face-model decode); throughput in faces/s.
* ``reference``: what a user of the official SMIRK code runs (see :mod:`.reference`).

Heavy imports happen inside the functions.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from .runs import PlacementFallback, base_row, load_inputs, peak_rss_mb, row, set_threads, single
from .stats import READS, STAGES, stage_table, summarize


def run_pipeline(cfg: dict) -> list[dict]:
    """Reconstructor end to end, per stage (see the module docstring)."""
    from smirk_edge.reconstructor import Reconstructor

    set_threads(cfg.get("threads"))
    frames, boxes, meta = load_inputs(cfg["inputs"])
    files = meta.get("jpeg_files") if cfg.get("decode_image") else None
    base = base_row(cfg)
    t0 = time.perf_counter()
    rec = Reconstructor(cfg["bundle"], backend=cfg["engine"], precision=cfg["precision"], threads=cfg.get("threads") or None,
                        refine=cfg.get("refine", "auto"))
    open_ms = (time.perf_counter() - t0) * 1e3
    fallback = PlacementFallback(rec.detector)
    rec.detector = fallback
    art = rec.artifact
    base.update(artifact=art.name, artifact_bytes=sum(f.bytes for f in art.files), accuracy=art.attrs.get("accuracy"),
                device=rec.encoder.device,
                engine_label=rec.engine)
    runs, warmup = int(cfg["runs"]), int(cfg["warmup"])
    n = len(frames)
    per_run: list[dict] = []
    walls: list[float] = []
    first_ms = None
    faces_found = []
    fields = READS[cfg.get("read") or "all"]

    def record(i, call, first):
        """Time one call and the reading of its faces; keep the SDK's stage timings of the runs after warm-up."""
        t = time.perf_counter()
        faces = call()
        t_read = time.perf_counter()
        for f in faces:
            for name in fields:
                getattr(f, name)
        read_ms = (time.perf_counter() - t_read) * 1e3
        wall = (time.perf_counter() - t) * 1e3
        if i >= warmup:
            timings = dict(rec.timings)
            timings["read"] = read_ms
            timings["total"] = timings.get("total", 0.0) + read_ms
            per_run.append(timings)
            walls.append(wall)
            faces_found.append(len(faces))
        return wall if i == 0 else first

    if cfg.get("mode", "image") == "image":
        for i in range(warmup + runs):
            k = i % n
            fallback.box = boxes[k]
            src = files[k] if files else frames[k]
            first_ms = record(i, lambda: rec(src), first_ms)
    else:
        def gen():
            for i in range(warmup + runs):
                fallback.box = boxes[i % n]
                yield frames[i % n]

        stream = rec.stream(gen(), on_error="raise")
        for i in range(warmup + runs):
            first_ms = record(i, lambda: next(stream), first_ms)
    rss = peak_rss_mb()
    source = "detector" if fallback.fallbacks == 0 else (
        f"placement box (detector found no face in {fallback.fallbacks}/{fallback.calls} calls)")
    base.update(crop_source=source, peak_rss_mb=rss, faces_mean=float(np.mean(faces_found)) if faces_found else 0.0)
    rows = [row(base, s, st, runs, warmup) for s, st in stage_table(per_run, STAGES).items()]
    rows.append(row(base, "wall", summarize(walls), runs, warmup,
                     note="time around the call and the reading of its faces, outside the SDK's own timers"))
    rows.append(row(base, "open", single(open_ms), 1, 0, note="Reconstructor() construction: bundle check, engine start"))
    rows.append(row(base, "first_call", single(first_ms or float("nan")), 1, 0, note="first frame, cold"))
    rec.close()
    return rows


def real_crops(frames: list[np.ndarray], boxes: list, n: int = 8) -> np.ndarray:
    """Encoder input ``(n, 3, 224, 224)`` from the frames: the SDK's crop around each placement box
    (or the detected face, or the frame centre), cycled."""
    from smirk_edge.crop import crop_from_box, preprocess

    crops = []
    for i in range(n):
        fr, box = frames[i % len(frames)], boxes[i % len(boxes)]
        if box is None:
            h, w = fr.shape[:2]
            s = min(h, w) * 0.5
            box = np.array([w / 2 - s / 2, h / 2 - s / 2, w / 2 + s / 2, h / 2 + s / 2])
        crops.append(preprocess(fr, [crop_from_box(box)])[0])
    return np.stack(crops)


def _timed_runs(fn, runs: int, warmup: int, budget_s: float | None) -> tuple[list[float], int]:
    """Run ``fn`` ``warmup`` times, then up to ``runs`` timed times (fewer, but >= 10, when one run
    is so slow that ``runs`` would exceed ``budget_s``). Returns (samples ms, warm-up count)."""
    t = time.perf_counter()
    for _ in range(max(1, warmup)):
        fn()
    per = (time.perf_counter() - t) / max(1, warmup)
    if budget_s and per * runs > budget_s:
        runs = max(10, int(budget_s / max(per, 1e-9)))
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e3)
    return out, max(1, warmup)


def run_encoder(cfg: dict) -> list[dict]:
    """Encoder-only and encoder+decode latency and throughput at each batch size."""
    from smirk_edge.bundle import Bundle
    from smirk_edge.face_model import FaceModel
    from smirk_edge.runtimes import registry

    set_threads(cfg.get("threads"))
    frames, boxes, _ = load_inputs(cfg["inputs"])
    bundle = Bundle(cfg["bundle"])
    encs = bundle.encoders()
    art = registry.select_engine(encs, preferred=cfg["engine"], precision=cfg["precision"]).artifact
    opts = {"precision": art.precision}
    if cfg.get("threads") and cfg["engine"] in ("onnxruntime", "openvino"):
        opts["threads"] = int(cfg["threads"])
    t0 = time.perf_counter()
    runner = registry.make_runner(cfg["engine"], bundle.main_path(art), **opts).activate()
    open_ms = (time.perf_counter() - t0) * 1e3
    fm = FaceModel.load(bundle.main_path(bundle.find(role="face_model")[0]).read_bytes())
    base = base_row(cfg)
    base.update(artifact=art.name, artifact_bytes=sum(f.bytes for f in art.files), accuracy=art.attrs.get("accuracy"),
                device=runner.device, crop_source="placement box")
    crops = real_crops(frames, boxes, 8)
    rows = [row(base, "open", single(open_ms), 1, 0, note="runner activation (session / compile)")]
    runs, warmup, budget = int(cfg["runs"]), int(cfg["warmup"]), cfg.get("budget_s")
    for b in cfg["batches"]:
        x = np.ascontiguousarray(crops[np.arange(b) % len(crops)])
        feed = {"image": x}
        t = time.perf_counter()
        first = runner.infer(feed)
        first_ms = (time.perf_counter() - t) * 1e3

        def enc(feed=feed):
            return runner.infer(feed)

        def enc_dec(feed=feed):
            o = runner.infer(feed)
            return fm.decode(shape=o["shape"], expression=o["expression"], pose=o["pose"], jaw=o["jaw"],
                             eyelid=o["eyelid"])

        del first
        s1, w1 = _timed_runs(enc, runs, warmup, budget)
        st = summarize(s1)
        rows.append(row(base, "encode", st, len(s1), w1, batch=b, items_per_s=b * 1e3 / st["p50_ms"],
                         first_call_ms=first_ms))
        s2, w2 = _timed_runs(enc_dec, runs, warmup, budget)
        st2 = summarize(s2)
        rows.append(row(base, "encode+decode", st2, len(s2), w2, batch=b, items_per_s=b * 1e3 / st2["p50_ms"]))
    rss = peak_rss_mb()
    for r in rows:
        r["peak_rss_mb"] = rss
    runner.deactivate()
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m smirk_edge.benchmarks.worker CONFIG.json OUT.json", file=sys.stderr)
        return 2
    cfg = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    kind = cfg["kind"]
    if kind == "pipeline":
        rows = run_pipeline(cfg)
    elif kind == "encoder":
        rows = run_encoder(cfg)
    elif kind == "reference":
        from .reference import run_reference

        rows = run_reference(cfg)
    elif kind == "hotpath":
        from .hotpath import decorate, run

        rows = decorate(run(cfg["bundle"], int(cfg["runs"]), int(cfg.get("threads") or 1)), cfg["run_id"])
        for r in rows:
            r["input"] = cfg["input_name"]
    else:
        print(f"unknown configuration kind {kind!r}", file=sys.stderr)
        return 2
    Path(argv[1]).write_text(json.dumps(rows, default=_json_default), encoding="utf-8")
    return 0


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


if __name__ == "__main__":
    sys.exit(main())
