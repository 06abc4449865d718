"""OpenVINO IR (``.xml`` + ``.bin``) in fp32, fp16 and int8 from the fp32 ONNX encoder.

* fp32: ``ov.convert_model`` + ``ov.save_model(..., compress_to_fp16=False)`` (``save_model``
  otherwise stores fp16 weights silently). **Run it with** ``INFERENCE_PRECISION_HINT='f32'``:
  on CPUs with AVX-512 BF16 / AMX (this machine) OpenVINO otherwise computes in bf16 (1.5e-2
  drift); :class:`smirk_edge.runtimes.OvRunner` sets the hint from the artifact's precision.
* fp16: weights stored in fp16 (``compress_to_fp16=True``); the device decides the compute
  precision (f16 on GPU/NPU, and on CPUs with AVX-512 FP16 when the hint is ``f16``).
* int8: NNCF post-training quantization (``nncf.quantize``, preset PERFORMANCE: symmetric
  int8) calibrated on the same real face crops as ONNX Runtime's int8, through the one
  calibration contract (:func:`smirk_edge.export.calibration.nncf_dataset`). The IR is meant for
  OpenVINO (run through ONNX Runtime, NNCF-quantized graphs are slow; see TOOLCHAIN_NOTES.md).

The smirk-edge metadata goes into the IR's ``rt_info`` under ``smirk_edge`` (same keys and JSON
values as the ONNX ``metadata_props``; :func:`read_ir_metadata`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smirk_edge._lazy import require
from smirk_edge.errors import InputError

from .calibration import Feed, nncf_dataset, warn_if_small
from .metadata import flatten, unflatten

PRECISIONS = ("fp32", "fp16", "int8")
RT_INFO_KEY = "smirk_edge"


@dataclass
class IrResult:
    """An IR pair: ``xml`` and ``bin`` paths, wall seconds of conversion (+ quantization), details."""

    xml: Path
    bin: Path
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def files(self) -> list[Path]:
        return [self.xml, self.bin]


def _set_rt_info(model: Any, metadata: Mapping[str, Any] | None, precision: str) -> None:
    if metadata is None:
        return
    for key, value in flatten(metadata, precision).items():
        model.set_rt_info(value, [RT_INFO_KEY, key[len("smirk_edge."):]])


def read_ir_metadata(xml: str | os.PathLike) -> dict[str, Any]:
    """The smirk-edge metadata stored in an IR's ``rt_info``."""
    ov = require("openvino")
    model = ov.Core().read_model(str(xml))
    if not model.has_rt_info([RT_INFO_KEY]):
        return {}
    info = model.get_rt_info()[RT_INFO_KEY]  # {key: OVAny}
    props = {"smirk_edge." + str(k): v.astype(str) for k, v in dict(info).items()}
    return unflatten(props)


def _quiet_nncf() -> None:
    logging.getLogger("nncf").setLevel(logging.WARNING)
    try:
        nncf = require("nncf")
        nncf.set_log_level(logging.WARNING)
    except Exception:  # noqa: BLE001 - logging only
        pass


def to_ir(onnx_path: str | os.PathLike, xml_path: str | os.PathLike, precision: str = "fp32",
          metadata: Mapping[str, Any] | None = None, calibration: Iterable[Feed] | None = None,
          calibration_count: int | None = None, rung: Any = None) -> IrResult:
    """Convert an fp32 ONNX encoder to an OpenVINO IR of ``precision``.

    Args:
        onnx_path: the fp32 ``.onnx`` (dynamic batch is kept).
        xml_path: output ``.xml`` (the ``.bin`` is written beside it).
        precision: ``'fp32'``, ``'fp16'`` or ``'int8'``.
        metadata: the export metadata (stored in ``rt_info``).
        calibration: int8 only: feed dicts ``{"image": (1, 3, 224, 224) float32}`` of real crops.
        calibration_count: number of crops behind ``calibration`` (warns under 300).
        rung: int8 only: a :class:`~smirk_edge.export.mixed_precision.Rung` whose branches / heads
            NNCF leaves in float (its ignored scope).
    """
    ov = require("openvino")
    if precision not in PRECISIONS:
        raise InputError(f"unknown OpenVINO precision {precision!r}; choose one of {list(PRECISIONS)}")
    xml = Path(xml_path)
    xml.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    model = ov.convert_model(str(onnx_path))
    details: dict[str, Any] = {"openvino": ov.get_version()}
    if precision == "int8":
        if calibration is None:
            raise InputError("OpenVINO int8 needs calibration feeds of real face crops")
        if calibration_count is not None:
            warn_if_small(calibration_count)
        nncf = require("nncf")
        _quiet_nncf()
        dataset = nncf_dataset(calibration)
        n = calibration_count or (len(calibration) if hasattr(calibration, "__len__") else 300)
        kw = {}
        if rung is not None:
            from .mixed_precision import openvino_float_ops

            names = openvino_float_ops(model, rung)
            if names:
                kw["ignored_scope"] = nncf.IgnoredScope(names=names, validate=False)
            details["mixed_precision"] = {**rung.to_json(), "float_ops": len(names)}
        model = nncf.quantize(model, dataset, subset_size=int(n), preset=nncf.QuantizationPreset.PERFORMANCE,
                              model_type=None, **kw)
        if rung is not None and rung.float_branches:
            # the layers left in float keep float activations but store int8 weights (per-channel,
            # decompressed on load): the IR shrinks by ~2/3 of their bytes; the gate checks the result
            model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
            details["mixed_precision"]["float_layers_weights"] = "int8_asym per-channel (weight-only)"
        details.update({"nncf": nncf.__version__, "preset": "performance", "subset_size": int(n),
                        "calibration_crops": calibration_count})
    _set_rt_info(model, {**(metadata or {}), **({"int8": details} if precision == "int8" else {})}
                 if metadata is not None else None, precision)
    # int8: the layers NNCF leaves in float (mixed precision) are stored in fp16 too, as in an fp16
    # IR; the CPU plugin computes them in fp32 under INFERENCE_PRECISION_HINT f32
    ov.save_model(model, str(xml), compress_to_fp16=(precision in ("fp16", "int8")))
    return IrResult(xml, xml.with_suffix(".bin"), time.perf_counter() - start, details)
