"""The reference path: what a user of the official SMIRK code runs today, measured in our harness.

Written from SMIRK_FACTS.md (no code of the official release is used):

* **crop source**: MediaPipe's face mesh (478 landmarks) -> their bounding box. Measured in a
  side process with a MediaPipe 0.10.21 interpreter when one is configured
  (``SMIRK_EDGE_MEDIAPIPE_PYTHON``, see :mod:`.mediapipe_side`); otherwise our BlazeFace detector
  stands in, in this process (the rows say which).
* **crop**: the whole frame converted BGR -> RGB and to float64 in [0, 1] (skimage's
  ``img_as_float``), SMIRK's square (scale 1.4), and a float64 bilinear warp of the 224 x 224
  output with zero borders (:func:`warp_float64`: our own numpy implementation of what
  ``skimage.transform.warp(order=1)`` computes), then back to uint8 and to a float tensor / 255.
* **encode**: the full encoder in torch eager fp32 **with autograd on** (no ``no_grad`` /
  ``inference_mode``), as the upstream demo calls it.
* **decode**: the FLAME-format decoder as a torch module
  (:class:`smirk_edge.runtimes.torch_face_model.FaceModelLayer`), autograd on.
* **project**: the orthographic camera and the inverse crop transform in torch, landmarks and
  vertices back to numpy.

The encoder weights are random (timing does not depend on them;
:func:`smirk_edge.runtimes.torch_encoder.random_encoder`, seed 0); the architecture follows the
bundle's ``encoder_variant`` (``full`` unless the bundle says otherwise). The torch model is the
torch backend's (``smirk_edge.runtimes``), never training code.
"""

from __future__ import annotations

import time

import numpy as np

from .stats import stage_table

REFERENCE_STAGES = ("detect", "crop", "encode", "decode", "project", "total")


def warp_float64(image: np.ndarray, inverse: np.ndarray, size: int = 224, cval: float = 0.0) -> np.ndarray:
    """Bilinear warp in float64, as skimage's ``warp(image, tform.inverse, output_shape, order=1)``.

    ``image``: ``(H, W, C)`` uint8 or float; it is converted to float64 in [0, 1] as a whole (the
    cost the reference pays on every frame). ``inverse``: 2x3 affine mapping output (crop) pixels to
    input (image) pixels. Pixels sampled outside the image take ``cval``. Returns ``(size, size, C)``
    float64.
    """
    img = image.astype(np.float64)
    if image.dtype == np.uint8:
        img /= 255.0
    h, w = img.shape[:2]
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    sx = inverse[0, 0] * xs + inverse[0, 1] * ys + inverse[0, 2]
    sy = inverse[1, 0] * xs + inverse[1, 1] * ys + inverse[1, 2]
    x0 = np.floor(sx).astype(np.int64)
    y0 = np.floor(sy).astype(np.int64)
    fx = (sx - x0)[..., None]
    fy = (sy - y0)[..., None]

    def tap(yy, xx):
        ok = (xx >= 0) & (xx < w) & (yy >= 0) & (yy < h)
        v = img[np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)]
        return np.where(ok[..., None], v, cval)

    top = tap(y0, x0) * (1 - fx) + tap(y0, x0 + 1) * fx
    bottom = tap(y0 + 1, x0) * (1 - fx) + tap(y0 + 1, x0 + 1) * fx
    return top * (1 - fy) + bottom * fy


def _variant(bundle) -> str:
    from .runs import model_info

    v = str(model_info(bundle).get("encoder_variant") or "full")
    return v if v in ("full", "tiny") else "full"


def run_reference(cfg: dict) -> list[dict]:
    """Measure the reference path on the frames (one configuration; rows per stage)."""
    import cv2
    import torch

    from smirk_edge.bundle import Bundle
    from smirk_edge.crop import crop_from_box
    from smirk_edge.runtimes.torch_encoder import random_encoder
    from smirk_edge.runtimes.torch_face_model import FaceModelLayer, project_ndc

    from .runs import PlacementFallback, base_row, load_inputs, peak_rss_mb, row, single

    threads = cfg.get("threads")
    if threads:
        torch.set_num_threads(int(threads))
        cv2.setNumThreads(int(threads))
    frames, boxes, _ = load_inputs(cfg["inputs"])
    bundle = Bundle(cfg["bundle"])
    t0 = time.perf_counter()
    enc = random_encoder(_variant(bundle), seed=0)
    layer = FaceModelLayer.from_file(bundle.main_path(bundle.find(role="face_model")[0]))
    mp = cfg.get("mediapipe")  # {"landmarks_box": [[x0,y0,x1,y1] per frame], "samples_ms": [...], ...}
    detector = None
    if mp is None:
        from smirk_edge.detector import FaceDetector, model_path
        from smirk_edge.runtimes import registry

        runners = {v: registry.make_runner("onnxruntime", model_path(v), threads=threads).activate()
                   for v in ("short", "full")}
        detector = PlacementFallback(FaceDetector(runners))
    open_ms = (time.perf_counter() - t0) * 1e3
    base = base_row(cfg)
    base.update(engine="torch-eager (autograd on)", precision="fp32", artifact="SmirkEncoder (torch module)",
                device="cpu", crop_source=("mediapipe face mesh (side process)" if mp else
                                           "BlazeFace (ours, stand-in for MediaPipe)"))
    n = len(frames)
    runs, warmup = int(cfg["runs"]), int(cfg["warmup"])
    per_run = []
    for i in range(warmup + runs):
        k = i % n
        fr = frames[k]
        t: dict[str, float] = {}
        ts = time.perf_counter()
        if mp is None:
            detector.box = boxes[k]
            det = detector.detect(fr)
            box = det.boxes[0].astype(np.float64) if len(det) else boxes[k]
        else:
            box = np.asarray(mp["landmarks_box"][k % len(mp["landmarks_box"])], np.float64)
        t1 = time.perf_counter()
        rgb = cv2.cvtColor(fr, cv2.COLOR_BGR2RGB)
        tr = crop_from_box(box, 1.4)
        crop = warp_float64(rgb, tr.inverse_matrix, 224)
        crop_u8 = (crop * 255.0).astype(np.uint8)
        x = torch.from_numpy(crop_u8).permute(2, 0, 1)[None].float() / 255.0
        t2 = time.perf_counter()
        out = enc(x)  # autograd on, as the upstream demo runs it
        t3 = time.perf_counter()
        geo = layer(out["shape"], out["expression"], out["pose"], out["jaw"], out["eyelid"])
        t4 = time.perf_counter()
        ndc = project_ndc(geo["landmarks68"], out["cam"])
        px = (ndc[..., :2] + 1.0) * 112.0
        inv = torch.from_numpy(tr.inverse_matrix).float()
        lm_img = (px @ inv[:, :2].T + inv[:, 2]).detach().cpu().numpy()
        v_ndc = project_ndc(geo["vertices"], out["cam"])
        v_img = ((v_ndc[..., :2] + 1.0) * 112.0 @ inv[:, :2].T + inv[:, 2]).detach().cpu().numpy()
        del lm_img, v_img
        t5 = time.perf_counter()
        t.update(crop=(t2 - t1) * 1e3, encode=(t3 - t2) * 1e3, decode=(t4 - t3) * 1e3, project=(t5 - t4) * 1e3,
                 total=(t5 - ts) * 1e3)
        if mp is None:
            t["detect"] = (t1 - ts) * 1e3
        if i >= warmup:
            per_run.append(t)
    if mp is not None:  # the crop source ran in the MediaPipe process: join its samples run by run
        s = list(mp["samples_ms"])
        for j, r in enumerate(per_run):
            r["detect"] = float(s[j % len(s)])
            r["total"] += r["detect"]
    rss = peak_rss_mb()
    base["peak_rss_mb"] = rss
    rows = [row(base, s, st, runs, warmup) for s, st in stage_table(per_run, REFERENCE_STAGES).items()]
    if mp is not None:
        for r in rows:
            if r["stage"] in ("detect", "total"):
                r["note"] = ("detect = MediaPipe face mesh measured in its own process in this run; total = in-process "
                             "stages + those samples, run by run")
    rows.append(row(base, "open", single(open_ms), 1, 0, note="build the torch encoder and FLAME layer"))
    return rows
