"""The artifact kinds an export can make: one typed record per kind, in one table.

:data:`KINDS` is what :func:`~smirk_edge.export.pipeline.export_bundle` iterates. A kind is made
when its ``format`` is among ``--formats`` (or its ``option`` is set, e.g. ``--fused``) and its
``precision`` among ``--precisions``, and, with ``--keep``, when its ``file`` is kept. Then, in
table order: build (a kind may ask for another kind's output, which is built once, also when that
kind itself is not written), gate against the fp32 torch reference on ``engine``, write.

=================  ==============================  ========  =====  ===========  ======  =========
kind               file (manifest name)            format    prec.  gate engine  ladder  CPU class
=================  ==============================  ========  =====  ===========  ======  =========
``onnx-fp32``      ``encoder.onnx``                onnx      fp32   onnxruntime
``onnx-fp16``      ``encoder.fp16.onnx``           onnx      fp16   onnxruntime
``onnx-int8``      ``encoder.int8.onnx``           onnx      int8   onnxruntime  yes     recorded
``tensorrt-int8``  ``encoder.int8-tensorrt.onnx``  tensorrt  int8   onnxruntime
``fused-fp32``     ``fused.onnx``                  --fused   fp32   onnxruntime
``fused-fp16``     ``fused.fp16.onnx``             --fused   fp16   onnxruntime
``fused-int8``     ``fused.int8.onnx``             --fused   int8   onnxruntime          recorded
``openvino-fp32``  ``encoder.xml``                 openvino  fp32   openvino
``openvino-fp16``  ``encoder.fp16.xml``            openvino  fp16   openvino
``openvino-int8``  ``encoder.int8.xml``            openvino  int8   openvino     yes
``torch-fp32``     ``encoder.torch.pt``            torch     fp32   torch
=================  ==============================  ========  =====  ===========  ======  =========

``torch-fp32`` is the ``torch-checkpoint`` artifact of ``Reconstructor(backend="torch")``
(export/torch_artifact.py): the official key layout with fp16 weights, recorded as fp32 (the
torch runner computes at the precision asked for) and gated with the fp16 bounds.

*ladder*: int8 builds climb :data:`~smirk_edge.export.mixed_precision.LADDER` on the gate engine
(selection crops, never the gate's) before the gate; *CPU class*: the manifest records the CPU
class the gate ran on (``attrs.cpu_classes``), since int8 ONNX Runtime kernels differ per class.

Adding a kind
-------------
1. Write its builder, ``def _build_x(ctx: BuildContext, kind: ArtifactKind, rung) -> Made``: write
   the files into ``ctx.stage`` under ``kind.file`` (main file first in ``Made.files``), and return
   them with the manifest attrs, including ``"seconds"`` (``ctx.export_seconds()`` for the fp32
   ONNX export every build starts from, plus its own step under ``Made.step``). What a build
   needs is on the :class:`BuildContext`: the torch encoder, the checkpoint, the face model,
   metadata, calibration crops, options; ``ctx.made("onnx-fp32")`` is another kind's output and
   ``ctx.once(key, fn)`` shares an intermediate (the decoder graph of the fused kinds). ``rung``
   is None unless the kind climbs the ladder.
2. Add one :class:`ArtifactKind` row to :data:`KINDS`; the row's place is its place in the build,
   the gate table and the manifest. A new ``format`` becomes a ``--formats`` choice by itself
   (:data:`FORMATS`). The gate opens ``Made.files[0]`` with
   ``registry.make_runner(kind.engine, path, precision=kind.precision)``, so ``engine`` must be an
   engine of :data:`smirk_edge.runtimes.registry.ENGINES` that opens ``manifest_kind`` at that
   precision (tests/export/test_kinds.py checks every row).
3. Add the new artifact to ``EXPECTED`` in tests/export/test_export_bundle.py and, for a new
   format, the ``--formats`` help in export/cli.py and the table of docs/bundle.md ("What
   ``smirk-edge export`` writes").

Nothing here imports an engine or torch: builders import what they use when they run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from smirk_edge.errors import InputError

from .calibration import CropSet

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass
class Made:
    """What a builder wrote: ``files`` (main file first) and their manifest attrs.

    ``step`` names the builder's own entry in ``attrs["seconds"]`` (``quantize``, ``convert``,
    ``fuse``): a kind that climbs the ladder has it replaced by the time of the whole climb.
    """

    files: list[Path]
    attrs: dict[str, Any] = field(default_factory=dict)
    step: str | None = None

    @property
    def path(self) -> Path:
        return self.files[0]


Builder = Callable[["BuildContext", "ArtifactKind", Any], Made]


@dataclass(frozen=True)
class ArtifactKind:
    """One kind of artifact: what asks for it, how it is built, how it is gated and recorded.

    Attributes:
        name: the table key, e.g. ``onnx-int8``.
        file: the main file in the bundle, also the artifact's manifest name (``encoder.int8.onnx``);
            its suffix says the file format (:attr:`suffix`).
        format: the ``--formats`` value that asks for it; None when only ``option`` does.
        precision: ``fp32``, ``fp16`` or ``int8`` (``--precisions``; the gate's bounds of that precision).
        build: the builder (see the module docstring).
        engine: the engine of runtimes/registry.py that runs the gate (the manifest records it).
        manifest_kind: the artifact kind in the manifest (``onnx``, ``openvino-ir``).
        role: the manifest role (``encoder``, ``fused``).
        option: an :class:`~smirk_edge.export.pipeline.ExportOptions` flag that asks for it (``fused``).
        ladder: int8 only: climb the mixed-precision ladder on ``engine`` (with ``int8_mixed``).
        cpu_bound: record the CPU class the gate ran on (``attrs.cpu_classes``): the SDK skips the
            artifact on other classes (smirk_edge.cpu.int8_valid_classes).
        gate_bounds: the precision whose gate bounds apply (default: ``precision``), e.g. fp16
            bounds for an artifact that stores fp16 weights but is recorded as computing in fp32.
        attrs: fixed manifest attrs (``intended_engine``).
    """

    name: str
    file: str
    format: str | None
    precision: str
    build: Builder
    engine: str
    manifest_kind: str = "onnx"
    role: str = "encoder"
    option: str | None = None
    ladder: bool = False
    cpu_bound: bool = False
    gate_bounds: str | None = None
    attrs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def suffix(self) -> str:
        return Path(self.file).suffix

    def asked_for(self, formats: Sequence[str], precisions: Sequence[str], options: Any) -> bool:
        """Whether an export with these formats, precisions and options makes this kind."""
        by_format = self.format is not None and self.format in formats
        by_option = self.option is not None and bool(getattr(options, self.option, False))
        return (by_format or by_option) and self.precision in precisions


@dataclass
class BuildContext:
    """What builders share during one export (see the module docstring)."""

    stage: Path
    encoder: Any                         # the torch encoder, eval mode
    checkpoint: Any                      # smirk_edge.training.checkpoint.Checkpoint
    face_model: Any                      # smirk_edge.face_model.FaceModel
    metadata: Mapping[str, Any]          # export/metadata.py: model_metadata
    calib: CropSet                       # calibration crops (disjoint from the gate's)
    reduce_range: bool                   # 7-bit int8 weights (a CPU class without VNNI)
    exclude_op_types: Sequence[str] = ()
    progress: bool = True
    int8_mixed: bool = True
    int8_bounds: Any = None              # gate.Thresholds the ladder climbs to
    selection_crops: int = 200
    say: Callable[[str], None] = print
    kinds: Mapping[str, ArtifactKind] = field(default_factory=dict)
    _made: dict[str, Made] = field(default_factory=dict, repr=False)
    _shared: dict[str, Any] = field(default_factory=dict, repr=False)

    def made(self, name: str) -> Made:
        """The output of kind ``name``, built on first use (ladder included)."""
        if name not in self._made:
            self._made[name] = self._build(self.kinds[name])
        return self._made[name]

    def once(self, key: str, fn: Callable[[], Any]) -> Any:
        """``fn()`` the first time ``key`` is asked for, the same result after."""
        if key not in self._shared:
            self._shared[key] = fn()
        return self._shared[key]

    def export_seconds(self) -> float:
        return float(self.made("onnx-fp32").attrs["seconds"]["export"])

    def feeds(self) -> Any:
        return self.once("feeds", lambda: self.calib.feeds(batch=1))

    def _build(self, kind: ArtifactKind) -> Made:
        if not (kind.ladder and self.int8_mixed):
            return kind.build(self, kind, None)
        from . import mixed_precision

        start = time.perf_counter()
        made, ladder = mixed_precision.climb(lambda rung: kind.build(self, kind, rung),
                                             lambda m: self.selection_metrics(m.path, kind.engine),
                                             self._int8_passes, say=self.say)
        made.attrs.setdefault("quantization", {})["mixed_precision"] = ladder.to_json()
        if made.step:
            made.attrs["seconds"][made.step] = round(time.perf_counter() - start, 3)
        return made

    def _int8_passes(self, metrics: Mapping[str, float]) -> bool:
        from .gate import check

        return not check(metrics, self.int8_bounds)

    def selection_metrics(self, path: Path, engine: str) -> dict[str, float]:
        """Gate metrics of an int8 build on the selection crops (the first calibration crops,
        never the gate's held-back ones)."""
        from smirk_edge.runtimes.registry import make_runner

        from .gate import accuracy_metrics, torch_outputs

        sel = self.calib.subset(slice(0, min(self.selection_crops, len(self.calib))))
        x = self.once("selection_tensor", sel.tensor)
        ref = self.once("selection_reference", lambda: torch_outputs(self.encoder, x))
        runner = make_runner(engine, path, precision="int8")
        with runner:
            outs = [runner.infer({"image": x[i:i + 16]}) for i in range(0, len(x), 16)]
        got = {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
        return accuracy_metrics(ref, got, self.face_model)


# ---------------------------------------------------------------------------------- builders


def _onnx_opset() -> int:
    from .onnx_export import OPSET

    return OPSET


def _build_onnx_fp32(ctx: BuildContext, kind: ArtifactKind, rung: Any) -> Made:
    from .onnx_export import export_encoder

    r = export_encoder(ctx.encoder, ctx.stage / kind.file, ctx.metadata)
    return Made([r.path], {"seconds": {"export": round(r.seconds, 3)}, "opset": _onnx_opset(), "nodes": r.nodes})


def _build_onnx_fp16(ctx: BuildContext, kind: ArtifactKind, rung: Any) -> Made:
    from .quantize import to_fp16

    r = to_fp16(ctx.made("onnx-fp32").path, ctx.stage / kind.file)
    return Made([r.path], {"seconds": {"export": round(ctx.export_seconds(), 3), "quantize": round(r.seconds, 3)},
                           "opset": _onnx_opset()}, step="quantize")


def _build_onnx_int8(ctx: BuildContext, kind: ArtifactKind, rung: Any) -> Made:
    """ONNX Runtime int8 (uint8 activations), 7-bit weights where the CPU class has no VNNI."""
    from .quantize import quantize_int8

    r = quantize_int8(ctx.made("onnx-fp32").path, ctx.stage / kind.file, ctx.feeds(), flavour="x86",
                      exclude_op_types=ctx.exclude_op_types, progress=ctx.progress,
                      calibration_count=len(ctx.calib), keep_activations=rung is not None, rung=rung,
                      reduce_range=ctx.reduce_range)
    return Made([r.path], {"seconds": {"export": round(ctx.export_seconds(), 3), "quantize": round(r.seconds, 3)},
                           "opset": _onnx_opset(), "quantization": r.details}, step="quantize")


def _build_tensorrt_int8(ctx: BuildContext, kind: ArtifactKind, rung: Any) -> Made:
    """The symmetric int8 QDQ ONNX that ``build-engine --precision int8`` turns into an engine."""
    from .quantize import quantize_int8

    r = quantize_int8(ctx.made("onnx-fp32").path, ctx.stage / kind.file, ctx.feeds(), flavour="tensorrt",
                      progress=ctx.progress, calibration_count=len(ctx.calib))
    return Made([r.path], {"seconds": {"export": round(ctx.export_seconds(), 3), "quantize": round(r.seconds, 3)},
                           "opset": _onnx_opset(), "quantization": r.details}, step="quantize")


def _build_fused(ctx: BuildContext, kind: ArtifactKind, rung: Any) -> Made:
    """The ONNX encoder of the same precision joined with the face-model decoder graph."""
    from smirk_edge.training.face_model import FaceModelLayer

    from .onnx_export import export_decoder, fuse

    encoder = ctx.made(f"onnx-{kind.precision}")
    dec = ctx.once("decoder", lambda: export_decoder(
        FaceModelLayer(ctx.face_model.arrays, ctx.face_model.model_id), ctx.stage / "decoder.onnx"))
    f = fuse(encoder.path, dec.path, ctx.stage / kind.file, ctx.metadata, kind.precision)
    seconds = {**encoder.attrs["seconds"], "fuse": round(dec.seconds + f.seconds, 3)}
    return Made([f.path], {**encoder.attrs, "seconds": seconds, "nodes": f.nodes}, step="fuse")


def _build_openvino(ctx: BuildContext, kind: ArtifactKind, rung: Any) -> Made:
    """OpenVINO IR from the fp32 ONNX (int8: NNCF, calibrated on the calibration crops)."""
    from .openvino_export import to_ir

    int8 = kind.precision == "int8"
    start = time.perf_counter()
    r = to_ir(ctx.made("onnx-fp32").path, ctx.stage / kind.file, kind.precision, ctx.metadata,
              calibration=ctx.feeds() if int8 else None, calibration_count=len(ctx.calib) if int8 else None,
              rung=rung)
    seconds = {"export": round(ctx.export_seconds(), 3), "convert": round(time.perf_counter() - start, 3)}
    return Made(r.files, {"seconds": seconds, **({"quantization": r.details} if int8 else {})}, step="convert")


def _build_torch(ctx: BuildContext, kind: ArtifactKind, rung: Any) -> Made:
    """The encoder's weights in fp16, official SMIRK key layout (export/torch_artifact.py)."""
    from .torch_artifact import ATTRS, save_fp16_checkpoint

    start = time.perf_counter()
    meta = dict(getattr(ctx.checkpoint, "meta", None) or {})
    path = save_fp16_checkpoint(ctx.encoder, ctx.stage / kind.file, meta)
    return Made([path], {"seconds": {"export": round(time.perf_counter() - start, 3)}, **ATTRS}, step="export")


# ---------------------------------------------------------------------------------- the table

KINDS: tuple[ArtifactKind, ...] = (
    ArtifactKind("onnx-fp32", "encoder.onnx", "onnx", "fp32", _build_onnx_fp32, "onnxruntime"),
    ArtifactKind("onnx-fp16", "encoder.fp16.onnx", "onnx", "fp16", _build_onnx_fp16, "onnxruntime"),
    ArtifactKind("onnx-int8", "encoder.int8.onnx", "onnx", "int8", _build_onnx_int8, "onnxruntime",
                 ladder=True, cpu_bound=True),
    ArtifactKind("tensorrt-int8", "encoder.int8-tensorrt.onnx", "tensorrt", "int8", _build_tensorrt_int8,
                 "onnxruntime", attrs={"intended_engine": "tensorrt"}),
    ArtifactKind("fused-fp32", "fused.onnx", None, "fp32", _build_fused, "onnxruntime", role="fused",
                 option="fused"),
    ArtifactKind("fused-fp16", "fused.fp16.onnx", None, "fp16", _build_fused, "onnxruntime", role="fused",
                 option="fused"),
    ArtifactKind("fused-int8", "fused.int8.onnx", None, "int8", _build_fused, "onnxruntime", role="fused",
                 option="fused", cpu_bound=True),
    ArtifactKind("openvino-fp32", "encoder.xml", "openvino", "fp32", _build_openvino, "openvino",
                 manifest_kind="openvino-ir"),
    ArtifactKind("openvino-fp16", "encoder.fp16.xml", "openvino", "fp16", _build_openvino, "openvino",
                 manifest_kind="openvino-ir"),
    ArtifactKind("openvino-int8", "encoder.int8.xml", "openvino", "int8", _build_openvino, "openvino",
                 manifest_kind="openvino-ir", ladder=True),
    ArtifactKind("torch-fp32", "encoder.torch.pt", "torch", "fp32", _build_torch, "torch",
                 manifest_kind="torch-checkpoint", gate_bounds="fp16"),
)

KINDS_BY_NAME: dict[str, ArtifactKind] = {k.name: k for k in KINDS}
FORMATS: tuple[str, ...] = tuple(sorted({k.format for k in KINDS if k.format is not None}))
"""The ``--formats`` choices: every format of the table, in alphabetical order."""


def kinds_for(formats: Sequence[str], precisions: Sequence[str], options: Any,
              keep: Sequence[str] | None = None) -> list[ArtifactKind]:
    """The kinds an export makes, in table order; with ``keep`` only those whose ``file`` it names.

    Raises:
        InputError: ``keep`` names a file this export does not make.
    """
    asked = [k for k in KINDS if k.asked_for(formats, precisions, options)]
    if keep is None:
        return asked
    unknown = sorted(set(keep) - {k.file for k in asked})
    if unknown:
        raise InputError(f"--keep names artifacts this export does not make: {unknown}; it makes "
                         f"{sorted(k.file for k in asked)}")
    return [k for k in asked if k.file in set(keep)]
