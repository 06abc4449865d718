"""The benchmark bundle: the full-size SMIRK encoder with random weights, in every CPU format.

Until a trained demo model exists the harness measures a random-weight full encoder (latency does
not depend on the weights). :func:`build_bench_bundle` makes it once and reuses it:

1. **With the export toolchain** (:func:`smirk_edge.export.pipeline.export_bundle`): a random
   checkpoint in the official layout (SMIRK's head initialisation), ONNX fp32 + int8 and OpenVINO IR
   fp32 + int8, gated against fp32 torch on held-back real face crops of ../shared/data
   (``allow_degraded``: random weights may fail a gate; the numbers are kept in
   ``attrs["accuracy"]``).
2. **Fallback** when the toolchain is unavailable or fails (:func:`build_minimal_bundle`): ONNX
   fp32 (``torch.onnx.export`` dynamo, opset 18, one file, dynamic batch), ONNX int8 (ORT
   ``quantize_static`` after ``quant_pre_process``, QUInt8 activations + per-channel QInt8
   weights, calibrated on real face crops when present, else drawn ones) and an OpenVINO IR fp32;
   no accuracy numbers.

The manifest's metadata says ``weights: "random ..."`` so every row and the report say so.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

WEIGHTS_NOTE = "random (SMIRK head initialisation, seed 0): no trained demo model yet"


def _crops_for_calibration(n: int) -> np.ndarray:
    """Real face crops ``(n, 3, 224, 224)`` made with the SDK's crop (UTKFace, centred box), or drawn faces."""
    import cv2

    from smirk_edge.crop import crop_from_box, preprocess

    from .inputs import IMAGE_SUFFIXES, data_root, drawn_face

    root = data_root()
    files = []
    if root is not None and (root / "faces" / "utkface").is_dir():
        files = sorted(p for p in (root / "faces" / "utkface").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:n]
    out = []
    for i in range(n):
        img = cv2.imread(str(files[i])) if i < len(files) else None
        if img is None:
            img = drawn_face(256)
        h, w = img.shape[:2]
        s = 0.97 * min(h, w)
        box = np.array([w / 2 - s / 2, h / 2 - s / 2, w / 2 + s / 2, h / 2 + s / 2])
        out.append(preprocess(img, [crop_from_box(box)])[0])
    return np.stack(out)


def random_encoder(variant: str = "full"):
    """A SMIRK encoder with random weights and SMIRK's head initialisation (seed 0), eval mode."""
    import torch

    from smirk_edge.training.encoder import EncoderConfig, SmirkEncoder

    torch.manual_seed(0)
    enc = SmirkEncoder(EncoderConfig.named(variant))
    enc.init_weights()
    return enc.eval()


def build_minimal_bundle(root: str | Path, variant: str = "full", calib_count: int = 64,
                         openvino: bool = True) -> "object":
    """Fallback bundle without the export toolchain (see the module docstring). Returns the Bundle."""
    import torch

    from smirk_edge._lazy import available
    from smirk_edge.bundle import BundleWriter
    from smirk_edge.face_model import standin_path
    from smirk_edge.training.encoder import OUTPUT_NAMES

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    enc = random_encoder(variant)
    fp32 = root / "encoder.onnx"
    torch.onnx.export(enc, (torch.rand(2, 3, 224, 224),), str(fp32), input_names=["image"],
                      output_names=list(OUTPUT_NAMES),
                      dynamic_shapes={"image": {0: torch.export.Dim("batch", min=1, max=1024)}},
                      opset_version=18, external_data=False, dynamo=True, verbose=False)
    w = BundleWriter(root, metadata={"encoder_variant": variant, "input_size": 224, "weights": WEIGHTS_NOTE,
                                     "face_model_id": "standin"}, overwrite=True)
    w.add("encoder.onnx", "onnx", "encoder", fp32, precision="fp32")
    fm = root / "face_model.npz"
    shutil.copyfile(standin_path(), fm)
    w.add("face_model", "face-model", "face_model", fm)

    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quant_pre_process,
                                          quantize_static)

    crops = _crops_for_calibration(calib_count)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.i = 0

        def get_next(self):
            if self.i >= len(crops):
                return None
            self.i += 1
            return {"image": crops[self.i - 1:self.i]}

        def rewind(self):
            self.i = 0

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre))
        int8 = root / "encoder.int8.onnx"
        quantize_static(str(pre), str(int8), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
    w.add("encoder.int8.onnx", "onnx", "encoder", int8, precision="int8",
          attrs={"quantization": {"activations": "QUInt8", "weights": "QInt8 per channel", "crops": len(crops)}})
    if openvino and available("openvino"):
        import openvino as ov

        xml = root / "encoder.xml"
        ov.save_model(ov.convert_model(str(fp32)), str(xml), compress_to_fp16=False)
        w.add("encoder.xml", "openvino-ir", "encoder", [xml, xml.with_suffix(".bin")], precision="fp32")
    return w.write()


def build_bench_bundle(root: str | Path, variant: str = "full", log: Callable[[str], None] = print,
                       rebuild: bool = False):
    """The benchmark bundle in ``root``: reused when its manifest exists, else built (toolchain first)."""
    from smirk_edge.bundle import Bundle, BundleWriter
    from smirk_edge.errors import BundleError

    root = Path(root)
    if (root / "manifest.json").is_file() and not rebuild:
        try:
            b = Bundle(root)
            b.verify_all()
            log(f"[bench] reusing benchmark bundle {root}")
            return b
        except BundleError as exc:
            log(f"[bench] rebuilding the benchmark bundle: {exc}")
    from .inputs import data_root

    calib = data_root()
    try:
        from smirk_edge.export.pipeline import ExportOptions, export_bundle
        from smirk_edge.training.checkpoint import save_checkpoint

        if calib is None or not (calib / "faces" / "utkface").is_dir():
            raise RuntimeError("no real face photos for calibration and the gate")
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = save_checkpoint(Path(tmp) / "random.pt", random_encoder(variant), meta={"weights": WEIGHTS_NOTE})
            log("[bench] building the benchmark bundle with the export toolchain (a few minutes, once)")
            export_bundle(ExportOptions(checkpoint=ckpt, output=root, calib=calib / "faces" / "utkface",
                                        formats=("onnx", "openvino"), precisions=("fp32", "int8"), gate_count=200,
                                        calib_count=300, allow_degraded=True, progress=False))
    except Exception as exc:  # noqa: BLE001 - any toolchain failure: the minimal fallback still measures
        log(f"[bench] export toolchain unavailable or failed ({type(exc).__name__}: {str(exc)[:200]}); "
            "building a minimal bundle instead")
        if root.exists():
            shutil.rmtree(root)
        build_minimal_bundle(root, variant)
    w = BundleWriter(root)
    w.metadata["weights"] = WEIGHTS_NOTE
    return w.write()
