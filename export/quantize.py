"""fp16 and int8 versions of an fp32 ONNX encoder.

fp16 (:func:`to_fp16`): weights and arithmetic in float16, **inputs and outputs stay float32**
(``keep_io_types``), so every runner feeds the same ``image`` array. Ops listed in
``keep_float_ops`` stay float32 (default none: on the SMIRK encoder every op is fine in fp16,
measured by the accuracy gate). The face-model decoder is never converted (fused graphs join an
fp16 encoder with an fp32 decoder; see :mod:`.onnx_export`).

int8 (:func:`quantize_int8`): ONNX Runtime static quantization to QDQ, after
``quant_pre_process`` (shape inference + graph optimisation; it renames nodes, so exclusion
lists must name nodes of the pre-processed graph), calibrated on real face crops through the
calibration contract (:mod:`.calibration`). Two flavours, because the engines disagree:

=============  =====================================  =====================================
flavour        activations / weights                  why
=============  =====================================  =====================================
``x86``        uint8 asymmetric / int8 per-channel    the combination ONNX Runtime fuses fully
               symmetric                              into QLinearConv on x86 (VNNI). ORT's
                                                      defaults (int8 activations) leave a third
                                                      of the convs in float and run *slower*
                                                      than fp32 (measured; see the report).
``tensorrt``   int8 symmetric / int8 per-channel      TensorRT's explicit quantization accepts
               symmetric                              only zero-point-0 int8 Q/DQ; build the
                                                      int8 engine from this one.
=============  =====================================  =====================================
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from smirk_edge._lazy import require
from smirk_edge.errors import InputError

from .calibration import Feed, ort_reader, warn_if_small
from .metadata import set_onnx_metadata
from .onnx_export import ExportError, strip_node_metadata, toposort

FLAVOURS = {
    "x86": {"activation_type": "QUInt8", "weight_type": "QInt8", "symmetric_activations": False},
    "tensorrt": {"activation_type": "QInt8", "weight_type": "QInt8", "symmetric_activations": True},
}
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")


@dataclass
class QuantResult:
    """One quantized file: path, wall seconds (pre-process + calibration + writing), details."""

    path: Path
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)


def _copy_metadata(src_model: Any, dst_path: Path, precision: str, extra: Mapping[str, Any] | None = None) -> None:
    onnx = require("onnx")
    from .metadata import unflatten

    meta = unflatten({p.key: p.value for p in src_model.metadata_props})
    meta.pop("precision", None)
    meta.update(dict(extra or {}))
    model = onnx.load(str(dst_path))
    strip_node_metadata(model)
    set_onnx_metadata(model, meta, precision)
    model.producer_name = "smirk-edge"
    onnx.save(model, str(dst_path))


def to_fp16(src: str | os.PathLike, dst: str | os.PathLike, keep_float_ops: Sequence[str] = (),
            keep_float_nodes: Sequence[str] = ()) -> QuantResult:
    """Convert an fp32 ONNX model to fp16 weights and compute with float32 inputs/outputs.

    Args:
        src, dst: fp32 input and fp16 output ``.onnx``.
        keep_float_ops: op types to keep in float32 (e.g. ``["Sigmoid"]``).
        keep_float_nodes: node names to keep in float32.
    """
    onnx = require("onnx")
    float16 = require("onnxruntime.transformers.float16")
    start = time.perf_counter()
    model = onnx.load(str(src))
    kwargs: dict[str, Any] = {"keep_io_types": True}
    if keep_float_ops:
        kwargs["op_block_list"] = list(keep_float_ops)
    if keep_float_nodes:
        kwargs["node_block_list"] = list(keep_float_nodes)
    half = toposort(float16.convert_float_to_float16(model, **kwargs))
    try:
        onnx.checker.check_model(half)
    except Exception as exc:
        raise ExportError(f"fp16 conversion produced an invalid model: {exc}") from exc
    dst = Path(dst)
    onnx.save(half, str(dst))
    _copy_metadata(model, dst, "fp16", {"fp16": {"keep_float_ops": list(keep_float_ops),
                                                   "keep_float_nodes": list(keep_float_nodes)}})
    return QuantResult(dst, time.perf_counter() - start,
                       {"keep_float_ops": list(keep_float_ops), "keep_float_nodes": list(keep_float_nodes)})


def quantize_int8(src: str | os.PathLike, dst: str | os.PathLike, calibration: Iterable[Feed],
                  flavour: str = "x86", per_channel: bool = True, method: str = "minmax",
                  exclude_nodes: Sequence[str] = (), exclude_op_types: Sequence[str] = (),
                  progress: bool = True, calibration_count: int | None = None,
                  keep_activations: bool = False, rung: Any = None, compact_float: bool = True,
                  reduce_range: bool = False) -> QuantResult:
    """Static int8 QDQ quantization of an fp32 ONNX model, calibrated on feed dicts.

    Args:
        src, dst: fp32 input, int8 QDQ output ``.onnx``.
        calibration: the calibration contract: an iterable of ``{"image": (b, 3, 224, 224) float32}``
            made from real face crops (:meth:`CropSet.feeds`). Re-iterable is best (ORT may rewind).
        flavour: ``'x86'`` (uint8 activations, for ONNX Runtime on CPUs) or ``'tensorrt'``
            (symmetric int8 activations, zero point 0, for TensorRT explicit quantization).
        per_channel: per-output-channel weight scales (recommended; both flavours fuse with it).
        method: ``'minmax'`` (default), ``'percentile'`` (99.999th) or ``'entropy'``.
        exclude_nodes: names (of the pre-processed graph) to keep in float.
        exclude_op_types: op types to leave unquantized (e.g. ``["Gemm"]`` keeps the heads float).
        calibration_count: number of crops behind ``calibration`` (warns under 300; None: skip).
        keep_activations: keep the Relu/Clip nodes that a uint8 Q node would otherwise absorb, so
            that any Q/DQ pair can later be taken out (mixed precision) without losing a Relu.
        rung: a :class:`~smirk_edge.export.mixed_precision.Rung`: the branches / heads it names
            stay float (added to ``exclude_nodes``).
        compact_float: with ``rung``: store the float layers' weights in fp16 behind a Cast
            (:func:`store_float_weights_fp16`): the file shrinks, the arithmetic stays fp32.
        reduce_range: 7-bit weights, for CPUs without VNNI (AVX2, AVX-512 without VNNI), where ONNX
            Runtime's u8s8 kernels sum u8 x s8 pairs in int16 and saturate with full-range weights.
    """
    quant = require("onnxruntime.quantization")
    shape_inference = require("onnxruntime.quantization.shape_inference")
    onnx = require("onnx")
    if flavour not in FLAVOURS:
        raise InputError(f"unknown int8 flavour {flavour!r}; choose one of {sorted(FLAVOURS)}")
    if method not in CALIBRATION_METHODS:
        raise InputError(f"unknown calibration method {method!r}; choose one of {list(CALIBRATION_METHODS)}")
    if calibration_count is not None:
        warn_if_small(calibration_count)
    cfg = FLAVOURS[flavour]
    start = time.perf_counter()
    dst = Path(dst)
    src_model = onnx.load(str(src))
    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        pre = Path(tmp) / "pre.onnx"
        shape_inference.quant_pre_process(str(src), str(pre), skip_symbolic_shape=False)
        exclude_nodes = list(exclude_nodes)
        if rung is not None:
            from .mixed_precision import onnx_float_nodes

            exclude_nodes += [n for n in onnx_float_nodes(pre, rung) if n not in exclude_nodes]
        op_types = None
        if exclude_op_types:
            all_ops = {n.op_type for n in onnx.load(str(pre)).graph.node}
            op_types = sorted(all_ops - set(exclude_op_types))
        methods = {"minmax": quant.CalibrationMethod.MinMax, "percentile": quant.CalibrationMethod.Percentile,
                   "entropy": quant.CalibrationMethod.Entropy}
        extra = {"ActivationSymmetric": cfg["symmetric_activations"], "WeightSymmetric": True}
        if keep_activations:
            extra["QDQKeepRemovableActivations"] = True
        reader = ort_reader(calibration, progress=progress, total=calibration_count)
        quant.quantize_static(
            str(pre), str(dst), reader, quant_format=quant.QuantFormat.QDQ, per_channel=per_channel,
            activation_type=getattr(quant.QuantType, cfg["activation_type"]),
            weight_type=getattr(quant.QuantType, cfg["weight_type"]),
            calibrate_method=methods[method], nodes_to_exclude=list(exclude_nodes),
            op_types_to_quantize=op_types, extra_options=extra, reduce_range=reduce_range)
    if rung is not None and compact_float:
        details_compact = store_float_weights_fp16(dst)
    else:
        details_compact = None
    details = {"flavour": flavour, "activations": cfg["activation_type"], "weights": cfg["weight_type"],
               "symmetric_activations": cfg["symmetric_activations"], "per_channel": per_channel,
               "calibration_method": method, "calibration_crops": calibration_count, "reduce_range": reduce_range,
               "excluded_nodes": list(exclude_nodes), "excluded_op_types": list(exclude_op_types)}
    if rung is not None:
        details["mixed_precision"] = rung.to_json()
    if details_compact is not None:
        details["float_weights_stored_fp16"] = details_compact
    _copy_metadata(src_model, dst, "int8", {"int8": details})
    return QuantResult(dst, time.perf_counter() - start, details)


def store_float_weights_fp16(path: str | os.PathLike, min_elements: int = 1024) -> dict[str, int]:
    """Rewrite an ONNX file so that the float weights of ``Conv`` / ``Gemm`` / ``MatMul`` nodes (the
    layers a mixed-precision int8 model keeps in float) are stored as fp16 with a ``Cast`` to fp32
    in front: half the bytes, the same fp32 arithmetic (ONNX Runtime folds the Cast when the session
    is created). Weights under ``min_elements`` and int8 (DequantizeLinear-fed) weights are left as
    they are. Returns counts: ``{"tensors": n, "bytes_saved": b}``.
    """
    onnx = require("onnx")
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    users: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    n_done, saved, new_nodes = 0, 0, []
    for name, t in list(inits.items()):
        if t.data_type != TensorProto.FLOAT:
            continue
        consumers = users.get(name, [])
        if not consumers or any(c.op_type not in ("Conv", "Gemm", "MatMul") or list(c.input).index(name) != 1
                                for c in consumers):
            continue
        arr = numpy_helper.to_array(t)
        if arr.size < min_elements:
            continue
        half = numpy_helper.from_array(arr.astype("float16"), name + "_fp16")
        g.initializer.remove(t)
        g.initializer.append(half)
        new_nodes.append(helper.make_node("Cast", [half.name], [name], to=TensorProto.FLOAT, name=name + "_cast"))
        n_done += 1
        saved += arr.size * 2
    if n_done:
        for node in reversed(new_nodes):
            g.node.insert(0, node)
        onnx.save(model, str(path))
    return {"tensors": n_done, "bytes_saved": int(saved)}
