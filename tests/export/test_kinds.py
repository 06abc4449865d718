"""The table of artifact kinds (export/kinds.py): every row is consistent, options select rows."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from smirk_edge.errors import InputError
from smirk_edge.export import FORMATS, KINDS, PRECISIONS, ArtifactKind
from smirk_edge.export.kinds import kinds_for
from smirk_edge.runtimes.registry import ENGINES

SUFFIX = {"onnx": ".onnx", "openvino-ir": ".xml"}


def test_every_row_is_consistent():
    assert len({k.name for k in KINDS}) == len(KINDS) and len({k.file for k in KINDS}) == len(KINDS)
    for k in KINDS:
        assert k.precision in PRECISIONS, k
        assert (k.format is None) != (k.option is None), f"{k.name}: asked for by a format or by an option"
        assert k.engine in ENGINES and ENGINES[k.engine].opens(k.manifest_kind, k.precision), k
        assert k.suffix == SUFFIX.get(k.manifest_kind, k.suffix), k
        assert callable(k.build)
        assert not k.ladder or k.precision == "int8", k
        assert k.gate_bounds is None or k.gate_bounds in PRECISIONS, k


def test_formats_are_the_cli_choices():
    from smirk_edge.export.cli import export_parser

    assert {"onnx", "openvino", "tensorrt"} <= set(FORMATS) and list(FORMATS) == sorted(FORMATS)
    assert export_parser().parse_args(["--checkpoint", "c", "-o", "o", "--calib", "d",
                                       "--formats", ",".join(FORMATS)]).formats == list(FORMATS)


def _files(formats, precisions=PRECISIONS, fused=False, keep=None):
    return [k.file for k in kinds_for(formats, precisions, SimpleNamespace(fused=fused), keep)]


def test_options_select_rows_in_table_order():
    assert _files(["onnx", "openvino"], ["fp32", "int8"]) == [
        "encoder.onnx", "encoder.int8.onnx", "encoder.xml", "encoder.int8.xml"]
    assert _files(["openvino"], ["fp16"], fused=True) == ["fused.fp16.onnx", "encoder.fp16.xml"]
    assert _files(["tensorrt"], ["fp32"]) == []
    assert _files(["onnx", "tensorrt"], ["int8"], keep=["encoder.int8-tensorrt.onnx"]) == ["encoder.int8-tensorrt.onnx"]
    with pytest.raises(InputError, match="does not make: \\['encoder.int8.xml'\\]"):
        _files(["onnx"], ["int8"], keep=["encoder.int8.xml"])


def test_a_row_is_asked_for_by_its_format_or_its_option():
    k = ArtifactKind("x-fp16", "x.fp16.onnx", "x", "fp16", lambda ctx, kind, rung: None, "onnxruntime")
    assert k.asked_for(["x"], ["fp16"], SimpleNamespace()) and not k.asked_for(["x"], ["fp32"], SimpleNamespace())
    f = ArtifactKind("y", "y.onnx", None, "fp32", lambda ctx, kind, rung: None, "onnxruntime", option="fused")
    assert f.asked_for([], ["fp32"], SimpleNamespace(fused=True)) and not f.asked_for(["onnx"], ["fp32"],
                                                                                      SimpleNamespace(fused=False))
