"""The benchmark harness writes every output with the expected structure (not timings).

A tiny random-weight bundle (tests/factories.make_tiny_bundle), ONNX Runtime, one thread, a few
runs: the harness starts one process per configuration, collects rows and writes JSON, CSV,
Markdown and plots. Report-writer and warp checks run on generated rows / arrays.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from smirk_edge._lazy import available
from smirk_edge.benchmarks import report
from smirk_edge.benchmarks.stats import ROW_FIELDS, STAT_KEYS, stage_table, summarize

needs_torch = pytest.mark.skipif(not (available("torch") and available("timm") and available("onnx")),
                                 reason="needs torch + timm + onnx (pip install \"smirk-edge[export]\")")
needs_ort = pytest.mark.skipif(not available("onnxruntime"), reason="needs onnxruntime")


def _smooth_image(h: int, w: int) -> np.ndarray:
    """A smooth uint8 image (OpenCV's warp quantises coordinates to 1/32 px: compare on smooth content)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([127 + 100 * np.sin(xx / 9.0), 127 + 100 * np.cos(yy / 7.0), (xx + yy) % 255], -1)
    return np.clip(img, 0, 255).astype(np.uint8)


def test_summarize_and_stage_table():
    s = summarize([1.0, 2.0, 3.0, 4.0])
    assert set(s) == set(STAT_KEYS)
    assert s["min_ms"] == 1.0 and s["max_ms"] == 4.0 and s["p50_ms"] == 2.5 and s["mean_ms"] == 2.5
    t = stage_table([{"detect": 2.0, "total": 5.0}, {"total": 3.0}])
    assert t["detect"]["mean_ms"] == 1.0  # missing in one run counts 0 ms (amortised)
    assert "encode" not in t


def test_warp_float64_matches_opencv():
    import cv2

    from smirk_edge.benchmarks.reference import warp_float64
    from smirk_edge.crop import crop_from_box

    img = _smooth_image(120, 160)
    tr = crop_from_box(np.array([30.0, 20.0, 110.0, 100.0]), 1.4, 64)
    ours = warp_float64(img, tr.inverse_matrix, 64) * 255.0
    ref = cv2.warpAffine(img.astype(np.float64), tr.matrix, (64, 64), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    assert np.abs(ours - ref)[2:-2, 2:-2].max() < 1.0


def _fake_rows() -> list[dict]:
    machine = {"cpu": {"model": "Test CPU", "logical_cores": 2, "usable_cores": 2, "arch": "x86_64", "flags": []},
               "gpus": [], "python": "3.11", "platform": "Linux", "smirk_edge": "0"}
    base = {"run_id": "r1", "machine": machine, "versions": {"onnxruntime": "1"}, "threads": 2, "batch": 1,
            "input": "720p", "model": {"encoder_variant": "full", "weights": "random"}}
    rows = []
    for suite, engine, prec, mode in (("pipeline", "onnxruntime", "int8", "image"),
                                      ("pipeline", "onnxruntime", "int8", "video"),
                                      ("reference", "torch", "fp32", "image")):
        for stage, ms in (("detect", 1.0), ("crop", 0.2), ("encode", 2.0), ("decode", 0.3), ("total", 3.5)):
            rows.append({**base, "suite": suite, "engine": engine, "precision": prec, "mode": mode, "stage": stage,
                         "config": f"{suite}/{engine}/{prec}/{mode}", "runs": 100, "warmup": 10,
                         **summarize([ms * (10 if suite == "reference" else 1)] * 3)})
    for b in (1, 8):
        rows.append({**base, "suite": "encoder", "engine": "onnxruntime", "precision": "int8", "batch": b,
                     "stage": "encode", "config": "encoder/onnxruntime/int8/t2", "runs": 100, "warmup": 10,
                     "accuracy": {"lmk_mean_px": 0.3, "lmk_p99_px": 1.0, "passed": True}, "artifact_bytes": 4_000_000,
                     "items_per_s": b * 1000.0, **summarize([1.0 * b])})
    return rows


def test_report_outputs_from_rows(tmp_path):
    rows = _fake_rows()
    gpu = [{"run_id": "g1", "suite": "gpu-encoder", "engine": "cudagraph", "precision": "fp16",
            "layout": "channels_last", "batch": 1, "stage": "encode", "runs": 50, **summarize([1.5, 1.4]),
            "items_per_s": 700.0, "machine": {"cpu": {"model": "Host"}, "gpus": [{"name": "H100"}]}}]
    paths = report.write_outputs(rows, tmp_path / "out", plots=False)
    data = json.loads(paths["json"].read_text())
    assert isinstance(data, list) and len(data) == len(rows)
    with open(paths["csv"], newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        body = list(reader)
    assert header[:len(ROW_FIELDS)] == list(ROW_FIELDS)
    assert "accuracy.lmk_mean_px" in header and "machine.cpu.model" in header
    assert len(body) == len(rows)
    md = paths["md"].read_text()
    for heading in ("## Targets", "## Where the time goes", "## Speedup over the reference path",
                    "## Encoder throughput", "## Accuracy beside latency", "## Machine"):
        assert heading in md
    assert "| configuration | detect | crop | encode | decode |" in md
    line = report.summary_line(rows)
    assert "720p image e2e 3.50 ms" in line and "speedup x10.0" in line
    # merging a CPU and a GPU file into one report
    (tmp_path / "gpu.json").write_text(json.dumps(gpu))
    assert report.main([str(paths["json"]), str(tmp_path / "gpu.json"), "-o", str(tmp_path / "doc" / "b.md"),
                        "--no-plots"]) == 0
    merged = (tmp_path / "doc" / "b.md").read_text()
    assert "## GPU" in merged and "### Encoder" in merged and "H100" in merged


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    from factories import make_tiny_bundle

    bundle, _ = make_tiny_bundle(tmp_path_factory.mktemp("bench") / "tiny")
    return bundle.root


@needs_torch
@needs_ort
def test_harness_writes_every_output(tiny_bundle, tmp_path):
    from smirk_edge.benchmarks.harness import BenchOptions, run_bench

    out = tmp_path / "bench"
    rows, paths = run_bench(BenchOptions(out=out, bundle=tiny_bundle, backends=["onnxruntime"], threads=[1],
                                         batches=[1, 2], runs=3, warmup=1, modes=["image", "video"], quiet=True,
                                         budget_s=5, hotpath=False))
    errors = [r for r in rows if r.get("stage") == "error"]
    assert not errors, errors
    for name in ("json", "csv", "md"):
        assert paths[name].is_file()
    data = json.loads((out / "results.json").read_text())
    assert isinstance(data, list) and len(data) == len(rows)
    for r in data:
        assert set(ROW_FIELDS) <= set(r), sorted(set(ROW_FIELDS) - set(r))
        assert {"versions", "machine", "model"} <= set(r)
        assert r["versions"]["onnxruntime"]
        if r["stage"] not in ("open", "first_call"):
            assert r["runs"] >= 1 and all(np.isfinite(r[k]) for k in STAT_KEYS)
    suites = {r["suite"] for r in data}
    assert {"pipeline", "encoder", "reference"} <= suites
    image = {r["stage"] for r in data if r["suite"] == "pipeline" and r["mode"] == "image"}
    assert {"decode_image", "detect", "crop", "encode", "decode", "project", "total", "open", "first_call"} <= image
    video = {r["stage"] for r in data if r["suite"] == "pipeline" and r["mode"] == "video"}
    assert {"crop", "encode", "smooth", "total"} <= video
    enc = [r for r in data if r["suite"] == "encoder" and r["stage"] in ("encode", "encode+decode")]
    assert sorted({r["batch"] for r in enc}) == [1, 2] and all(r["items_per_s"] > 0 for r in enc)
    assert all(r["peak_rss_mb"] > 0 for r in data if r["suite"] in ("pipeline", "encoder", "reference"))
    ref = {r["stage"] for r in data if r["suite"] == "reference"}
    assert {"detect", "crop", "encode", "decode", "project", "total"} <= ref
    with open(paths["csv"], newline="") as f:
        header = next(csv.reader(f))
    assert header[:len(ROW_FIELDS)] == list(ROW_FIELDS)
    md = paths["md"].read_text()
    assert "## Where the time goes" in md and "## Speedup over the reference path" in md
    assert "| onnxruntime fp32 1t image |" in md
    if available("matplotlib"):
        assert (out / "plots" / report.PLOT_FILES["stages"]).is_file()
    else:
        assert "Plots skipped" in md


def test_report_names_each_invocation_once_without_the_subcommand():
    rows = [{"run_id": "r1", "invocation": {"argv": ["bench", "--quick", "-o", "out"]}},
            {"run_id": "r1", "invocation": {"argv": ["--quick", "-o", "out"]}},
            {"run_id": "r2", "invocation": {"argv": ["--gpu", "--quick"]}}]
    text = report.markdown(rows)
    assert "`smirk-edge bench --quick -o out`" in text and "bench bench" not in text
    assert text.count("smirk-edge bench --quick -o out") == 1
    assert "`benchmarks/gpu_entry.sh --quick`" in text


def test_bench_bundle_needs_face_photos(monkeypatch, tmp_path):
    from smirk_edge.benchmarks import bundle_setup
    from smirk_edge.errors import InputError

    monkeypatch.setattr(bundle_setup, "calibration_photos", lambda: None)
    with pytest.raises(InputError, match="--bundle DIR"):
        bundle_setup.build_bench_bundle(tmp_path / "b", log=lambda m: None)


@pytest.mark.slow
@needs_torch
def test_bench_bundle_is_exported_with_the_gate(tmp_path):
    """The benchmark bundle comes from smirk_edge.export (gated, every artifact carries its accuracy)."""
    pytest.importorskip("openvino", reason="needs openvino (pip install \"smirk-edge[export]\")")
    pytest.importorskip("nncf", reason="needs nncf (pip install \"smirk-edge[export]\")")
    from smirk_edge.benchmarks import bundle_setup

    if bundle_setup.calibration_photos() is None:
        pytest.skip("needs ../shared/data/faces/utkface")
    b = bundle_setup.build_bench_bundle(tmp_path / "bench", variant="tiny", log=lambda m: None)
    assert b.metadata["weights"] == bundle_setup.WEIGHTS_NOTE
    names = sorted(a.name for a in b.encoders())
    assert names == ["encoder.int8.onnx", "encoder.int8.xml", "encoder.onnx", "encoder.xml"]
    assert all("accuracy" in a.attrs for a in b.encoders())
    again = bundle_setup.build_bench_bundle(tmp_path / "bench", variant="tiny", log=lambda m: None)
    assert again.root == b.root


@pytest.mark.parametrize("flags, isa", [
    (["avx2", "fma"], "AVX2 yes, AVX-512 no, VNNI no, AMX no"),
    (["avx2", "avx512f", "avx512_vnni", "amx_int8", "amx_tile"], "AVX2 yes, AVX-512 yes, VNNI yes, AMX yes"),
    (["avx2", "avx_vnni"], "AVX2 yes, AVX-512 no, VNNI yes, AMX no"),
])
def test_report_names_the_cpu_features(flags, isa):
    rows = _fake_rows()
    for r in rows:
        r["machine"]["cpu"].update(flags=flags, **{"class": "x"})
    assert f"CPU x: {isa} ({' '.join(flags)})" in report.summary_line(rows)
    assert isa in report.markdown(rows, plots=None)


def test_report_keeps_two_machines_apart():
    """Rows of two CPU runs merged into one report: each run keeps its own best figures, targets and
    speedup (never our time on one machine over the reference on the other), and each stage row names
    its machine."""
    import copy

    fast, slow = _fake_rows(), copy.deepcopy(_fake_rows())
    for r in fast:
        r["machine"]["cpu"].update(model="Box A", flags=["avx2", "avx512f", "avx512_vnni", "amx_int8"],
                                   **{"class": "amx"})
    for r in slow:
        r["run_id"] = "r2"
        r["machine"]["cpu"].update(model="Box B", flags=["avx2", "fma"], **{"class": "avx2"})
        for k in ("p50_ms", "mean_ms", "p90_ms", "p99_ms", "min_ms", "max_ms"):
            if r.get(k) is not None and r["suite"] != "reference":
                r[k] *= 2  # ours twice as slow on B, the reference as fast as on A
    line = report.summary_line(fast + slow)
    a, b = line.split(" || ")
    assert "CPU amx" in a and "720p image e2e 3.50 ms" in a and "speedup x10.0" in a, a
    assert "CPU avx2" in b and "720p image e2e 7.00 ms" in b and "speedup x5.0" in b, b
    md = report.markdown(fast + slow, plots=None)
    assert "best configuration; Box A, CPU class amx, run r1)" in md
    assert "best configuration; Box B, CPU class avx2, run r2)" in md
    assert "| [avx2, Box B] onnxruntime int8 2t image | 7.00 | 35.00 | 5.00 |" in md
    assert "| [amx, Box A] onnxruntime int8 2t image | 3.50 | 35.00 | 10.00 |" in md
    # one run alone reads as before: no machine tags
    assert "[amx" not in report.markdown(fast, plots=None) and " || " not in report.summary_line(fast)


def test_report_says_why_the_reference_is_missing():
    rows = [r for r in _fake_rows() if r["suite"] != "reference"]
    for r in rows:
        r["invocation"] = {"reference_skipped": "torch/timm not installed: pip install 'smirk-edge[torch]'"}
    line = report.summary_line(rows)
    assert "reference not measured (torch/timm not installed" in line and "speedup" not in line
    md = report.markdown(rows, plots=None)
    assert "## Speedup over the reference path\nNot measured in this run: torch/timm" in md


def _sdk_gpu_rows(run: str, written: str, device: str = "NVIDIA H200") -> list[dict]:
    """Synthetic ``sdk-gpu`` rows of one run: image (misses its 2 ms target), video (meets 1 ms), batch 256
    (encoder + decode + projection at 51,200 faces/s: meets 40,000)."""
    base = {"run_id": run, "suite": "sdk-gpu", "engine": "torch", "precision": "fp16", "device": device,
            "runs": 50, "invocation": {"written": written}}
    rows = []
    for mode, batch, stages in (("image", 1, {"detect": 1.5, "crop": 0.3, "encode": 0.4, "total": 2.5}),
                                ("video", 1, {"check": 0.1, "crop": 0.2, "smooth": 0.1, "total": 0.8}),
                                ("batch", 256, {"detect": 40.0, "encode": 3.0, "total": 50.0,
                                                "encode+decode+project": 5.0})):
        for stage, ms in stages.items():
            items = (batch if mode == "batch" else 1) * 1000.0 / ms
            rows.append({**base, "mode": mode, "batch": batch, "stage": stage,
                         "config": f"sdk-gpu/{mode}/{batch}/{stage}", **summarize([ms]), "items_per_s": items})
    return rows


def test_report_renders_the_sdk_gpu_rows_with_their_targets():
    rows = _fake_rows() + _sdk_gpu_rows("g-old", "2026-01-01T00:00:00", "NVIDIA H100") + _sdk_gpu_rows(
        "g-new", "2026-02-01T00:00:00")
    old_encoder = {"run_id": "g-old", "suite": "gpu-encoder", "engine": "cudagraph", "precision": "fp16",
                   "layout": "channels_last", "batch": 1, "stage": "encode", "config": "gpu/cudagraph/fp16/b1",
                   "device": "NVIDIA H100", "invocation": {"written": "2026-01-01T00:00:00"}, "runs": 50,
                   **summarize([9.0]), "items_per_s": 111.0}
    new_encoder = {**old_encoder, "run_id": "g-new", "device": "NVIDIA H200",
                   "invocation": {"written": "2026-02-01T00:00:00"}, **summarize([1.25])}
    rows += [old_encoder, new_encoder]
    md = report.markdown(rows, plots=None)
    assert "### SDK end to end" in md
    header = next(line for line in md.splitlines() if line.startswith("| GPU | run | model | mode |"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    assert cols[cols.index("items/s") + 1:] == ["detect", "check", "crop", "encode", "smooth",
                                                "encode+decode+project", "target", "measured", "met"]
    lines = {(c[1], c[3]): c for line in md.splitlines() if line.startswith("| NVIDIA")
             for c in [[x.strip() for x in line.strip("|").split("|")]] if c[3] in ("image", "video", "batch")}
    assert {c[2] for c in lines.values()} == {"default"}  # rows without a model are the default bundle's
    # the sdk-gpu lines of both runs are shown (only the microbenchmark rows keep the newest run)
    assert {k[0] for k in lines} == {"g-old", "g-new"}
    image, video, batch = lines[("g-new", "image")], lines[("g-new", "video")], lines[("g-new", "batch")]
    at = {c: i for i, c in enumerate(cols)}
    assert image[at["total p50 ms"]] == "2.50" and image[at["detect"]] == "1.50" and image[at["check"]] == "-"
    assert image[at["target"]] == "<= 2.00 ms" and image[at["met"]] == "no"
    assert video[at["total p50 ms"]] == "0.80" and video[at["met"]] == "yes" and video[at["check"]] == "0.10"
    assert batch[at["batch"]] == "256" and batch[at["measured"]] == "51,200" and batch[at["met"]] == "yes"
    assert batch[at["target"]] == "encode+decode+project >= 40,000 faces/s"
    # the targets are computed: the same batch at 10,000 faces/s misses
    slow = [{**r, "items_per_s": 10_000.0} if r.get("stage") == "encode+decode+project" else r
            for r in _sdk_gpu_rows("g3", "2026-03-01T00:00:00")]
    slow_md = report.markdown(slow, plots=None)
    assert any(line.startswith("| NVIDIA H200 | g3 | default | batch |") and line.rstrip().endswith("| 10,000 | no |")
               for line in slow_md.splitlines())
    # two models in one run are two lines, named by their encoder variant
    fast = [{**r, "model": {"bundle": "/x/fast_bundle", "variant": "fast"}} for r in _sdk_gpu_rows("g3", "2026-03-01")]
    two = report.markdown(slow + fast, plots=None)
    assert sum(line.startswith("| NVIDIA H200 | g3 | fast | batch |") for line in two.splitlines()) == 1
    assert sum(line.startswith("| NVIDIA H200 | g3 | default | batch |") for line in two.splitlines()) == 1
    # encoder microbenchmarks of one configuration from two runs: the newest run's row only, and a note says so
    enc = md.split("### Encoder", 1)[1].split("\n#", 1)[0]
    assert "| NVIDIA H200 | cudagraph | fp16 |" in enc and "NVIDIA H100" not in enc
    assert "1 GPU row(s) of run g-old (NVIDIA H100) not shown" in md


def test_report_renders_the_soak_memory_rows():
    """The soak harness's rows (suite memory-stream) get their own table with the peak RSS."""
    row = {"suite": "memory-stream", "run_id": "soak-1", "engine": "openvino:CPU fp32", "bundle": "default",
           "source": "/data/videos/clip.mp4", "canvas": "1280x720", "threads": 1, "frames": 900,
           "rss_mb_before_reconstructor": 63.7, "rss_mb_after_warmup": 213.5, "rss_mb_end": 215.2,
           "rss_growth_percent": 0.81, "peak_rss_mb": 215.5, "fps": 15.7,
           "machine": {"cpu": {"model": "x", "flags": ["avx2"], "class": "avx2"}}}
    md = report.markdown([row], plots=None)
    assert "A long stream" in md
    assert "| openvino:CPU fp32 | default | clip.mp4 | 1280x720 | 1 | 900 | 63.70 | 214 | 215 | 0.81 | 216 | 15.70 | avx2 | - |" in md
