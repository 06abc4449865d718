"""Re-fit the stand-in's 68-point embedding to human 300-W annotations through predicted meshes.

The stand-in's 68 points were first placed from dlib detections on MediaPipe meshes
(:func:`~smirk_edge.training.standin.build.fit_68`): a proxy of the iBUG convention. Human
annotators put the jaw contour of a turned face on its visible outline, and some inner points
(brow ends, nose wings) a few millimetres from where dlib did. Given a trained encoder's meshes of
annotated photos (HELEN train: never AFW, the held-out test set), this finds for every point the
surface location whose projection is nearest, on average, to the human points:

* the 51 static points: one triangle and barycentric each, searched among the triangles within
  ``radius`` of the current point (a grid of barycentrics per triangle);
* the 17 contour points, for every yaw row of the dynamic table: the same search over the faces
  whose fitted yaw is within ``window`` degrees of the row's (rows with fewer than ``min_faces``
  move their current entry as the nearest fitted row's moved), then smoothed along the rows (the 3D points averaged over
  ``smooth`` rows each side and put back on the surface) so that a turning head moves its contour
  points steadily instead of jumping between rows.

Projection is SMIRK's orthographic camera, so a barycentric point projects to the same
barycentric combination of the projected vertices: the search needs only the predicted
vertices in image pixels. The error is the 68-point NME's: distance / sqrt(w * h) of the
annotated box.

Command line (writes a face-model ``.npz`` and prints a JSON report)::

    python -m smirk_edge.training.standin.refit68 --checkpoint CKPT --annotations ANN \\
        --landmarks68 ../shared/data/landmarks68/helen_train:train \\
        --landmarks68-split training/splits/landmarks68.json -o standin_v2.npz
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from smirk_edge.face_model import format as fmt

from . import mesh as M

N_CONTOUR = 17


def row_yaw(rows: np.ndarray) -> np.ndarray:
    """Yaw in degrees of dynamic-table rows (0..39 -> 0..39, 40..78 -> -1..-39)."""
    rows = np.asarray(rows)
    return np.where(rows < 40, rows, -(rows - 39))


def barycentric_grid(steps: int) -> np.ndarray:
    """``(K, 3)`` barycentric coordinates on a regular grid over a triangle (corners included)."""
    g = np.linspace(0.0, 1.0, steps)
    return np.array([(a, b, 1.0 - a - b) for a in g for b in g if a + b <= 1.0 + 1e-9])


def box_norm(gt68: np.ndarray) -> np.ndarray:
    """``(N,)`` sqrt(w * h) of the annotated 68-point boxes (the NME's normalisation)."""
    wh = gt68.max(1) - gt68.min(1)
    return np.sqrt(np.maximum(wh[:, 0] * wh[:, 1], 1e-9))


def landmarks68_px(verts_px: np.ndarray, rows: np.ndarray, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """``(N, 68, 2)`` the face model's 68 points from projected vertices ``(N, V, 2)`` and each
    face's dynamic-table row ``(N,)`` (orthographic: barycentrics carry over to the projection)."""
    F = np.asarray(arrays["faces"], np.int64)
    df = np.asarray(arrays["dynamic_lmk_faces_idx"], np.int64)[rows]
    db = np.asarray(arrays["dynamic_lmk_bary_coords"], np.float64)[rows]
    n = np.arange(len(verts_px))[:, None, None]
    contour = np.einsum("nkcd,nkc->nkd", verts_px[n, F[df]], db)
    sf = np.asarray(arrays["lmk_faces_idx"], np.int64)
    sb = np.asarray(arrays["lmk_bary_coords"], np.float64)
    static = np.einsum("nkcd,kc->nkd", verts_px[:, F[sf]], sb)
    return np.concatenate([contour, static], 1)


def nme68(pred: np.ndarray, gt: np.ndarray) -> float:
    return float((np.linalg.norm(pred - gt, axis=-1).mean(-1) / box_norm(gt)).mean())


def _best_point(verts_px: np.ndarray, target: np.ndarray, scale: np.ndarray, tris: np.ndarray, F: np.ndarray,
                grid: np.ndarray) -> tuple[int, np.ndarray, float]:
    """The (triangle, barycentric) among ``tris`` x ``grid`` whose projection is nearest ``target
    (N, 2)`` in mean distance / ``scale``."""
    best: tuple[int, np.ndarray, float] = (int(tris[0]), grid[0], np.inf)
    for t in tris:
        P = np.einsum("ncd,kc->nkd", verts_px[:, F[t]], grid)  # (N, K, 2)
        e = (np.linalg.norm(P - target[:, None], axis=-1) / scale[:, None]).mean(0)
        j = int(e.argmin())
        if e[j] < best[2]:
            best = (int(t), grid[j].copy(), float(e[j]))
    return best


@dataclass
class RefitOptions:
    radius: float = 0.012      # metres on the template: how far a point may move
    window: int = 5            # degrees of yaw around a contour row whose faces fit it
    min_faces: int = 20        # fewer faces than this: the row keeps its entry
    smooth: int = 4            # rows each side averaged along the yaw axis (0: none)
    grid: int = 9              # barycentric grid steps per triangle edge


def refit_embedding(arrays: Mapping[str, np.ndarray], verts_px: np.ndarray, rows: np.ndarray, gt68: np.ndarray,
                    options: RefitOptions | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """New 68-point embedding arrays fitted to annotated faces.

    Args:
        arrays: face-model arrays (the current embedding is the start and the fallback).
        verts_px: ``(N, V, 2)`` predicted vertices projected to image pixels.
        rows: ``(N,)`` dynamic-table row of each face (:func:`smirk_edge.face_model.model.yaw_bin`).
        gt68: ``(N, 68, 2)`` human annotations, image pixels.
    Returns:
        ``(arrays, report)``: a copy of ``arrays`` with ``lmk_*``, ``dynamic_lmk_*`` and
        ``full_lmk_*`` replaced, and the fit set's NME before/after with what moved.
    """
    o = options or RefitOptions()
    verts_px = np.asarray(verts_px, np.float64)
    gt68 = np.asarray(gt68, np.float64)
    rows = np.asarray(rows, np.int64)
    if verts_px.ndim != 3 or gt68.shape != (len(verts_px), 68, 2) or rows.shape != (len(verts_px),):
        raise ValueError(f"need verts (N, V, 2), rows (N,), gt68 (N, 68, 2); got {verts_px.shape}, {rows.shape}, "
                         f"{gt68.shape}")
    T = np.asarray(arrays["v_template"], np.float64)
    F = np.asarray(arrays["faces"], np.int64)
    grid = barycentric_grid(o.grid)
    centroid = T[F].mean(1)
    scale = box_norm(gt68)
    out = {k: np.array(v) for k, v in arrays.items()}

    def near(p: np.ndarray, tri: int) -> np.ndarray:
        return np.union1d(np.where(np.linalg.norm(centroid - p, axis=1) < o.radius)[0], [tri])

    sf = np.asarray(arrays["lmk_faces_idx"], np.int64).copy()
    sb = np.asarray(arrays["lmk_bary_coords"], np.float64).copy()
    moved_static = []
    for k in range(len(sf)):
        p0 = sb[k] @ T[F[sf[k]]]
        t, b, _ = _best_point(verts_px, gt68[:, N_CONTOUR + k], scale, near(p0, int(sf[k])), F, grid)
        sf[k], sb[k] = t, b
        moved_static.append(float(np.linalg.norm(b @ T[F[t]] - p0)))

    df = np.asarray(arrays["dynamic_lmk_faces_idx"], np.int64).copy()
    db = np.asarray(arrays["dynamic_lmk_bary_coords"], np.float64).copy()
    yaw_faces = row_yaw(rows)
    fitted_rows = []
    for r in range(len(df)):
        y = int(row_yaw(np.array([r]))[0])
        m = np.abs(yaw_faces - y) <= o.window
        if y:
            m &= np.sign(yaw_faces) * np.sign(y) >= 0
        if m.sum() < o.min_faces:
            continue
        fitted_rows.append(r)
        for k in range(N_CONTOUR):
            p0 = db[r, k] @ T[F[df[r, k]]]
            t, b, _ = _best_point(verts_px[m], gt68[m, k], scale[m], near(p0, int(df[r, k])), F, grid)
            df[r, k], db[r, k] = t, b
    P = np.einsum("rkc,rkcd->rkd", db, T[F[df]])
    if fitted_rows:  # a row with too few faces: its old points moved as the nearest fitted row's moved
        P_old = np.einsum("rkc,rkcd->rkd", np.asarray(arrays["dynamic_lmk_bary_coords"], np.float64),
                          T[F[np.asarray(arrays["dynamic_lmk_faces_idx"], np.int64)]])
        ys = row_yaw(np.asarray(fitted_rows))
        for r in range(len(df)):
            if r in fitted_rows:
                continue
            y = int(row_yaw(np.array([r]))[0])
            same = [i for i, yy in enumerate(ys) if yy == 0 or np.sign(yy) == np.sign(y)]
            if not same:
                continue
            near_r = fitted_rows[min(same, key=lambda i: abs(int(ys[i]) - y))]
            P[r] = P_old[r] + (P[near_r] - P_old[near_r])
            for k in range(N_CONTOUR):
                df[r, k], db[r, k], _ = M.closest_point_on_mesh(P[r, k], T, F)
        P = np.einsum("rkc,rkcd->rkd", db, T[F[df]])
    if o.smooth and fitted_rows:
        order = list(range(len(df) - 1, 39, -1)) + list(range(0, 40))  # yaw -39 .. +39
        Q = P[order]
        for i, r in enumerate(order):
            q = Q[max(0, i - o.smooth):i + o.smooth + 1].mean(0)
            for k in range(N_CONTOUR):
                t, b, _ = M.closest_point_on_mesh(q[k], T, F)
                df[r, k], db[r, k] = t, b

    out["lmk_faces_idx"] = sf.astype(np.int32)
    out["lmk_bary_coords"] = sb.astype(np.float32)
    out["dynamic_lmk_faces_idx"] = df.astype(np.int32)
    out["dynamic_lmk_bary_coords"] = db.astype(np.float32)
    out["full_lmk_faces_idx"] = np.concatenate([df[0], sf]).astype(np.int32)
    out["full_lmk_bary_coords"] = np.concatenate([db[0], sb]).astype(np.float32)
    before = nme68(landmarks68_px(verts_px, rows, arrays), gt68)
    after = nme68(landmarks68_px(verts_px, rows, out), gt68)
    report = {"faces": int(len(verts_px)), "nme68_before": before, "nme68_after": after,
              "static_moved_mm": {"mean": 1000 * float(np.mean(moved_static)), "max": 1000 * float(np.max(moved_static))},
              "contour_rows_fitted": len(fitted_rows), "options": o.__dict__}
    return out, report


def predictions(checkpoint: str, annotations: str, specs: Sequence[str], split: str | None = None,
                device: str = "cpu") -> dict[str, dict[str, np.ndarray]]:
    """Projected vertices, rows and annotations of a checkpoint on 300-W folders (``DIR[:SUBSET]``),
    at SMIRK's test crop from the MediaPipe annotation (as ``smirk-edge evaluate`` does)."""
    from smirk_edge.face_model import rodrigues
    from smirk_edge.face_model.model import yaw_bin

    from ..annotate import read_index
    from ..data import annotated_68_subset, table_from_annotations
    from ..evaluate import TorchPredictor

    base = table_from_annotations(annotations, None)
    root = read_index(annotations)["root"]
    pred = TorchPredictor(checkpoint, device=device)
    half = pred.size / 2.0
    out = {}
    for spec in specs:
        _, t = annotated_68_subset(base, spec, root, split)
        verts, rows = [], []
        for i in range(0, len(t), 32):
            idx = range(i, min(len(t), i + 32))
            pr = pred.predict([t.read(j) for j in idx], [t.landmarks478[j] for j in idx])
            p = pr.params
            verts += [tr.to_image((p["ndc_vertices"][k][:, :2] + 1) * half) for k, tr in enumerate(p["transforms"])]
            rows.append(yaw_bin(rodrigues(p["pose"])))
        out[spec] = {"verts": np.stack(verts), "rows": np.concatenate(rows), "gt68": np.asarray(t.landmarks68)}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    from smirk_edge.face_model import standin_path

    ap = argparse.ArgumentParser(prog="python -m smirk_edge.training.standin.refit68", description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True, help="encoder checkpoint whose meshes the points are fitted on")
    ap.add_argument("--annotations", required=True, help="MediaPipe annotations covering the 300-W photos")
    ap.add_argument("--landmarks68", action="append", required=True, metavar="DIR[:SUBSET]",
                    help="300-W folder to fit on (never the test set)")
    ap.add_argument("--check", action="append", default=[], metavar="DIR[:SUBSET]",
                    help="300-W folder to report before/after on (not fitted)")
    ap.add_argument("--landmarks68-split", help="split file for :SUBSET")
    ap.add_argument("--face-model", default=None, help="face model to start from (default: the stand-in)")
    ap.add_argument("--model-id", required=True, help="model id of the written face model")
    ap.add_argument("-o", "--out", required=True)
    ap.add_argument("--radius", type=float, default=RefitOptions.radius)
    ap.add_argument("--window", type=int, default=RefitOptions.window)
    ap.add_argument("--smooth", type=int, default=RefitOptions.smooth)
    args = ap.parse_args(argv)
    arrays, meta = fmt.load_arrays(args.face_model or standin_path())
    data = predictions(args.checkpoint, args.annotations, list(args.landmarks68) + list(args.check),
                       args.landmarks68_split)
    fit = [data[s] for s in args.landmarks68]
    verts = np.concatenate([d["verts"] for d in fit])
    rows = np.concatenate([d["rows"] for d in fit])
    gt = np.concatenate([d["gt68"] for d in fit])
    new, report = refit_embedding(arrays, verts, rows, gt,
                                  RefitOptions(radius=args.radius, window=args.window, smooth=args.smooth))
    report["check"] = {s: {"nme68_before": nme68(landmarks68_px(data[s]["verts"], data[s]["rows"], arrays), data[s]["gt68"]),
                           "nme68_after": nme68(landmarks68_px(data[s]["verts"], data[s]["rows"], new), data[s]["gt68"])}
                       for s in args.check}
    from pathlib import Path

    from ..checkpoint import read_checkpoint

    ck_meta = read_checkpoint(args.checkpoint).meta or {}
    encoder = str(ck_meta.get("model_id") or ck_meta.get("name") or Path(args.checkpoint).name)
    sets = ", ".join(Path(f).name + (f":{p}" if p else "") for f, _, p in (s.partition(":") for s in args.landmarks68))
    notice = str(meta.get("notice", "")) + (
        f" The 68-point embedding was re-fitted to human 300-W annotations ({sets}, {len(gt)} faces) through "
        f"the meshes that the encoder {encoder} predicts for them (smirk_edge.training.standin.refit68).")
    fmt.save(args.out, {k: v for k, v in new.items() if k in arrays}, model_id=args.model_id, notice=notice)
    report["written"] = args.out
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
