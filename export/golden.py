"""``golden.npz`` (reference crops + fp32 outputs) and the on-target ``selftest``.

``golden.npz`` (written by :func:`write_golden`, no pickles):

=====================  ==============================  ==========================================
key                    shape / dtype                   meaning
=====================  ==============================  ==========================================
``crops``              ``(N, 224, 224, 3)`` uint8      BGR face crops made by the SDK's
                                                       preprocessing from held-back real photos
``out.<name>``         ``(N, width)`` float32          fp32 torch outputs for those crops
                                                       (``pose``, ``cam``, ``shape``, ...)
``meta``               0-d str (JSON)                  reference, sources, crop scale, versions
=====================  ==============================  ==========================================

:func:`selftest` runs the crops through an artifact of the bundle on the chosen engine (on the
target: TensorRT, OpenVINO, ONNX Runtime), computes the accuracy gate's metrics against the
stored outputs and returns one :class:`~smirk_edge.export.gate.GateResult` row per artifact. It
needs numpy, OpenCV and the engine only (no torch): the device-side half of the gate.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from smirk_edge.bundle import Bundle
from smirk_edge.cpu import cpu_class, int8_applies, int8_valid_classes
from smirk_edge.crop import CROP_SIZE, to_tensor
from smirk_edge.errors import BundleError, InputError
from smirk_edge.face_model import FaceModel

from .gate import Comparator, GateResult, Thresholds, format_table, thresholds_for

GOLDEN_FILE = "golden.npz"
DEFAULT_GOLDEN_COUNT = 16


@dataclass
class Golden:
    """Reference crops ``(N, 224, 224, 3)`` uint8 BGR, fp32 outputs by name, and metadata."""

    crops: np.ndarray
    outputs: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)

    def inputs(self) -> np.ndarray:
        """The encoder input ``(N, 3, 224, 224)`` float32, made by :func:`smirk_edge.crop.to_tensor`."""
        return to_tensor(self.crops)


def write_golden(path: str | os.PathLike, crops: np.ndarray, outputs: Mapping[str, np.ndarray],
                 meta: Mapping[str, Any] | None = None) -> Path:
    """Write ``golden.npz``: ``crops`` uint8 BGR ``(N, 224, 224, 3)`` and reference ``outputs``."""
    crops = np.asarray(crops)
    if crops.dtype != np.uint8 or crops.ndim != 4 or crops.shape[1:] != (CROP_SIZE, CROP_SIZE, 3):
        raise InputError(f"golden crops must be uint8 (N, {CROP_SIZE}, {CROP_SIZE}, 3), got {crops.dtype} {crops.shape}")
    payload: dict[str, np.ndarray] = {"crops": crops}
    for k, v in outputs.items():
        v = np.asarray(v, np.float32)
        if len(v) != len(crops):
            raise InputError(f"golden output {k!r} has {len(v)} rows for {len(crops)} crops")
        payload[f"out.{k}"] = v
    payload["meta"] = np.array(json.dumps(dict(meta or {}), sort_keys=True))
    path = Path(path)
    np.savez_compressed(path, **payload)
    return path


def load_golden(path: str | os.PathLike) -> Golden:
    """Read ``golden.npz`` (pickles disabled)."""
    from smirk_edge.npz_guard import ArrayFileError, load_npz

    try:
        f = load_npz(path, f"golden file {path}")
        crops = f["crops"]
        outputs = {k[4:]: v for k, v in f.items() if k.startswith("out.")}
        meta = json.loads(str(f["meta"])) if "meta" in f else {}
    except ArrayFileError as exc:
        raise BundleError(str(exc)) from None
    except (OSError, ValueError, KeyError) as exc:
        raise BundleError(f"cannot read golden file {path}: {exc}") from exc
    return Golden(crops, outputs, meta)


def _bundle_thresholds(bundle: Bundle) -> dict[str, Thresholds]:
    table = bundle.metadata.get("gate_thresholds") or {}
    return {p: Thresholds.from_json(t) for p, t in table.items() if isinstance(t, Mapping)}


def _candidates(bundle: Bundle, engine: str, precision: str | None, artifact: str | None) -> list:
    from smirk_edge.runtimes.registry import engine_spec, gated_for_engine

    spec = engine_spec(engine)
    arts = [a for a in bundle.artifacts if a.role in ("encoder", "fused")]
    if artifact is not None:
        a = bundle.get(artifact)
        if not spec.opens(a.kind):
            raise InputError(f"{engine} cannot open artifact {artifact!r} (kind {a.kind})")
        return [a]
    arts = [a for a in arts if spec.opens(a.kind, a.precision) and gated_for_engine(a, engine)
            and (precision is None or a.precision == precision or a.kind == "torch-checkpoint")]
    for kind in spec.artifact_kinds:  # the engine's preferred kind that the bundle has
        chosen = [a for a in arts if a.kind == kind]
        if chosen:
            return chosen
    return []


def selftest(bundle: Bundle | str | os.PathLike, backend: str = "auto", precision: str | None = None,
             device: str | None = None, artifact: str | None = None, out_dir: str | os.PathLike | None = None,
             thresholds: Mapping[str, Thresholds] | None = None, runner_options: Mapping[str, Any] | None = None,
             cpu: str | None = None) -> list[GateResult]:
    """Run the bundle's golden crops through its artifacts on one engine and gate the results.

    Args:
        bundle: a :class:`~smirk_edge.bundle.Bundle` or its folder.
        backend: ``'auto'`` (fastest installed engine that opens an artifact) or an engine name
            (``'onnxruntime'``, ``'openvino'``, ``'tensorrt'``).
        precision: only artifacts of this precision (None: every encoder artifact of the
            engine's preferred kind in the bundle).
        device: engine device (e.g. ``'GPU'`` for OpenVINO); None: the runner's default.
        artifact: test this one artifact (by manifest name).
        out_dir: save outputs and report there (the comparator's files).
        thresholds: per-precision bounds (default: the bundle's ``gate_thresholds``, else the
            gate defaults).
        runner_options: extra options for :func:`smirk_edge.runtimes.make_runner` (e.g. threads).
        cpu: the CPU class to judge int8 validity by (default: this machine's,
            :func:`smirk_edge.cpu.cpu_class`). An int8 artifact not gated for it is still run, and
            its row says ``applies=False`` (the Reconstructor skips it on this CPU).
    Returns:
        one row per artifact; :func:`selftest_verdict` is the verdict (rows that apply here).
    Raises:
        BundleError: no golden file or face model in the bundle; RunnerError: no usable artifact.
    """
    from smirk_edge.runtimes.base import RunnerError
    from smirk_edge.runtimes.registry import ENGINES, make_runner, select_engine

    bundle = bundle if isinstance(bundle, Bundle) else Bundle(bundle)
    goldens = bundle.find(role="golden")
    faces = bundle.find(role="face_model")
    if not goldens or not faces:
        raise BundleError(f"bundle {bundle.root} has no golden file or face model: re-export it with smirk-edge export")
    golden = load_golden(bundle.main_path(goldens[0]))
    face_model = FaceModel.load(bundle.main_path(faces[0]))
    encoders = [a for a in bundle.artifacts if a.role in ("encoder", "fused")]
    if artifact is not None:
        engine_choices = [bundle.get(artifact)]
    else:
        engine_choices = [a for a in encoders if precision is None or a.precision == precision
                          or a.kind == "torch-checkpoint"]  # the torch runner computes at any precision
    if not engine_choices:
        raise RunnerError(f"bundle {bundle.root} has no encoder artifact" + (f" in {precision}" if precision else ""))
    # the torch runner computes at the asked precision from its one (fp16-stored) artifact
    engine = select_engine(engine_choices, backend, None if backend == "torch" else precision, device).engine
    table = dict(_bundle_thresholds(bundle))
    table.update(thresholds or {})
    cmp = Comparator(golden.inputs(), face_model, out_dir, batch=len(golden.crops))
    cmp.set_reference(golden.meta.get("reference", "golden"), golden.outputs)
    opts = {**ENGINES[engine].runner_options(None, device), **(runner_options or {})}
    cls = cpu_class() if cpu is None else cpu
    for a in _candidates(bundle, engine, precision, artifact):
        path = bundle.main_path(a)
        run_precision = (precision or a.precision) if a.kind == "torch-checkpoint" else a.precision
        runner = make_runner(engine, path, precision=run_precision or "fp32", **opts)
        cmp.batch = max(1, min(len(golden.crops), int(a.attrs.get("max_batch", len(golden.crops)))))
        row = cmp.run(a.name, runner, run_precision, thresholds_for(run_precision, table), engine)
        row.degraded = bool(a.attrs.get("degraded"))
        if not int8_applies(a.attrs, a.kind, a.precision, cls):
            row.applies = False
            row.note = (f"gated for {', '.join(int8_valid_classes(a.attrs, a.kind) or ())}, this CPU is {cls}; "
                        "the Reconstructor skips it here")
    cmp.save()
    return cmp.results


def selftest_verdict(rows: list[GateResult]) -> bool:
    """True when at least one artifact applies to this CPU and every one that applies passes."""
    applying = [r for r in rows if r.applies]
    return bool(applying) and all(r.passed for r in applying)


def selftest_table(rows: list[GateResult]) -> str:
    """The selftest's pass/fail table (Markdown)."""
    return format_table(rows)
