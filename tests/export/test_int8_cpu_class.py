"""int8 per CPU class on the export side: the gate's CPU class in the manifest, --int8-cpu-class,
7-bit weights (reduce_range) for CPUs without VNNI, and the Reconstructor honouring the record."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from smirk_edge import cpu
from smirk_edge.bundle import Bundle
from smirk_edge.errors import InputError

pytestmark = [pytest.mark.torch, pytest.mark.onnxruntime]


def test_int8_onnx_artifacts_record_the_gate_cpu_class(exported):
    _, root, _ = exported
    b = Bundle(root)
    here = cpu.cpu_class()
    for name in ("encoder.int8.onnx", "fused.int8.onnx"):
        a = b.get(name)
        assert a.attrs["cpu_classes"] == list(cpu.exact_int8_family(here)) and here in a.attrs["cpu_classes"]
        assert a.attrs["accuracy"]["cpu_class"] == here
        assert a.attrs["quantization"]["reduce_range"] is (not cpu.has_vnni(here))
    assert "cpu_classes" not in b.get("encoder.int8-tensorrt.onnx").attrs  # TensorRT builds it on the GPU
    assert "cpu_classes" not in b.get("encoder.int8.xml").attrs  # OpenVINO int8 is not limited
    assert b.get("encoder.onnx").attrs["accuracy"]["cpu_class"] == here


def test_bundle_skips_int8_onnx_on_another_cpu_class(exported, monkeypatch):
    _, root, _ = exported
    other = "avx2" if cpu.cpu_class() != "avx2" else "amx"
    names = [a.name for a in Bundle(root).runnable_encoders("int8", cpu_class=other)]
    assert "encoder.int8.onnx" not in names and "fused.int8.onnx" not in names
    assert "encoder.int8.xml" in names
    names = [a.name for a in Bundle(root).runnable_encoders("int8")]
    assert "encoder.int8.onnx" in names


def test_int8_cpu_class_must_be_the_machine_the_gate_runs_on(tiny_checkpoint, tmp_path):
    from smirk_edge.export.pipeline import ExportOptions

    other = "avx2" if cpu.cpu_class() != "avx2" else "amx"
    with pytest.raises(InputError, match=f"--int8-cpu-class {other}: this machine is"):
        ExportOptions(checkpoint=tiny_checkpoint, output=tmp_path / "b", calib=str(tmp_path),
                      int8_cpu_class=other).validate()
    ExportOptions(checkpoint=tiny_checkpoint, output=tmp_path / "b", calib=str(tmp_path),
                  int8_cpu_class=cpu.cpu_class()).validate()


def test_export_cli_has_the_option():
    from smirk_edge.export.cli import export_parser

    args = export_parser().parse_args(["--checkpoint", "c.pt", "-o", "out", "--calib", "d", "--int8-cpu-class", "avx2"])
    assert args.int8_cpu_class == "avx2"
    with pytest.raises(SystemExit):
        export_parser().parse_args(["--checkpoint", "c.pt", "-o", "o", "--calib", "d", "--int8-cpu-class", "sse"])


def test_reduce_range_keeps_weights_to_seven_bits(exported, crop_set, tmp_path):
    import onnx
    from onnx import numpy_helper

    from smirk_edge.export.quantize import quantize_int8

    _, root, _ = exported
    calib = crop_set.subset(slice(0, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = quantize_int8(root / "encoder.onnx", tmp_path / "full.onnx", calib.feeds(batch=1), progress=False)
        small = quantize_int8(root / "encoder.onnx", tmp_path / "small.onnx", calib.feeds(batch=1), progress=False,
                              reduce_range=True)
    assert small.details["reduce_range"] is True and full.details["reduce_range"] is False

    def weight_range(path):
        m = onnx.load(str(path))
        ws = [numpy_helper.to_array(i) for i in m.graph.initializer if i.data_type == onnx.TensorProto.INT8]
        return min(int(w.min()) for w in ws), max(int(w.max()) for w in ws)

    # 7-bit symmetric weights: |w| <= 64, so two u8 x s8 products sum to at most 255 * 64 * 2 = 32640,
    # inside int16 (no saturation without VNNI); full range reaches 127
    lo, hi = weight_range(small.path)
    assert max(-lo, hi) <= 64
    lo_full, hi_full = weight_range(full.path)
    assert max(-lo_full, hi_full) > 64
    assert np.isfinite(lo)
