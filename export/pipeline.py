"""``smirk-edge export``: checkpoint + face model + photos -> a gated model bundle.

Steps (:func:`export_bundle`):

1. read the checkpoint (official key layout) and build the encoder; load the face model;
2. make real face crops from the ``calib`` folder with the SDK's own preprocessing
   (:func:`~smirk_edge.export.calibration.collect_crops`), split into held-back crops for the
   accuracy gate (first ``gate_count``) and calibration crops (the rest; disjoint);
3. fp32 torch outputs of the held-back crops: the reference;
4. build each requested artifact kind of the table in :mod:`.kinds` (ONNX fp32/fp16/int8, the
   TensorRT-ready int8 QDQ ONNX, fused graphs, OpenVINO IR fp32/fp16/int8), timing each step;
   a kind is added there, as a builder and one row, not here;
5. gate every artifact against the reference (:mod:`.gate`) on its kind's engine; a failing one
   is not written unless ``allow_degraded`` (then written with ``attrs["degraded"] = true``);
6. write ``face_model.npz``, the BlazeFace detector models (when shipped), ``golden.npz``
   (the first ``golden_count`` held-back crops and their reference outputs), ``MODEL_CARD.md``
   and the manifest.

Raises :class:`~smirk_edge.export.gate.GateError` after writing the passing artifacts when any
artifact failed the gate (and ``allow_degraded`` is off).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smirk_edge._version import __version__
from smirk_edge.bundle import Bundle, BundleWriter
from smirk_edge.errors import FaceModelError, InputError
from smirk_edge.face_model import FaceModel
from smirk_edge.provenance import card_lines

from .calibration import MIN_CALIBRATION_CROPS, CropSet, collect_crops, jittered_crops
from .gate import DEFAULT_THRESHOLDS, Comparator, GateError, GateResult, Thresholds, format_table, torch_outputs
from .golden import DEFAULT_GOLDEN_COUNT, GOLDEN_FILE, write_golden
from .kinds import FORMATS, KINDS_BY_NAME, PRECISIONS, ArtifactKind, BuildContext, Made, kinds_for
from .metadata import model_metadata

log = logging.getLogger(__name__)
#: calibration crops that choose the int8 mixed-precision rung (the gate uses its own held-back crops)
SELECTION_CROPS = 200

GATE_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
"""CPU flags recorded with each gate row (they decide the int8 kernels, smirk_edge.cpu)."""
MIN_GATE_CROPS = 200


@dataclass
class ExportOptions:
    """What to export. Paths may be str or Path.

    Attributes:
        checkpoint: SMIRK checkpoint in the official key layout.
        output: bundle folder to write (created; an existing manifest is replaced).
        face_model: face-model ``.npz`` (default: the shipped stand-in).
        formats: ``onnx``, ``openvino``, and ``tensorrt`` (the TensorRT-ready symmetric int8 QDQ
            ONNX that ``build-engine --precision int8`` needs; fp16 engines build from the fp32 ONNX).
        precisions: ``fp32``, ``fp16``, ``int8``.
        calib: folder of face photos for calibration and the gate (required unless ``crops``).
        crops: ready-made crops instead of ``calib`` (tests, custom detectors).
        fused: also write encoder + face-model graphs (ONNX) with vertices and landmarks outputs.
        allow_degraded: write artifacts that fail the gate, marked ``degraded``.
        gate_count: held-back crops for the gate (at least ``min_gate_count``).
        calib_count: at most this many calibration crops (warns under 300).
        golden_count: crops stored in ``golden.npz``.
        thresholds: per-precision gate bounds (default :data:`~smirk_edge.export.gate.DEFAULT_THRESHOLDS`).
        report_dir: where the comparator saves outputs and reports (None: not saved).
        int8_exclude_op_types: op types the ONNX Runtime int8 model keeps in float.
        golden_from: photos for ``golden.npz`` (jittered crops of each, see
            :func:`~smirk_edge.export.calibration.jittered_crops`) instead of the first held-back
            crops: for bundles that are published, when the calibration photos may not travel.
        int8_mixed: int8 artifacts climb :data:`~smirk_edge.export.mixed_precision.LADDER` (keep
            the pose branch / linear heads in float) until the int8 bounds hold on selection crops.
        keep: artifact names to gate and write (e.g. ``encoder.onnx``, ``encoder.int8.xml``,
            ``fused.int8.onnx``); None keeps every artifact the formats and precisions make.
        card_notes: a Markdown file placed at the top of ``MODEL_CARD.md`` (what the checkpoint
            cannot tell: training data and terms, evaluation, known failure cases).
        progress: progress bars.
    """

    checkpoint: str | os.PathLike
    output: str | os.PathLike
    face_model: str | os.PathLike | None = None
    formats: Sequence[str] = ("onnx", "openvino")
    precisions: Sequence[str] = PRECISIONS
    calib: str | os.PathLike | None = None
    crops: CropSet | None = None
    fused: bool = False
    allow_degraded: bool = False
    gate_count: int = MIN_GATE_CROPS
    min_gate_count: int = MIN_GATE_CROPS
    calib_count: int = 500
    golden_count: int = DEFAULT_GOLDEN_COUNT
    crop_scale: float | None = None
    thresholds: Mapping[str, Thresholds] | None = None
    report_dir: str | os.PathLike | None = None
    int8_exclude_op_types: Sequence[str] = ()
    card_notes: str | os.PathLike | None = None
    keep: Sequence[str] | None = None
    int8_mixed: bool = True
    golden_from: Sequence[str | os.PathLike] | None = None
    progress: bool = True
    int8_cpu_class: str | None = None

    def validate(self) -> None:
        from smirk_edge.runtimes.base import check_choice

        for f in self.formats:
            check_choice("format", f, list(FORMATS))
        for p in self.precisions:
            check_choice("precision", p, list(PRECISIONS))
        if not self.formats or not self.precisions:
            raise InputError("nothing to export: give at least one format and one precision")
        for g in self.golden_from or ():
            if not Path(g).is_file():
                raise InputError(f"--golden-from: no such image {g}")
        if self.card_notes is not None and not Path(self.card_notes).is_file():
            raise InputError(f"--card-notes: no such file {self.card_notes}")
        if self.calib is None and self.crops is None:
            raise InputError("--calib DIR is required: a folder of face photos for int8 calibration and the "
                             "accuracy gate (never random tensors)")
        if self.gate_count < 1 or self.golden_count < 1:
            raise InputError("gate_count and golden_count must be >= 1")
        if self.golden_count > self.gate_count:
            raise InputError(f"golden_count ({self.golden_count}) cannot exceed gate_count ({self.gate_count})")
        if self.int8_cpu_class is not None:
            from smirk_edge.cpu import CPU_CLASSES, cpu_class, describe_flags

            check_choice("int8 CPU class", self.int8_cpu_class, list(CPU_CLASSES))
            if self.int8_cpu_class != cpu_class():
                raise InputError(
                    f"--int8-cpu-class {self.int8_cpu_class}: this machine is {describe_flags()}; the int8 "
                    "accuracy gate must run on the CPU class the artifact ships to: run the export on a "
                    f"{self.int8_cpu_class} machine (or leave the option out to build for this one)")


@dataclass
class Built:
    """An artifact built in the staging folder, before the gate."""

    name: str
    kind: str
    role: str
    precision: str
    files: list[Path]
    engine: str
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExportReport:
    """What :func:`export_bundle` did: the bundle, gate rows, timings (seconds) and crop sets."""

    bundle: Bundle
    results: list[GateResult]
    timings: dict[str, float]
    held_back: dict[str, Any]
    calibration: dict[str, Any]
    written: list[str]
    rejected: list[str]

    def table(self) -> str:
        return format_table(self.results)


def _variant(ckpt: Any, encoder: Any) -> str:
    from smirk_edge.training.encoder import EncoderConfig

    if "encoder_variant" in ckpt.meta:
        return str(ckpt.meta["encoder_variant"])
    cfg = getattr(encoder, "config", None)
    return "full" if cfg == EncoderConfig.full() else ("tiny" if cfg == EncoderConfig.tiny() else "custom")


def _timed(timings: dict[str, float], key: str, fn: Callable[[], Any]) -> Any:
    start = time.perf_counter()
    out = fn()
    timings[key] = round(time.perf_counter() - start, 3)
    return out


def export_bundle(opts: ExportOptions) -> ExportReport:
    """Run the whole export (see the module docstring). Returns the report; raises GateError on failures."""
    opts.validate()
    kinds = kinds_for(opts.formats, opts.precisions, opts, opts.keep)
    from smirk_edge.runtimes.registry import make_runner
    from smirk_edge.training.checkpoint import build_encoder, read_checkpoint

    from .calibration import warn_if_small
    from .onnx_export import OPSET

    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    ckpt = read_checkpoint(opts.checkpoint)
    encoder = build_encoder(ckpt).eval()
    variant = _variant(ckpt, encoder)
    if opts.face_model is None:
        from smirk_edge.face_model import standin_path

        fm_path = standin_path()
        if not fm_path.is_file():
            raise FaceModelError(f"the shipped stand-in face model is missing ({fm_path}); pass --face-model FILE")
    else:
        fm_path = Path(opts.face_model)
    face_model = FaceModel.load(fm_path)

    # ---- crops: held back for the gate, the rest for calibration --------------------------------
    need_calib = "int8" in opts.precisions
    if opts.crops is not None:
        crops = opts.crops
    else:
        limit = opts.gate_count + (opts.calib_count if need_calib else 0)
        crops = _timed(timings, "crops", lambda: collect_crops(opts.calib, limit=limit, progress=opts.progress,
                                                               scale=opts.crop_scale or 1.4))
    held, calib = crops.split(opts.gate_count)
    calib = calib.subset(slice(0, opts.calib_count))
    if len(held) < opts.min_gate_count:
        raise InputError(f"only {len(held)} held-back crops for the accuracy gate (need {opts.min_gate_count}); "
                         f"point --calib at a folder with more face photos")
    if need_calib:
        if len(calib) == 0:
            raise InputError(f"no calibration crops left after holding back {len(held)} for the gate; "
                             "add photos or lower the gate count")
        warn_if_small(len(calib), MIN_CALIBRATION_CROPS)

    thresholds = dict(DEFAULT_THRESHOLDS)
    thresholds.update(opts.thresholds or {})
    from smirk_edge.cpu import cpu_class, cpu_flags, exact_int8_family, has_vnni

    gate_class = cpu_class()  # the gate runs here: int8 ONNX artifacts are valid on this class
    int8_class = opts.int8_cpu_class or gate_class
    metadata = model_metadata(
        encoder_variant=variant, checkpoint_sha256=ckpt.sha256, face_model_id=face_model.model_id,
        face_model_vertices=face_model.n_vertices, opset=OPSET, crop_scale=crops.scale,
        extra={"gate_thresholds": {p: t.to_json() for p, t in thresholds.items()},
               # whose emotion labels trained the weights: evaluations of the bundle leave them unscored
               **({"emotion_subjects": sorted(ckpt.meta["emotion_subjects"])}
                  if ckpt.meta.get("emotion_subjects") else {})})

    x_held = held.tensor()
    reference = _timed(timings, "reference", lambda: torch_outputs(encoder, x_held))

    out = Path(opts.output)
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".staging-", dir=out))
    try:
        # ---- build: every kind the options ask for, in table order (kinds.py) -------------------
        ctx = BuildContext(stage=stage, encoder=encoder, checkpoint=ckpt, face_model=face_model, metadata=metadata,
                           calib=calib, reduce_range=not has_vnni(int8_class),
                           exclude_op_types=opts.int8_exclude_op_types, progress=opts.progress,
                           int8_mixed=opts.int8_mixed, int8_bounds=thresholds.get("int8", DEFAULT_THRESHOLDS["int8"]),
                           selection_crops=SELECTION_CROPS, kinds=KINDS_BY_NAME,
                           say=(lambda m: log.info(m)) if not opts.progress else (lambda m: print(m, flush=True)))
        built = [(kind, _record(kind, ctx.made(kind.name))) for kind in kinds]

        # ---- gate ------------------------------------------------------------------------------
        cmp = Comparator(x_held, face_model, opts.report_dir)
        cmp.set_reference("torch-fp32", reference)
        writer = BundleWriter(out, metadata, overwrite=True)
        written, rejected = [], []
        for kind, b in built:
            runner = make_runner(b.engine, b.files[0], precision=b.precision)
            row = cmp.run(b.name, runner, b.precision, thresholds.get(kind.gate_bounds or b.precision), b.engine)
            b.attrs["accuracy"] = {**{k: round(v, 6) for k, v in row.metrics.items()},
                                   "crops": row.count, "engine": b.engine, "reference": "torch fp32",
                                   "thresholds": row.thresholds.to_json(), "passed": row.passed,
                                   "cpu_class": gate_class,
                                   "cpu_flags": sorted(f for f in cpu_flags() if f in GATE_FLAGS)}
            if kind.cpu_bound:
                # the class the gate ran on and those computing the same u8s8 results (smirk_edge.cpu)
                b.attrs["cpu_classes"] = list(exact_int8_family(gate_class))
            if row.passed or opts.allow_degraded:
                if not row.passed:
                    row.degraded = True
                    b.attrs["degraded"] = True
                    b.attrs["failures"] = row.failures
                writer.add(b.name, b.kind, b.role, b.files, b.precision, b.attrs, move=True)
                written.append(b.name)
            else:
                rejected.append(b.name)
        cmp.save()

        # ---- companions --------------------------------------------------------------------------
        fm_dst = stage / "face_model.npz"
        shutil.copyfile(fm_path, fm_dst)
        writer.add("face_model", "face-model", "face_model", fm_dst,
                   attrs={"model_id": face_model.model_id, "vertices": face_model.n_vertices}, move=True)
        for det in _detector_models():
            writer.add(det.name, "onnx", "detector", det, "fp32", attrs={"variant": det.stem.split("_", 1)[-1],
                                                                           "model": "BlazeFace"})
        if opts.golden_from:  # photos whose terms allow them to travel with the bundle
            gold_set = jittered_crops(list(opts.golden_from), per_image=max(1, -(-opts.golden_count
                                                                               // len(opts.golden_from))))
            gold_set = gold_set.subset(slice(0, opts.golden_count))
            gold_ref = torch_outputs(encoder, gold_set.tensor())
        else:
            gold_set = held.subset(slice(0, min(opts.golden_count, len(held))))
            gold_ref = {k: v[:len(gold_set)] for k, v in reference.items()}
        n_gold = len(gold_set)
        golden = write_golden(stage / GOLDEN_FILE, gold_set.crops, gold_ref,
                              {"reference": "torch fp32", "sources": gold_set.sources, "root": gold_set.root,
                               "method": gold_set.method, "scale": gold_set.scale, "sdk_version": __version__})
        writer.add("golden", "golden", "golden", golden, attrs={"crops": n_gold}, move=True)
        timings["total"] = round(time.perf_counter() - t_all, 3)
        card = stage / "MODEL_CARD.md"
        notes = Path(opts.card_notes).read_text(encoding="utf-8") if opts.card_notes else None
        card.write_text(model_card(ckpt, variant, face_model, held, calib, cmp.results, [b for _, b in built],
                                   timings, notes), encoding="utf-8")
        writer.add("model_card", "model-card", "model_card", card, move=True)
        writer.metadata["export"] = {"held_back": held.describe(), "calibration": calib.describe(),
                                     "timings": timings, "rejected": rejected}
        bundle = writer.write()
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    report = ExportReport(bundle, cmp.results, timings, held.describe(), calib.describe(), written, rejected)
    if rejected:
        raise GateError(f"{len(rejected)} artifact(s) failed the accuracy gate and were not written "
                        f"({', '.join(rejected)}); rerun with --allow-degraded to keep them marked degraded.\n"
                        + report.table(), cmp.results)
    return report


def _record(kind: ArtifactKind, made: Made) -> Built:
    """The manifest record of one built kind (its attrs copied: the gate adds to them)."""
    return Built(kind.file, kind.manifest_kind, kind.role, kind.precision, list(made.files), kind.engine,
                 {**made.attrs, **kind.attrs})


def _detector_models() -> list[Path]:
    try:
        from importlib import resources

        root = Path(str(resources.files("smirk_edge.assets")))
    except (ModuleNotFoundError, TypeError):
        return []
    return sorted(root.glob("blazeface_*.onnx"))


def model_card(ckpt: Any, variant: str, face_model: FaceModel, held: CropSet, calib: CropSet,
               results: Sequence[GateResult], built: Sequence[Built], timings: Mapping[str, float],
               notes: str | None = None) -> str:
    """MODEL_CARD.md: provenance, data and its terms, accuracy per artifact, export times; ``notes``
    (Markdown, its own ``#`` title) go first and the export's sections follow under ``# Export``."""
    meta = ckpt.meta or {}
    head = [notes.rstrip(), "", "# Export", ""] if notes else ["# SMIRK encoder: model card", ""]
    missing = "see the sections above" if notes else "not recorded in the checkpoint; fill in who trained it, on what"
    lines = [
        *head,
        f"Exported by smirk-edge {__version__}.", "",
        "## Provenance", "",
        f"- Source checkpoint sha256: `{ckpt.sha256}` (official SMIRK key layout), encoder variant `{variant}`.",
        f"- Training: {meta.get('training', missing)}.",
        f"- Training data and its terms: {meta.get('training_data', missing)}.",
        f"- Face model: `{face_model.model_id}`, {face_model.n_vertices} vertices. "
        + (f"Notice: {face_model.notice}" if face_model.notice else ""),
        "", *card_lines(meta),  # terms of the weights, from the checkpoint (smirk_edge.provenance)
        "## Calibration and accuracy data", "",
        f"- Held-back crops for the gate: {len(held)} from `{held.root}` (faces found by: {held.method}, "
        f"crop scale {held.scale}).",
        f"- Calibration crops (int8): {len(calib)} from the same folder, disjoint from the held-back ones.",
        "- Crops come from the SDK's own preprocessing (smirk_edge.crop). The photos' own terms apply to "
        "anything derived from them.",
        "",
        "## Accuracy against fp32 torch", "",
        "Landmark error: 68 + 105 landmarks decoded with the bundle's face model, projected with each "
        "artifact's own camera, pixels of the 224 x 224 crop. Vertex error in millimetres (model frame).",
        "", format_table(results), "",
        "## Export times (seconds, this workstation)", "",
        "| artifact | steps |", "|---|---|",
    ]
    for b in built:
        secs = b.attrs.get("seconds", {})
        lines.append(f"| {b.name} | " + ", ".join(f"{k} {v:.2f}" for k, v in secs.items()) + " |")
    lines += ["", "Whole export: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()) + ".", "",
              "## Runtime", "",
              "No latency is claimed here: measure on the target with `smirk-edge bench`, and check the "
              "target's engine against this export with `smirk-edge selftest`.", ""]
    return "\n".join(lines)
