"""One CI-sized bundle for the export tests: the tiny encoder, a random face model, real crops.

Crops come from ../shared/data/faces/utkface through the SDK's own preprocessing when the folder
is present; otherwise from drawn face-like images (``synthetic_face_crops``, a CI fallback that is
labelled as such in the bundle: the real path is covered whenever the data exists).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="torch not installed (pip install 'smirk-edge[export]')")
pytest.importorskip("timm", reason="timm not installed (pip install 'smirk-edge[export]')")
pytest.importorskip("onnx", reason="onnx not installed (pip install 'smirk-edge[export]')")
pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install 'smirk-edge[export]')")



from factories import data_root  # noqa: E402  (tests/ is on sys.path via tests/conftest.py)

GATE_CROPS = 24
CALIB_CROPS = 40


def _crops():
    from smirk_edge.export.calibration import collect_crops, synthetic_face_crops

    root = data_root()
    if root is not None and (root / "faces" / "utkface").is_dir():
        return collect_crops(root / "faces" / "utkface", limit=GATE_CROPS + CALIB_CROPS, progress=False)
    return synthetic_face_crops(GATE_CROPS + CALIB_CROPS)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    import torch

    from smirk_edge.training.checkpoint import save_checkpoint
    from smirk_edge.training.encoder import EncoderConfig, SmirkEncoder

    torch.manual_seed(0)
    enc = SmirkEncoder(EncoderConfig.tiny())
    enc.init_weights()
    with torch.no_grad():  # let pose and expression vary with the image (SMIRK's init keeps them near 0)
        enc.pose_encoder.pose_cam_layers[0].weight[:3].normal_(0, 0.05)
        enc.expression_encoder.expression_layers[0].weight.normal_(0, 0.2)
    path = save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", enc)
    # exactly the official SMIRK_em1.pt layout: a flat state dict, no smirk-edge metadata, a
    # generator entry beside the encoder
    state = {k: v for k, v in torch.load(path, weights_only=True).items() if k.startswith("smirk_encoder.")}
    state["smirk_generator.encoder1.enc1conv1.weight"] = torch.zeros(32, 6, 3, 3)
    torch.save(state, path)
    return path


@pytest.fixture(scope="session")
def face_model_file(tmp_path_factory) -> Path:
    from factories import random_face_model_arrays

    from smirk_edge.face_model import format as fmt

    return fmt.save(tmp_path_factory.mktemp("fm") / "face_model.npz", random_face_model_arrays(), "random-test-model")


@pytest.fixture(scope="session")
def crop_set():
    return _crops()


@pytest.fixture(scope="session")
def exported(tmp_path_factory, tiny_checkpoint, face_model_file, crop_set):
    """(ExportReport, bundle root, report dir) of a full CI-sized export."""
    pytest.importorskip("openvino", reason="openvino not installed (pip install 'smirk-edge[export]')")
    pytest.importorskip("nncf", reason="nncf not installed (pip install 'smirk-edge[export]')")
    from smirk_edge.export.pipeline import ExportOptions, export_bundle

    root = tmp_path_factory.mktemp("bundle") / "tiny.bundle"
    report_dir = tmp_path_factory.mktemp("gate")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fewer than 300 calibration crops, by design here
        report = export_bundle(ExportOptions(
            checkpoint=tiny_checkpoint, output=root, face_model=face_model_file,
            formats=("onnx", "openvino", "tensorrt", "torch"), precisions=("fp32", "fp16", "int8"), crops=crop_set,
            fused=True, gate_count=GATE_CROPS, min_gate_count=GATE_CROPS, calib_count=CALIB_CROPS, golden_count=8,
            report_dir=report_dir, progress=False))
    return report, root, report_dir
