"""Probes of the SDK's per-frame hot path: where a frame's milliseconds go below the stage level.

``python -m smirk_edge.benchmarks.hotpath --bundle B [-o rows.json] [--runs 200] [--threads 1]``

Each probe times one piece of :class:`smirk_edge.Reconstructor`'s work on the 720p frame, and where
a cheaper way to do the same work exists, that alternative too (measured, not applied: the SDK is
not changed here). Rows: ``probe``, ``variant``, statistics (ms). Probes:

* ``detect``: the detector as the Reconstructor runs it (``auto``: both BlazeFace models on every
  detection) vs the short-range or full-range model alone; ``letterbox`` alone (the 720p resize).
* ``encode-after-detect``: the encoder alone in a loop vs the encoder right after a detector call
  (cache / memory interference between the two sessions).
* ``preprocess``: :func:`smirk_edge.crop.preprocess` for one face vs warp + one fused transposing
  copy into a preallocated batch.
* ``decode``: the numpy face model (the bundle's, and a FLAME-sized 5,041-vertex random model) vs the
  same LBS with matmuls in place of the two per-vertex ``einsum`` calls.
* ``open``: sha256 verification of the bundle (part of constructing a Reconstructor).
* ``outputs``: the faces of one encoder output (real parameters of the 720p face), for each face
  model: computed in the call (decode, project, head pose, as the SDK did before a face's geometry
  was deferred) vs :meth:`smirk_edge.pipeline.Stages.faces` (geometry computed when first read)
  followed by reading nothing, the 68 landmarks, or every field. The variants run interleaved
  (one call of each in turn), so a load change on a shared machine touches them alike.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from .stats import summarize


def _time(fn, runs: int, warmup: int = 5) -> dict:
    for _ in range(warmup):
        fn()
    s = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        s.append((time.perf_counter() - t) * 1e3)
    return summarize(s)


def _time_interleaved(fns: dict, runs: int, warmup: int = 5) -> dict:
    """``{name: stats}`` of each callable, one call of each in turn (so drifting load hits all alike)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    s: dict = {k: [] for k in fns}
    for _ in range(runs):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            s[k].append((time.perf_counter() - t) * 1e3)
    return {k: summarize(v) for k, v in s.items()}


def _outputs_probe(fm, params: dict, transform, size: int = 224) -> dict:
    """The variants of the ``outputs`` probe for one face model (callables)."""
    from smirk_edge import pipeline as P

    stages = P.Stages(None, None, fm, P.CropPolicy(size=size))  # type: ignore[arg-type]
    crops = P.Crops([transform], np.zeros((1, 3, 1, 1), np.float32))
    boxes, scores = np.zeros((1, 4)), np.ones(1)

    def eager():
        g = P.decode(fm, params)
        a = P.image_affines(params["cam"], [transform.matrix], size)
        P.head_poses(params["pose"], [transform.matrix])
        return P.assemble(params, g, P.project(g, a), crops, boxes, scores, fm.faces)

    def deferred(fields):
        def call():
            faces = stages.faces(params, crops, boxes, scores, P.StageTimer())
            for f in faces:
                for k in fields:
                    getattr(f, k)
        return call

    every = ("vertices", "vertices_image", "landmarks68", "landmarks105", "head_pose")
    return {"computed in the call (decode, project, head pose)": eager,
            "deferred, nothing read (parameters only)": deferred(()),
            "deferred, landmarks68 read": deferred(("landmarks68",)),
            "deferred, every field read": deferred(every)}


def _lbs_matmul(fm, shape, expression, pose, jaw, eyelid):
    """The numpy face model's decode with matmuls for the two per-vertex einsums (same result)."""
    from smirk_edge.face_model.model import rodrigues

    B = shape.shape[0]
    V = fm.n_vertices
    z3, z6 = np.zeros((B, 3), np.float32), np.zeros((B, 6), np.float32)
    betas = np.concatenate([shape, expression], axis=1)
    v_shaped = fm.v_template[None] + (betas @ fm._blend.T).reshape(B, V, 3)
    joints = np.einsum("jv,bvc->bjc", fm.J_regressor, v_shaped)
    rot = rodrigues(np.concatenate([pose, z3, jaw, z6], axis=1).reshape(B, -1, 3))
    pose_feature = (rot[:, 1:] - np.eye(3, dtype=np.float32)).reshape(B, -1)
    v_posed = v_shaped + (pose_feature @ fm._posedirs.T).reshape(B, V, 3)
    world = fm._rigid_transforms(rot, joints)
    J = world.shape[1]
    T = (fm.lbs_weights @ world.reshape(B, J, 16)).reshape(B, V, 4, 4)
    verts = np.matmul(T[:, :, :3, :3], v_posed[..., None])[..., 0] + T[:, :, :3, 3]
    verts = verts + fm.r_eyelid[None] * eyelid[:, 1, None, None] + fm.l_eyelid[None] * eyelid[:, 0, None, None]
    return verts.astype(np.float32)


def run(bundle_path: str, runs: int = 200, threads: int = 1) -> list[dict]:
    from smirk_edge.bundle import Bundle
    from smirk_edge.crop import crop_from_box, preprocess
    from smirk_edge.detector import MODELS, FaceDetector, letterbox, model_path
    from smirk_edge.face_model import FaceModel
    from smirk_edge.runtimes import registry

    from .inputs import synthetic_720p

    from smirk_edge.cpu import apply_thread_budget

    apply_thread_budget(threads)  # OpenCV and BLAS on the same budget, as in a Reconstructor
    rows: list[dict] = []

    def add(probe, variant, stats, note=""):
        rows.append({"suite": "hotpath", "config": f"hotpath/{probe}", "stage": probe, "probe": probe,
                     "variant": variant, **stats, "note": note, "threads": threads,
                     "runs": 1 if probe == "open" else runs})

    inp = synthetic_720p()
    frame, box = inp.frames[0], inp.boxes[0]
    det_runners = {v: registry.make_runner("onnxruntime", model_path(v), threads=threads).activate()
                   for v in ("short", "full")}
    for variant in ("auto", "both", "short", "full"):
        det = FaceDetector(det_runners if variant in ("auto", "both") else {variant: det_runners[variant]},
                           variant=variant)
        n = len(det.detect(frame))
        add("detect", variant, _time(lambda det=det: det.detect(frame), runs), f"{n} face(s) found")
    for v in ("short", "full"):
        add("letterbox", v, _time(lambda v=v: letterbox(frame, MODELS[v].input_size), runs))

    bundle = Bundle(bundle_path)
    t = time.perf_counter()
    bundle.verify_all()
    add("open", "sha256 of every bundle file", summarize([(time.perf_counter() - t) * 1e3]),
        f"{sum(f.bytes for a in bundle.artifacts for f in a.files) / 1e6:.1f} MB")
    art = [a for a in bundle.find(role="encoder", kind="onnx") if a.precision == "fp32"][0]
    enc = registry.make_runner("onnxruntime", bundle.main_path(art), precision="fp32", threads=threads).activate()
    x = preprocess(frame, [crop_from_box(box)])
    det = FaceDetector(det_runners)
    add("encode-after-detect", "encoder alone", _time(lambda: enc.infer({"image": x}), runs))
    samples = []
    for i in range(runs + 5):
        det.detect(frame)
        t = time.perf_counter()
        enc.infer({"image": x})
        if i >= 5:
            samples.append((time.perf_counter() - t) * 1e3)
    add("encode-after-detect", "encoder right after a detector call", summarize(samples))

    tr = crop_from_box(box)
    buf = np.empty((1, 3, 224, 224), np.float32)

    def fused():
        crop = tr.warp(frame)
        np.multiply(crop[..., ::-1].transpose(2, 0, 1), np.float32(1 / 255), out=buf[0], casting="unsafe")
        return buf

    assert np.allclose(fused(), preprocess(frame, [tr]), atol=1e-6)
    add("preprocess", "smirk_edge.crop.preprocess (1 face)", _time(lambda: preprocess(frame, [tr]), runs))
    add("preprocess", "warp + one transposing multiply into a preallocated batch", _time(fused, runs))

    fm_bundle = FaceModel.load(bundle.main_path(bundle.find(role="face_model")[0]).read_bytes())
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tests/factories.py (a checkout)
    models = [("bundle face model", fm_bundle)]
    try:
        from factories import random_face_model_arrays

        models.append(("FLAME-sized random (5,041 vertices)", FaceModel(random_face_model_arrays(71, 71))))
    except ImportError:
        pass
    rng = np.random.default_rng(0)
    p = {"shape": rng.standard_normal((1, 300)).astype(np.float32) * 0.5,
         "expression": rng.standard_normal((1, 50)).astype(np.float32) * 0.5,
         "pose": np.array([[0.1, 0.3, 0.0]], np.float32), "jaw": np.array([[0.1, 0.0, 0.0]], np.float32),
         "eyelid": np.array([[0.2, 0.3]], np.float32)}
    for name, fm in models:
        ref = fm.decode(**p).vertices
        alt = _lbs_matmul(fm, **p)
        err = float(np.abs(ref - alt).max())
        add("decode", f"{name}: FaceModel.decode (vertices + 173 landmarks)", _time(lambda fm=fm: fm.decode(**p), runs),
            f"{fm.n_vertices} vertices")
        add("decode", f"{name}: vertices with matmul LBS (no landmarks)", _time(lambda fm=fm: _lbs_matmul(fm, **p), runs),
            f"max |diff| {err:.1e} m")
    params = {k: np.asarray(v, np.float32) for k, v in enc.infer({"image": x}).items()}
    for name, fm in models:
        for variant, st in _time_interleaved(_outputs_probe(fm, params, tr), runs).items():
            add("outputs", f"{name}: {variant}", st, f"{fm.n_vertices} vertices, 1 face")
    return rows


def decorate(rows: list[dict], run_id: str | None = None) -> list[dict]:
    """Add the run id, machine description and versions every harness row carries."""
    import datetime as _dt
    import uuid

    from smirk_edge.system import describe

    info = describe(probe=False)
    versions = info.pop("packages")
    rid = run_id or ("hotpath-" + _dt.datetime.now().strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6])
    for r in rows:
        r.update(run_id=rid, machine=info, versions=versions)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m smirk_edge.benchmarks.hotpath", description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("-o", "--output", default=None, help="write the rows as JSON here")
    a = ap.parse_args(argv)
    rows = decorate(run(a.bundle, a.runs, a.threads))
    if a.output:
        Path(a.output).write_text(json.dumps(rows, indent=1), encoding="utf-8")
    print("| probe | variant | p50 ms | mean ms | p90 ms | note |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['probe']} | {r['variant']} | {r['p50_ms']:.3f} | {r['mean_ms']:.3f} | {r['p90_ms']:.3f} | {r['note']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
