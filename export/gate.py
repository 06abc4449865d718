"""The accuracy gate: every exported artifact against fp32 torch on held-back real face crops.

Metrics (:func:`accuracy_metrics`), for one artifact's outputs ``got`` against the reference
``ref`` (both the six parameter outputs for the same ``N`` crops):

* ``lmk_mean_px`` / ``lmk_p99_px`` / ``lmk_max_px``: 2D landmark error in pixels of the 224 x 224
  crop. Both parameter sets are decoded with the numpy :class:`~smirk_edge.face_model.FaceModel`
  (68 + 105 landmarks), projected with each set's own camera (:func:`smirk_edge.camera.project`),
  and the per-point Euclidean distances (``N x 173``) summarised.
* ``vertex_mean_mm``: mean Euclidean vertex distance in millimetres, model frame.
* ``expression_mae``: mean absolute error of the 50 expression coefficients.
* ``param_max_abs`` and ``param_max_rel``: the largest absolute difference over all six outputs,
  and the largest of ``max|got - ref| / max(1, max|ref|)`` per output (absolute for outputs of
  magnitude <= 1, relative above, so one tolerance fits cam scale ~7 and eyelids ~0.5).
* fused graphs only: ``fused_max_mm``, the largest distance between the graph's own vertices /
  landmarks and the numpy decoder's for the graph's own parameters.

Default thresholds (:data:`DEFAULT_THRESHOLDS`): fp32 ``param_max_rel <= 1e-4``; fp16
``lmk_mean_px <= 0.05``; int8 ``lmk_mean_px <= 0.5`` and ``lmk_p99_px <= 2``; fused graphs also
``fused_max_mm <= 0.01``.

The :class:`Comparator` (STYLE #7) runs the same feeds through any number of runners, saves each
one's outputs (``outputs/<name>.npz``) and the metrics (``report.json``, ``report.md``) in a
folder, so a device can be checked against a workstation reference later.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from smirk_edge.camera import project
from smirk_edge.errors import SmirkEdgeError
from smirk_edge.face_model import FaceModel

from .metadata import INPUT_NAME, OUTPUTS

PARAM_NAMES = tuple(name for name, _, _ in OUTPUTS)
GEOMETRY_NAMES = ("vertices", "landmarks68", "landmarks105")
METRIC_UNITS = {"lmk_mean_px": "px", "lmk_p99_px": "px", "lmk_max_px": "px", "vertex_mean_mm": "mm",
                "expression_mae": "", "param_max_abs": "", "param_max_rel": "", "fused_max_mm": "mm"}


class GateError(SmirkEdgeError):
    """One or more artifacts failed the accuracy gate; ``results`` holds every row."""

    def __init__(self, message: str, results: Sequence[GateResult] = ()):
        super().__init__(message)
        self.results = list(results)


@dataclass(frozen=True)
class Thresholds:
    """Upper bounds; None = not checked. Units as in :data:`METRIC_UNITS`."""

    lmk_mean_px: float | None = None
    lmk_p99_px: float | None = None
    vertex_mean_mm: float | None = None
    expression_mae: float | None = None
    param_max_rel: float | None = None
    fused_max_mm: float | None = None

    def to_json(self) -> dict[str, float]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Thresholds:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: float(v) for k, v in d.items() if k in known and v is not None})

    def with_fused(self, fused: bool) -> Thresholds:
        if not fused or self.fused_max_mm is not None:
            return self
        return Thresholds(**{**asdict(self), "fused_max_mm": FUSED_MAX_MM})


FUSED_MAX_MM = 0.01
DEFAULT_THRESHOLDS: dict[str, Thresholds] = {
    "fp32": Thresholds(param_max_rel=1e-4),
    "fp16": Thresholds(lmk_mean_px=0.05),
    "bf16": Thresholds(lmk_mean_px=0.1),
    "int8": Thresholds(lmk_mean_px=0.5, lmk_p99_px=2.0),
}


def thresholds_for(precision: str | None, table: Mapping[str, Thresholds] | None = None) -> Thresholds:
    table = DEFAULT_THRESHOLDS if table is None else table
    return table.get(precision or "fp32", DEFAULT_THRESHOLDS.get(precision or "fp32", Thresholds()))


@dataclass
class GateResult:
    """One row of the gate table."""

    name: str
    precision: str | None
    engine: str
    metrics: dict[str, float]
    thresholds: Thresholds
    failures: list[str] = field(default_factory=list)
    count: int = 0
    degraded: bool = False
    applies: bool = True  # False: an int8 artifact not gated for this machine's CPU class (selftest)
    note: str = ""

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "precision": self.precision, "engine": self.engine, "crops": self.count,
                "metrics": {k: float(v) for k, v in self.metrics.items()},
                "thresholds": self.thresholds.to_json(), "passed": self.passed, "failures": self.failures,
                **({"degraded": True} if self.degraded else {}),
                **({"applies": False, "note": self.note} if not self.applies else {})}


def _single_thread_blas() -> Any:
    """Limit numpy's BLAS to one thread while decoding.

    Measured here: after OpenVINO/NNCF have run in the same process on a 2-core machine, numpy's
    multi-threaded OpenBLAS matmul in the decoder spun for minutes on a (64, 350) x (350, 504)
    product (threads busy-waiting against the engines' own thread pools). One thread costs nothing
    at these sizes. Uses threadpoolctl when installed (it comes with NNCF).
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _decode(fm: FaceModel, p: Mapping[str, np.ndarray], chunk: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Vertices ``(N, V, 3)`` metres and 2D landmarks ``(N, 173, 2)`` crop pixels for parameters ``p``."""
    verts, lmks = [], []
    n = len(p["shape"])
    with _single_thread_blas():
        return _decode_chunks(fm, p, chunk, n, verts, lmks)


def _decode_chunks(fm: FaceModel, p: Mapping[str, np.ndarray], chunk: int, n: int, verts: list, lmks: list
                   ) -> tuple[np.ndarray, np.ndarray]:
    for i in range(0, n, chunk):
        s = slice(i, i + chunk)
        g = fm.decode(shape=p["shape"][s], expression=p["expression"][s], pose=p["pose"][s], jaw=p["jaw"][s],
                      eyelid=p["eyelid"][s])
        pts = np.concatenate([g.landmarks68, g.landmarks105], axis=1)
        lmks.append(project(pts, p["cam"][s])[..., :2])
        verts.append(g.vertices)
    return np.concatenate(verts), np.concatenate(lmks)


def accuracy_metrics(ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray], face_model: FaceModel,
                     ref_geometry: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, float]:
    """The gate's metrics of ``got`` against ``ref`` (see the module docstring).

    Args:
        ref, got: output name -> array; the six parameter outputs ``(N, width)`` are needed; a
            fused graph's ``vertices``/``landmarks68``/``landmarks105`` in ``got`` add ``fused_max_mm``.
        face_model: the numpy decoder of the bundle.
        ref_geometry: ``(vertices, landmarks2d)`` of ``ref`` if already decoded (saves time).
    """
    missing = [k for k in PARAM_NAMES if k not in got]
    if missing:
        raise SmirkEdgeError(f"artifact outputs lack {missing}; it returned {sorted(got)}")
    got = {k: np.asarray(v, np.float32) for k, v in got.items()}
    v_ref, l_ref = ref_geometry if ref_geometry is not None else _decode(face_model, ref)
    v_got, l_got = _decode(face_model, got)
    d = np.linalg.norm(l_got - l_ref, axis=-1)
    metrics = {
        "lmk_mean_px": float(d.mean()),
        "lmk_p99_px": float(np.percentile(d, 99)),
        "lmk_max_px": float(d.max()),
        "vertex_mean_mm": float(np.linalg.norm(v_got - v_ref, axis=-1).mean() * 1000.0),
        "expression_mae": float(np.abs(got["expression"] - ref["expression"]).mean()),
    }
    abs_err = {k: float(np.abs(got[k] - ref[k]).max()) for k in PARAM_NAMES}
    rel_err = {k: abs_err[k] / max(1.0, float(np.abs(ref[k]).max())) for k in PARAM_NAMES}
    metrics["param_max_abs"] = max(abs_err.values())
    metrics["param_max_rel"] = max(rel_err.values())
    if all(k in got for k in GEOMETRY_NAMES):
        g = []
        with _single_thread_blas():
            geos = [face_model.decode(shape=got["shape"][i:i + 64], expression=got["expression"][i:i + 64],
                                      pose=got["pose"][i:i + 64], jaw=got["jaw"][i:i + 64],
                                      eyelid=got["eyelid"][i:i + 64]) for i in range(0, len(got["shape"]), 64)]
        for i, geo in zip(range(0, len(got["shape"]), 64), geos):
            s = slice(i, i + 64)
            g.append(max(float(np.linalg.norm(got[k][s] - getattr(geo, k), axis=-1).max()) for k in GEOMETRY_NAMES))
        metrics["fused_max_mm"] = max(g) * 1000.0
    return metrics


def torch_outputs(encoder: Any, x: np.ndarray, batch: int = 32) -> dict[str, np.ndarray]:
    """fp32 torch outputs of ``encoder`` for ``x (N, 3, 224, 224)``: the gate's reference."""
    import torch

    parts: dict[str, list[np.ndarray]] = {}
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            out = encoder(torch.from_numpy(np.ascontiguousarray(x[i:i + batch])))
            for k, v in out.items():
                parts.setdefault(k, []).append(v.float().numpy())
    return {k: np.concatenate(v) for k, v in parts.items()}


def check(metrics: Mapping[str, float], thresholds: Thresholds) -> list[str]:
    """Human-readable failures (empty when every bound holds; NaN always fails)."""
    failures = []
    for key, bound in thresholds.to_json().items():
        value = metrics.get(key)
        if value is None:
            continue
        if not value <= bound:  # NaN fails
            failures.append(f"{key} = {value:.4g}{METRIC_UNITS.get(key, '')} > {bound:g}{METRIC_UNITS.get(key, '')}")
    return failures


def _infer_all(infer: Callable[[dict[str, np.ndarray]], Mapping[str, np.ndarray]], x: np.ndarray,
               batch: int) -> dict[str, np.ndarray]:
    parts: dict[str, list[np.ndarray]] = {}
    for i in range(0, len(x), batch):
        out = infer({INPUT_NAME: np.ascontiguousarray(x[i:i + batch])})
        for k, v in out.items():
            parts.setdefault(k, []).append(np.asarray(v))
    return {k: np.concatenate(v) for k, v in parts.items()}


class Comparator:
    """Runs the same inputs through several runners and compares them with a reference.

    Args:
        inputs: encoder input ``(N, 3, 224, 224)`` float32 (e.g. :meth:`CropSet.tensor`).
        face_model: the numpy decoder for the metrics.
        out_dir: where outputs and reports are saved (None: keep in memory only).
        batch: images per runner call (every artifact has a dynamic batch).

    Usage::

        cmp = Comparator(crops.tensor(), face_model, "runs/gate")
        cmp.set_reference("torch-fp32", torch_outputs)
        cmp.run("encoder.int8.onnx", runner, precision="int8")
        cmp.save()     # runs/gate/report.json, report.md, outputs/*.npz
    """

    def __init__(self, inputs: np.ndarray, face_model: FaceModel, out_dir: str | os.PathLike | None = None,
                 batch: int = 16):
        self.inputs = np.ascontiguousarray(inputs, np.float32)
        self.face_model = face_model
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.batch = int(batch)
        self.reference_name: str | None = None
        self.reference: dict[str, np.ndarray] | None = None
        self._ref_geometry: tuple[np.ndarray, np.ndarray] | None = None
        self.outputs: dict[str, dict[str, np.ndarray]] = {}
        self.results: list[GateResult] = []
        self.seconds: dict[str, float] = {}

    def _save_outputs(self, name: str, outputs: Mapping[str, np.ndarray]) -> None:
        if self.out_dir is not None:
            (self.out_dir / "outputs").mkdir(parents=True, exist_ok=True)
            np.savez_compressed(self.out_dir / "outputs" / f"{name}.npz", **outputs)

    def set_reference(self, name: str, outputs: Mapping[str, np.ndarray]) -> None:
        """The reference outputs (fp32 torch), one row per input."""
        self.reference_name = name
        self.reference = {k: np.asarray(v, np.float32) for k, v in outputs.items()}
        self._ref_geometry = _decode(self.face_model, self.reference)
        self._save_outputs(name, self.reference)

    def run(self, name: str, runner: Any, precision: str | None, thresholds: Thresholds | None = None,
            engine: str | None = None) -> GateResult:
        """Run ``runner`` (a :class:`smirk_edge.runtimes.Runner`, active or not, or a callable
        ``feed -> outputs``) on every input, compare with the reference, record a row."""
        if self.reference is None:
            raise SmirkEdgeError("Comparator.run needs set_reference() first")
        start = time.perf_counter()
        if callable(getattr(runner, "infer", None)):
            was_active = getattr(runner, "is_active", True)
            if not was_active:
                runner.activate()
            try:
                outputs = _infer_all(runner.infer, self.inputs, self.batch)
            finally:
                if not was_active:
                    runner.deactivate()
            engine = engine or getattr(runner, "engine", "?")
        else:
            outputs = _infer_all(runner, self.inputs, self.batch)
            engine = engine or "callable"
        self.seconds[name] = time.perf_counter() - start
        self.outputs[name] = outputs
        self._save_outputs(name, outputs)
        return self.compare(name, outputs, precision, thresholds, engine)

    def compare(self, name: str, outputs: Mapping[str, np.ndarray], precision: str | None,
                thresholds: Thresholds | None = None, engine: str = "?") -> GateResult:
        """Compare given outputs with the reference and record a row."""
        assert self.reference is not None
        metrics = accuracy_metrics(self.reference, outputs, self.face_model, self._ref_geometry)
        fused = "fused_max_mm" in metrics
        th = (thresholds or thresholds_for(precision)).with_fused(fused)
        result = GateResult(name, precision, engine, metrics, th, check(metrics, th), len(self.inputs))
        self.results = [r for r in self.results if r.name != name] + [result]
        return result

    def save(self) -> Path | None:
        """Write ``report.json`` and ``report.md`` (and the outputs already saved) to ``out_dir``."""
        if self.out_dir is None:
            return None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        report = {"reference": self.reference_name, "inputs": int(len(self.inputs)),
                  "results": [r.to_json() for r in self.results], "seconds": self.seconds}
        (self.out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        (self.out_dir / "report.md").write_text(format_table(self.results) + "\n", encoding="utf-8")
        return self.out_dir / "report.json"


def load_report(path: str | os.PathLike) -> list[GateResult]:
    """Read the rows of a saved ``report.json`` back."""
    d = json.loads(Path(path).read_text(encoding="utf-8"))
    return [GateResult(r["name"], r.get("precision"), r.get("engine", "?"), r["metrics"],
                       Thresholds.from_json(r.get("thresholds", {})), r.get("failures", []), r.get("crops", 0),
                       r.get("degraded", False)) for r in d["results"]]


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if v != v:
        return "nan"
    return f"{v:.2e}" if (v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e4)) else f"{v:.4f}"


def format_table(results: Sequence[GateResult]) -> str:
    """A Markdown table of gate rows (the MODEL_CARD.md section and the CLI output)."""
    head = ("| artifact | engine | precision | crops | lmk mean px | lmk p99 px | vertex mean mm | expr MAE | "
            "param max rel | result |")
    lines = [head, "|" + "---|" * 10]
    for r in results:
        m = r.metrics
        verdict = "pass" if r.passed else ("DEGRADED: " if r.degraded else "FAIL: ") + "; ".join(r.failures)
        if not r.applies:
            verdict = f"not for this CPU ({r.note}; not counted), measured: {verdict}"
        lines.append(f"| {r.name} | {r.engine} | {r.precision or '-'} | {r.count} | {_fmt(m.get('lmk_mean_px'))} | "
                     f"{_fmt(m.get('lmk_p99_px'))} | {_fmt(m.get('vertex_mean_mm'))} | "
                     f"{_fmt(m.get('expression_mae'))} | {_fmt(m.get('param_max_rel'))} | {verdict} |")
    return "\n".join(lines)
