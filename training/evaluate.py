"""``smirk-edge evaluate``: how good is a trained encoder?

Measures (all optional, each a section of the JSON report):

* ``landmarks``: NME of the 105 MediaPipe-indexed points and of the 68 points on annotated photos
  (``smirk-edge annotate`` labels as ground truth), each image's mean point-to-point error in
  image pixels divided by the size ``sqrt(w * h)`` of its ground-truth landmark bounding box,
  averaged over images (also the median and the error in pixels of the 224 crop). The crop is
  SMIRK's test crop (scale 1.6 around the 478-landmark box). Baseline: the **mean face** (all
  parameters zero) placed in the same crop with the single camera that fits the evaluation set
  best (closed-form least squares): what a detector box alone gives, so the encoder's gain is
  ``baseline - model``.
* ``synthetic``: parameter and geometry recovery on rendered faces with known parameters
  (:mod:`.synthetic`): vertex error in mm of the unposed face (shape + expression + jaw + eyelids),
  landmark error in crop pixels, expression / jaw / eyelid MAE, head-rotation error in degrees.
* ``asymmetry``: left-vs-right recovery of one-sided expressions (the stand-in's slot pairs 8/9,
  10/11, 12/13, 14/15; docs/standin_face_model.md): a face with only the left (or right) slot
  active counts as correct when the predicted left coefficient exceeds the right one (or the
  reverse); likewise winks (one eyelid closed). Chance is 0.5.
* ``probe``: a linear probe (multinomial logistic regression, torch, L2) from the predicted
  expression, jaw and eyelid parameters to the emotion labels of ``faces/expressive.csv``,
  5-fold cross-validation with subjects kept apart; reports accuracy and the majority-class rate
  (accuracy of always answering the training folds' most frequent label).
* a contact sheet (PNG) of crops with the reconstructed mesh drawn over them.

Works from a checkpoint (torch) or, for ``landmarks`` and ``probe``, from a bundle through
:class:`smirk_edge.Reconstructor` (the deployed path, any engine).
"""

from __future__ import annotations

import copy

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from smirk_edge.crop import crop_from_box
from smirk_edge.face_model import MEDIAPIPE_105_INDICES
from smirk_edge.errors import InputError


# ------------------------------------------------------------------------------------------ metrics


def landmark_nme(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Per-image NME ``(N,)``: mean point distance / ``sqrt(w * h)`` of the ground-truth box.

    ``pred``, ``gt``: ``(N, L, 2)`` in the same pixel units.
    """
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    if pred.shape != gt.shape or pred.ndim != 3:
        raise InputError(f"landmarks must be (N, L, 2) of equal shape, got {pred.shape} and {gt.shape}")
    err = np.linalg.norm(pred[..., :2] - gt[..., :2], axis=-1).mean(-1)
    wh = gt[..., :2].max(1) - gt[..., :2].min(1)
    return err / np.sqrt(np.maximum(wh[:, 0] * wh[:, 1], 1e-9))


def fit_constant_camera(model_xy: np.ndarray, targets_ndc: np.ndarray) -> np.ndarray:
    """Best single SMIRK camera ``(s, tx, ty)`` placing ``model_xy (L, 2)`` (metres) on every
    ``targets_ndc (N, L, 2)``: least squares of ``x = s (X + tx)``, ``y = -s (Y + ty)``."""
    X = np.asarray(model_xy, np.float64)
    T = np.asarray(targets_ndc, np.float64)
    N, L = T.shape[:2]
    # unknowns a = s, b = s*tx, c = s*ty:  x = a X + b ; -y = a Y + c
    rows_x = np.stack([np.tile(X[:, 0], N), np.ones(N * L), np.zeros(N * L)], 1)
    rows_y = np.stack([np.tile(X[:, 1], N), np.zeros(N * L), np.ones(N * L)], 1)
    A = np.concatenate([rows_x, rows_y])
    rhs = np.concatenate([T[..., 0].reshape(-1), -T[..., 1].reshape(-1)])
    a, b, c = np.linalg.lstsq(A, rhs, rcond=None)[0]
    return np.array([a, b / a, c / a])


def rotation_angle_deg(r1: np.ndarray, r2: np.ndarray) -> np.ndarray:
    """Angle ``(N,)`` in degrees between rotations ``(N, 3, 3)``."""
    rel = np.einsum("nij,nkj->nik", r1, r2)
    cos = (np.trace(rel, axis1=1, axis2=2) - 1) / 2
    return np.degrees(np.arccos(np.clip(cos, -1, 1)))


def linear_probe(features: np.ndarray, labels: Sequence[str], groups: Sequence[str], folds: int = 5,
                 seed: int = 0, weight_decay: float = 1e-3, steps: int = 300,
                 unscored: Sequence[str] = ()) -> dict:
    """Cross-validated multinomial logistic regression with groups (subjects) kept apart.

    Args:
        features: ``(N, D)`` per-image features (e.g. expression parameters).
        labels: ``(N,)`` class names. groups: ``(N,)`` group ids; a group is never split across folds.
        unscored: groups whose test predictions are not counted (they still train the probe): the
            subjects whose labels trained the encoder, so that the score is on subjects it never saw
            labelled.
    Returns:
        ``accuracy``, ``majority_rate`` (always answering the training folds' majority label),
        ``n``, ``classes``, ``folds``, per-class counts, ``per_group`` (accuracy and n of each
        group), ``unscored`` (the groups left out of the score, with their accuracy in ``per_group``).
    """
    import torch

    X = np.asarray(features, np.float64)
    labels = np.asarray([str(v) for v in labels])
    groups = np.asarray([str(v) for v in groups])
    classes = sorted(set(labels.tolist()))
    y = np.array([classes.index(v) for v in labels])
    uniq = np.array(sorted(set(groups.tolist())))
    rng = np.random.default_rng(seed)
    fold_of_group = dict(zip(uniq[rng.permutation(len(uniq))], np.arange(len(uniq)) % folds))
    fold = np.array([fold_of_group[g] for g in groups])
    skip = np.isin(groups, np.asarray([str(g) for g in unscored]))
    per_group: dict[str, list[int]] = {}
    correct = majority = total = 0
    for k in range(folds):
        tr, te = fold != k, fold == k
        if te.sum() == 0 or tr.sum() == 0:
            continue
        mu, sd = X[tr].mean(0), X[tr].std(0) + 1e-6
        xtr = torch.tensor((X[tr] - mu) / sd, dtype=torch.float32)
        xte = torch.tensor((X[te] - mu) / sd, dtype=torch.float32)
        ytr = torch.tensor(y[tr])
        W = torch.zeros(X.shape[1], len(classes), requires_grad=True)
        b = torch.zeros(len(classes), requires_grad=True)
        opt = torch.optim.LBFGS([W, b], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(xtr @ W + b, ytr) + weight_decay * (W ** 2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            pred = (xte @ W + b).argmax(1).numpy()
        hit = pred == y[te]
        for g in np.unique(groups[te]):
            m = groups[te] == g
            acc = per_group.setdefault(str(g), [0, 0])
            acc[0] += int(hit[m].sum())
            acc[1] += int(m.sum())
        scored = ~skip[te]
        correct += int(hit[scored].sum())
        majority += int((y[te][scored] == np.bincount(y[tr], minlength=len(classes)).argmax()).sum())
        total += int(scored.sum())
    return {"accuracy": correct / max(total, 1), "majority_rate": majority / max(total, 1), "n": total,
            "classes": classes, "folds": folds,
            "counts": {c: int((labels[~skip] == c).sum()) for c in classes},
            "per_group": {g: {"accuracy": c / max(n, 1), "n": n} for g, (c, n) in sorted(per_group.items())},
            "unscored": sorted({str(g) for g in unscored} & set(groups.tolist()))}


# ------------------------------------------------------------------------------------------ predictors


@dataclass
class Prediction:
    """Per-face outputs in image pixels: ``landmarks105 (N, 105, 2)``, ``landmarks68 (N, 68, 2)``,
    and parameters ``expression (N, 50)``, ``jaw (N, 3)``, ``eyelid (N, 2)`` (others when known)."""

    landmarks105: np.ndarray
    landmarks68: np.ndarray
    params: dict


class TorchPredictor:
    """An encoder checkpoint + face model, run on SMIRK's test crop (scale 1.6 of the 478 box).

    Args:
        checkpoint: a checkpoint in the official layout (ours or ``SMIRK_em1.pt``).
        face_model_path: face-model ``.npz`` (default: the stand-in).
        device: torch device; ``batch``: crops per forward.
    """

    def __init__(self, checkpoint: str | os.PathLike | None = None, face_model_path: str | None = None,
                 device: str = "cpu", batch: int = 32, encoder=None, scale: float = 1.6):
        import torch

        from smirk_edge.face_model import standin_path

        from .checkpoint import load_encoder
        from .face_model import FaceModelLayer

        self.device = torch.device(device)
        self.meta: dict = {}
        if encoder is None and checkpoint is not None:
            from .checkpoint import read_checkpoint

            self.meta = dict(read_checkpoint(checkpoint).meta or {})
        self.encoder = (encoder if encoder is not None else load_encoder(checkpoint)).to(self.device).eval()
        self.face = FaceModelLayer.from_file(face_model_path or standin_path()).to(self.device)
        self.batch = batch
        self.scale = scale
        self.size = self.encoder.config.input_size

    def encode(self, crops: np.ndarray) -> dict[str, np.ndarray]:
        """``crops (N, 3, S, S)`` float32 RGB [0, 1] -> parameters and NDC landmarks (numpy)."""
        import torch

        from .face_model import project_ndc

        outs: list[dict] = []
        with torch.no_grad():
            for i in range(0, len(crops), self.batch):
                x = torch.from_numpy(np.ascontiguousarray(crops[i:i + self.batch])).to(self.device)
                p = self.encoder(x)
                geo = self.face(p["shape"], p["expression"], p["pose"], p["jaw"], p["eyelid"])
                o = {k: v.cpu().numpy() for k, v in p.items()}
                o["ndc105"] = project_ndc(geo["landmarks105"], p["cam"])[..., :2].cpu().numpy()
                o["ndc68"] = project_ndc(geo["landmarks68"], p["cam"])[..., :2].cpu().numpy()
                o["ndc_vertices"] = project_ndc(geo["vertices"], p["cam"]).cpu().numpy()
                outs.append(o)
        return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]} if outs else {}

    def crops(self, images: Sequence[np.ndarray], boxes: np.ndarray):
        from smirk_edge.crop import to_tensor

        ts = [crop_from_box(b, self.scale, self.size) for b in boxes]
        x = np.stack([to_tensor(t.warp(im))[0] for t, im in zip(ts, images)]) if ts else \
            np.zeros((0, 3, self.size, self.size), np.float32)
        return x, ts

    def predict(self, images: Sequence[np.ndarray], landmarks478: Sequence[np.ndarray]) -> Prediction:
        """Faces of BGR ``images`` whose MediaPipe landmarks ``(478, 2+)`` are known."""
        boxes = np.array([[l[:, 0].min(), l[:, 1].min(), l[:, 0].max(), l[:, 1].max()] for l in landmarks478])
        x, ts = self.crops(images, boxes)
        out = self.encode(x)
        half = self.size / 2.0
        l105 = np.stack([t.to_image((out["ndc105"][i] + 1) * half) for i, t in enumerate(ts)])
        l68 = np.stack([t.to_image((out["ndc68"][i] + 1) * half) for i, t in enumerate(ts)])
        out["crops"] = x
        out["transforms"] = ts
        return Prediction(l105, l68, out)


def _bundle_meta(rec) -> dict:
    """What an evaluation needs of a bundle's training record: ``emotion_subjects`` (written by
    ``smirk-edge export`` from the checkpoint's meta; absent in bundles that predate it)."""
    subjects = rec.bundle.metadata.get("emotion_subjects")
    return {"emotion_subjects": [str(s) for s in subjects]} if isinstance(subjects, list) else {}


class BundlePredictor:
    """The deployed path: :class:`smirk_edge.Reconstructor` on a bundle (any engine), given landmarks."""

    def __init__(self, bundle: str | os.PathLike, backend: str = "auto", scale: float = 1.6):
        from smirk_edge import Reconstructor

        self.rec = Reconstructor(bundle, backend=backend, crop_scale=scale, refine=False)
        self.meta = _bundle_meta(self.rec)

    def predict(self, images: Sequence[np.ndarray], landmarks478: Sequence[np.ndarray]) -> Prediction:
        l105, l68, params = [], [], {"expression": [], "jaw": [], "eyelid": []}
        for im, lm in zip(images, landmarks478):
            faces = self.rec.from_landmarks(im, [np.asarray(lm)[:, :2]])
            f = faces[0]
            l105.append(f.landmarks105)
            l68.append(f.landmarks68)
            for k in params:
                params[k].append(getattr(f.params, k))
        return Prediction(np.asarray(l105), np.asarray(l68), {k: np.asarray(v) for k, v in params.items()})


class PipelinePredictor:
    """What a user gets: ``Reconstructor(bundle)(image)`` with its defaults (detector, crop, refine).

    The face reported for an annotated one is the detection nearest the annotation's box centre;
    a photo where the detector finds none gives NaN landmarks (counted as ``missed`` by the
    evaluations, left out of their means)."""

    def __init__(self, bundle: str | os.PathLike | None = None, backend: str = "auto"):
        from smirk_edge import Reconstructor

        self.rec = Reconstructor(bundle, backend=backend)
        self.meta = _bundle_meta(self.rec)

    def predict(self, images: Sequence[np.ndarray], landmarks478: Sequence[np.ndarray]) -> Prediction:
        l105, l68, params = [], [], {"expression": [], "jaw": [], "eyelid": []}
        for im, lm in zip(images, landmarks478):
            faces = self.rec(im)
            c = np.asarray(lm)[:, :2].mean(0)
            if len(faces):
                f = min(faces, key=lambda f: float(np.linalg.norm(f.landmarks68.mean(0) - c)))
                l105.append(f.landmarks105)
                l68.append(f.landmarks68)
                for k in params:
                    params[k].append(getattr(f.params, k))
            else:
                l105.append(np.full((105, 2), np.nan))
                l68.append(np.full((68, 2), np.nan))
                for k, w in (("expression", 50), ("jaw", 3), ("eyelid", 2)):
                    params[k].append(np.full(w, np.nan))
        return Prediction(np.asarray(l105), np.asarray(l68), {k: np.asarray(v) for k, v in params.items()})


# ------------------------------------------------------------------------------------------ evaluations


def evaluate_landmarks(predictor, table, limit: int | None = None, chunk: int = 64, face_model_path=None) -> dict:
    """Landmark NME of ``predictor`` on a :class:`~smirk_edge.training.data.FaceTable`, plus the
    mean-face baseline (see the module docstring)."""
    from smirk_edge.face_model import FaceModel, standin_path

    n = len(table) if limit is None else min(limit, len(table))
    if n == 0:
        raise InputError("no annotated faces to evaluate")
    p105, p68 = [], []
    for i in range(0, n, chunk):
        idx = range(i, min(n, i + chunk))
        imgs = [table.read(j) for j in idx]
        pr = predictor.predict(imgs, [table.landmarks478[j] for j in idx])
        p105.append(pr.landmarks105)
        p68.append(pr.landmarks68)
    p105, p68 = np.concatenate(p105), np.concatenate(p68)
    g105, g68 = table.landmarks105[:n], table.landmarks68[:n]
    nme105, nme68 = landmark_nme(p105, g105), landmark_nme(p68, g68)
    # mean-face baseline in the same crops
    fm = FaceModel.load(face_model_path or standin_path())
    zero = fm.decode(shape=np.zeros((1, 300), np.float32))
    m105, m68 = zero.landmarks105[0, :, :2], zero.landmarks68[0, :, :2]
    lm = table.landmarks478[:n]
    boxes = np.stack([lm[..., 0].min(1), lm[..., 1].min(1), lm[..., 0].max(1), lm[..., 1].max(1)], 1)
    ts = [crop_from_box(b, 1.6, 224) for b in boxes]
    tgt = np.stack([t.to_crop(g) for t, g in zip(ts, g105)]) / 112.0 - 1
    tgt68 = np.stack([t.to_crop(g) for t, g in zip(ts, g68)]) / 112.0 - 1
    cam = fit_constant_camera(np.concatenate([m105, m68]), np.concatenate([tgt, tgt68], 1))
    place = lambda m: np.stack([cam[0] * (m[:, 0] + cam[1]), -cam[0] * (m[:, 1] + cam[2])], 1)  # noqa: E731
    b105 = np.stack([t.to_image((place(m105) + 1) * 112) for t in ts])
    b68 = np.stack([t.to_image((place(m68) + 1) * 112) for t in ts])
    crop_px = np.array([t.scale for t in ts])  # crop pixels per image pixel
    err105 = np.linalg.norm(p105 - g105, axis=-1).mean(-1) * crop_px
    by_source: dict = {}
    names = [str(x) for x in table.names[:n]]
    for src in sorted({x.split("/", 1)[0] for x in names if "/" in x}):
        m = np.array([x.startswith(src + "/") for x in names])
        by_source[src] = {"n": int(m.sum()), "nme105": float(np.nanmean(nme105[m])), "nme68": float(np.nanmean(nme68[m]))}
    return {
        "by_source": by_source,
        "_per_image_nme105": nme105,
        "n": int(n), "missed": int(np.isnan(nme105).sum()),  # faces the predictor did not find (full pipeline)
        "nme105": float(np.nanmean(nme105)), "nme105_median": float(np.nanmedian(nme105)),
        "nme68": float(np.nanmean(nme68)), "nme68_median": float(np.nanmedian(nme68)),
        "err105_crop_px": float(np.nanmean(err105)),
        "baseline_mean_face": {"nme105": float(landmark_nme(b105, g105).mean()),
                               "nme68": float(landmark_nme(b68, g68).mean()), "camera": cam.tolist()},
        "normalisation": "mean point error / sqrt(w*h) of the ground-truth landmark box, averaged over images",
    }


YAW_BINS = ((0.0, 30.0), (30.0, 60.0), (60.0, 90.0))


def fit_yaw_to_68(gt68: np.ndarray, face_model=None) -> np.ndarray:
    """Head yaw ``(N,)`` in degrees fitted to annotated 68-point landmarks ``(N, 68, 2)`` (image
    pixels, y down): a scaled-orthographic fit of the face model's neutral 51 inner landmarks (the
    68 without the pose-dependent contour) to the 51 annotated ones, then the yaw of the rotation
    with the annotations' formula (:func:`~smirk_edge.training.annotate.yaw_degrees`). It depends
    on neither the model under test nor MediaPipe, as the pose of a benchmark's ground truth.
    """
    from smirk_edge.face_model import FaceModel, standin_path

    from .annotate import yaw_degrees

    fm = face_model or FaceModel.load(standin_path())
    X = fm.decode(shape=np.zeros((1, 300), np.float32)).landmarks68[0, 17:].astype(np.float64)  # (51, 3) model frame
    Xc = X - X.mean(0)
    out = np.zeros(len(gt68))
    for i, g in enumerate(np.asarray(gt68, np.float64)):
        uv = g[17:, :2] * np.array([1.0, -1.0])  # image y down -> model y up
        uv = uv - uv.mean(0)
        M = np.linalg.lstsq(Xc, uv, rcond=None)[0].T  # (2, 3): uv ~ M X
        u, _, vt = np.linalg.svd(M, full_matrices=False)
        r12 = u @ vt  # nearest rows with orthonormal directions
        R = np.stack([r12[0], r12[1], np.cross(r12[0], r12[1])])
        out[i] = yaw_degrees(R[None])[0]
    return out


def evaluate_landmarks68(predictor, table, chunk: int = 64, face_model_path=None) -> dict:
    """68-point NME against human annotations (a table with ``real68``, e.g. 300-W AFW), overall,
    on the 51 inner points, and per bin of absolute yaw (0-30, 30-60, 60-90 degrees, from
    :func:`fit_yaw_to_68` on the annotations), as 3DDFA reports AFLW2000-3D. Normalisation:
    ``sqrt(w * h)`` of the annotated 68-point box (:func:`landmark_nme`)."""
    from smirk_edge.face_model import FaceModel, standin_path

    if table.real68 is None or not np.asarray(table.real68).all():
        raise InputError("evaluate_landmarks68 needs faces whose 68 points are all annotated")
    n = len(table)
    if n == 0:
        raise InputError("no annotated faces to evaluate")
    p68 = []
    for i in range(0, n, chunk):
        idx = range(i, min(n, i + chunk))
        pr = predictor.predict([table.read(j) for j in idx], [table.landmarks478[j] for j in idx])
        p68.append(pr.landmarks68)
    p68 = np.concatenate(p68)
    found = np.isfinite(p68).all((1, 2))
    missed = int((~found).sum())
    p68, table = p68[found], table.select(found)
    n = len(table)
    if n == 0:
        raise InputError("the predictor found none of the annotated faces")
    g68 = table.landmarks68
    nme = landmark_nme(p68, g68)
    wh = g68.max(1) - g68.min(1)
    inner = np.linalg.norm(p68[:, 17:] - g68[:, 17:], axis=-1).mean(-1) / np.sqrt(np.maximum(wh[:, 0] * wh[:, 1], 1e-9))
    yaw = fit_yaw_to_68(g68, FaceModel.load(face_model_path or standin_path()))
    bins = {}
    for lo, hi in YAW_BINS:
        m = (np.abs(yaw) >= lo) & (np.abs(yaw) < hi if hi < 90 else np.abs(yaw) <= 180)
        bins[f"{int(lo)}-{int(hi)}"] = {"n": int(m.sum()), "nme68": float(nme[m].mean()) if m.any() else None}
    worst = np.argsort(-nme)[:8]
    return {"n": int(n), "missed": missed, "nme68": float(nme.mean()), "nme68_median": float(np.median(nme)),
            "nme68_inner51": float(inner.mean()), "by_yaw": bins,
            "worst": [{"name": str(table.names[k]), "nme68": float(nme[k]), "yaw": float(yaw[k])} for k in worst],
            "yaw": "fitted to the annotated 51 inner points (scaled orthographic, the stand-in's neutral face)",
            "normalisation": "mean point error / sqrt(w*h) of the annotated 68-point box, averaged over faces"}


def evaluate_synthetic(predictor: TorchPredictor, n: int = 256, seed: int = 0, one_sided_n: int = 256) -> dict:
    """Parameter / geometry recovery and left-right accuracy on synthetic faces (torch predictor only)."""
    import torch

    from smirk_edge.face_model import rodrigues

    from .synthetic import N_SEMANTIC, STANDIN_LR_PAIRS, SyntheticFaces

    S = predictor.size
    sf = SyntheticFaces(None, S, "cpu")
    if predictor.face.n_vertices == sf.layer.n_vertices:  # render with the predictor's own face model,
        sf.layer = copy.deepcopy(predictor.face).to("cpu")  # a copy: .to() would move the predictor's

    g = torch.Generator().manual_seed(seed)
    res: dict = {}
    b = sf.batch(n, g)
    out = predictor.encode(b["image"].numpy())
    gt = {k[3:]: v.numpy() for k, v in b.items() if k.startswith("gt_")}
    used = sf.n_expression_used
    res["expression_mae"] = float(np.abs(out["expression"][:, :used] - gt["expression"][:, :used]).mean())
    # the named slots (the stand-in's 16 semantic ones, or FLAME's first 16 components) move the face
    # by pixels; later data components by a fraction of one, so they are nearly invisible in a render
    k = min(N_SEMANTIC, used)
    res["expression_mae_semantic"] = float(np.abs(out["expression"][:, :k] - gt["expression"][:, :k]).mean())
    res["expression_mae_zero_baseline"] = float(np.abs(gt["expression"][:, :used]).mean())
    res["jaw_mae"] = float(np.abs(out["jaw"] - gt["jaw"]).mean())
    res["eyelid_mae"] = float(np.abs(out["eyelid"] - gt["eyelid"]).mean())
    res["pose_deg"] = float(rotation_angle_deg(rodrigues(out["pose"]), rodrigues(gt["pose"])).mean())
    res["cam_scale_rel"] = float(np.abs(out["cam"][:, 0] / gt["cam"][:, 0] - 1).mean())
    lmk = (out["ndc105"] - b["landmarks105"].numpy()) * (S / 2)
    res["landmark105_crop_px"] = float(np.linalg.norm(lmk, axis=-1).mean() * 224 / S)
    with torch.no_grad():
        z = torch.zeros
        f = predictor.face.to("cpu")
        pv = f(torch.from_numpy(out["shape"]), torch.from_numpy(out["expression"]), z(n, 3),
               torch.from_numpy(out["jaw"]), torch.from_numpy(out["eyelid"]))["vertices"]
        gv = f(torch.from_numpy(gt["shape"]), torch.from_numpy(gt["expression"]), z(n, 3),
               torch.from_numpy(gt["jaw"]), torch.from_numpy(gt["eyelid"]))["vertices"]
    res["vertex_mm_unposed"] = float((pv - gv).norm(dim=-1).mean() * 1000)
    res["n"] = n
    # asymmetry: one-sided expressions and winks
    b = sf.batch(one_sided_n, g, one_sided=True)
    out = predictor.encode(b["image"].numpy())
    pair, side = b["gt_pair"].numpy(), b["gt_side"].numpy()
    pairs = np.array(STANDIN_LR_PAIRS)
    left = out["expression"][np.arange(len(pair)), pairs[pair, 0]]
    right = out["expression"][np.arange(len(pair)), pairs[pair, 1]]
    ok = np.where(side == 0, left > right, right > left)
    per_pair = {f"{a}/{c}": float(ok[pair == k].mean()) if (pair == k).any() else None
                for k, (a, c) in enumerate(STANDIN_LR_PAIRS)}
    params = sf.sample_params(one_sided_n, g)
    wink = torch.randint(2, (one_sided_n,), generator=g)
    params["eyelid"] = torch.stack([(wink == 0).float(), (wink == 1).float()], 1)
    img = sf.render(params, g)["image"]
    lids = predictor.encode(img.numpy())["eyelid"]
    wink_ok = np.where(wink.numpy() == 0, lids[:, 0] > lids[:, 1], lids[:, 1] > lids[:, 0])
    res["asymmetry"] = {"expression_lr_accuracy": float(ok.mean()), "per_pair": per_pair,
                        "wink_lr_accuracy": float(wink_ok.mean()),
                        "wink_ties": float((lids[:, 0] == lids[:, 1]).mean()),  # e.g. both eyelids clamped at 0
                        "chance": 0.5, "n": int(one_sided_n)}
    return res


def probe_expressive(predictor, table, csv_path: str | os.PathLike, limit: int | None = None, chunk: int = 64,
                     unscored: Sequence[str] = ()) -> dict:
    """Linear probe of predicted expression parameters against ``expressive.csv`` emotions.

    ``unscored``: subjects whose labels trained the model (checkpoint meta ``emotion_subjects``): the
    probe still learns from them but is scored on the other subjects only."""
    import csv

    rows = {}
    with open(csv_path, newline="") as f:
        for r in csv.DictReader(f):
            rows[r["image"]] = (r["emotion"].strip().lower(), r["subject"])
    idx = [i for i, n in enumerate(table.names) if os.path.basename(str(n)) in rows]
    if limit is not None:
        idx = idx[:limit]
    if len(idx) < 20:
        raise InputError(f"only {len(idx)} annotated images are listed in {csv_path}: too few for a probe")
    feats = []
    for i in range(0, len(idx), chunk):
        part = idx[i:i + chunk]
        pr = predictor.predict([table.read(j) for j in part], [table.landmarks478[j] for j in part])
        feats.append(np.concatenate([pr.params["expression"], pr.params["jaw"], pr.params["eyelid"]], 1))
    X = np.concatenate(feats)
    labels = np.array([rows[os.path.basename(str(table.names[j]))][0] for j in idx])
    groups = np.array([rows[os.path.basename(str(table.names[j]))][1] for j in idx])
    ok = np.isfinite(X).all(1)  # a full-pipeline predictor may miss a face
    out = linear_probe(X[ok], labels[ok], groups[ok], unscored=unscored)
    if out["unscored"]:  # the usual score too, over every subject (it counts labels the model trained on)
        out["accuracy_all_subjects"] = linear_probe(X[ok], labels[ok], groups[ok])["accuracy"]
    out["missed"] = int((~ok).sum())
    return out


def contact_sheet(predictor: TorchPredictor, images: Sequence[np.ndarray], landmarks478: Sequence[np.ndarray],
                  path: str | os.PathLike, columns: int = 4, tile: int = 160, show_truth: bool = False) -> Path:
    """PNG grid: each face's crop and the crop with the reconstructed mesh (grey shading) and the
    105 landmarks drawn over it (green); ``show_truth`` adds the annotated 105 points (red)."""
    import cv2
    import torch

    from .renderer import MeshRenderer

    pr = predictor.predict(images, landmarks478)
    crops = pr.params["crops"]
    S = predictor.size
    rend = MeshRenderer.from_face_model(predictor.face.to("cpu"), image_size=S)
    with torch.no_grad():
        ro = rend(torch.from_numpy(pr.params["ndc_vertices"]))
    tiles = []
    for i in range(len(crops)):
        rgb = (crops[i].transpose(1, 2, 0) * 255).astype(np.uint8)
        bgr = np.ascontiguousarray(rgb[..., ::-1])
        over = bgr.copy().astype(np.float32)
        m = ro.mask[i, 0].numpy()[..., None]
        shade = ro.image[i].numpy().transpose(1, 2, 0)[..., ::-1] * 255
        over = (over * (1 - 0.7 * m) + shade * 0.7 * m).astype(np.uint8)
        if show_truth:
            t = pr.params["transforms"][i]
            for x, y in t.to_crop(np.asarray(landmarks478[i])[MEDIAPIPE_105_INDICES, :2]):
                cv2.circle(over, (int(round(x)), int(round(y))), 1, (0, 0, 255), -1)
        for x, y in (pr.params["ndc105"][i] + 1) * (S / 2):
            cv2.circle(over, (int(round(x)), int(round(y))), 1, (0, 220, 0), -1)
        pair = np.concatenate([cv2.resize(bgr, (tile, tile)), cv2.resize(over, (tile, tile))], 1)
        tiles.append(pair)
    rows_n = math.ceil(len(tiles) / columns)
    blank = np.zeros_like(tiles[0])
    grid = [np.concatenate(tiles[r * columns:(r + 1) * columns] + [blank] * max(0, (r + 1) * columns - len(tiles)), 1)
            for r in range(rows_n)]
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    from ..image import save_image

    save_image(out, np.concatenate(grid, 0))
    return out


def evaluate(checkpoint: str | None = None, bundle: str | None = None, annotations: str | None = None,
             shards: str | None = None, image_root: str | None = None, split: str | None = None, subset: str = "val",
             expressive_csv: str | None = None, synthetic: int = 0, limit: int | None = None,
             out_dir: str | os.PathLike | None = None, device: str = "cpu", face_model: str | None = None,
             sheet: int = 16, progress: Callable[[str], None] | None = None,
             landmarks68: Sequence[str] = (), landmarks68_split: str | None = None,
             pipeline: str = "landmarks", probe_unscored: Sequence[str] = ()) -> dict:
    """Run every evaluation the inputs allow and return (and write, with ``out_dir``) the report.

    ``probe_unscored``: subjects of the expression probe not to score (their labels trained the
    model); a checkpoint's own ``emotion_subjects`` meta is added to them."""
    from .data import read_split, table_from_annotations, table_from_shards

    if (checkpoint is None) == (bundle is None):
        raise InputError("give exactly one of a checkpoint or a bundle")
    say = progress or (lambda s: None)
    if pipeline not in ("landmarks", "full"):
        raise InputError(f"pipeline must be 'landmarks' or 'full', got {pipeline!r}")
    if pipeline == "full" and not bundle:
        raise InputError("--pipeline full runs a bundle through the whole SDK path: give --bundle")
    if checkpoint:
        pred = TorchPredictor(checkpoint, face_model, device)
    else:
        pred = PipelinePredictor(bundle) if pipeline == "full" else BundlePredictor(bundle)
    report: dict = {"checkpoint": checkpoint, "bundle": bundle,
                    "crop": "SMIRK's test crop (1.6) from the MediaPipe landmarks" if pipeline == "landmarks"
                    else "the SDK's defaults: detector, crop, refine (Reconstructor(bundle)(image))"}
    out = Path(out_dir) if out_dir else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    if annotations and shards:
        raise InputError("give annotations or shards, not both")
    if annotations or shards:
        table = table_from_annotations(annotations, image_root) if annotations else table_from_shards(shards)
        full_table = table  # the probe uses every labelled face, with subjects kept apart by its folds
        if split:
            keep = read_split(split, subset)
            table = table.select(np.array([n in keep for n in table.names], bool))
        report["annotations"] = {"folder": str(annotations or shards), "faces": len(table), "split": split, "subset": subset}
        say(f"landmarks on {min(len(table), limit or len(table))} faces")
        report["landmarks"] = evaluate_landmarks(pred, table, limit, face_model_path=face_model)
        per_image = report["landmarks"].pop("_per_image_nme105")
        if expressive_csv:
            say("linear probe on expressive faces")
            unscored = set(probe_unscored) | set(getattr(pred, "meta", {}).get("emotion_subjects") or [])
            report["probe"] = probe_expressive(pred, full_table, expressive_csv, unscored=sorted(unscored))
        if out and sheet and isinstance(pred, TorchPredictor):
            k = min(sheet, len(table))
            pick = np.linspace(0, len(table) - 1, k).round().astype(int)
            report["contact_sheet"] = str(contact_sheet(pred, [table.read(int(i)) for i in pick],
                                                        [table.landmarks478[int(i)] for i in pick],
                                                        out / "contact_sheet.png"))
            worst = np.argsort(-per_image)[:min(8, len(per_image))]
            report["worst_cases"] = {"sheet": str(contact_sheet(
                pred, [table.read(int(i)) for i in worst], [table.landmarks478[int(i)] for i in worst],
                out / "worst_cases.png", show_truth=True)),
                "faces": [{"name": str(table.names[int(i)]), "nme105": float(per_image[int(i)])} for i in worst]}
    if landmarks68:
        if not annotations:
            raise InputError("--landmarks68 needs --annotations (the MediaPipe boxes of those photos)")
        from .annotate import read_index
        from .data import annotated_68_subset

        base = table_from_annotations(annotations, image_root)
        root = image_root or read_index(annotations)["root"]
        report["landmarks68"] = {}
        for spec in landmarks68:
            label, t68 = annotated_68_subset(base, spec, root, landmarks68_split)
            say(f"68-point NME on {len(t68)} annotated faces of {spec}")
            report["landmarks68"][label] = evaluate_landmarks68(pred, t68, face_model_path=face_model)
    if synthetic and isinstance(pred, TorchPredictor):
        say(f"synthetic recovery on {synthetic} faces")
        report["synthetic"] = evaluate_synthetic(pred, synthetic, one_sided_n=synthetic)
    if out:
        (out / "eval.json").write_text(json.dumps(report, indent=1))
    return report
