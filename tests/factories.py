"""Small generated inputs for tests: random FLAME-format face models and parameters."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from smirk_edge.face_model import format as fmt


def data_root() -> Path | None:
    """``$SMIRK_EDGE_DATA`` or ``../shared/data`` beside the repository, if present."""
    env = os.environ.get("SMIRK_EDGE_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[2] / "shared" / "data")
    return next((c for c in candidates if c.is_dir()), None)


def grid_faces(nx: int, ny: int) -> np.ndarray:
    """Triangles of an ``nx x ny`` vertex grid, counter-clockwise seen from +z."""
    idx = np.arange(nx * ny).reshape(ny, nx)
    a, b = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel()
    c, d = idx[1:, :-1].ravel(), idx[1:, 1:].ravel()
    # rows go down in y (top row first), so (a, c, b) is counter-clockwise with y up
    return np.concatenate([np.stack([a, c, b], 1), np.stack([b, c, d], 1)]).astype(np.int32)


def random_face_model_arrays(nx: int = 12, ny: int = 14, seed: int = 0) -> dict[str, np.ndarray]:
    """A valid, random FLAME-format model on a curved grid about 0.15 m wide (not a face)."""
    rng = np.random.default_rng(seed)
    xs = np.linspace(-0.075, 0.075, nx)
    ys = np.linspace(0.09, -0.1, ny)
    X, Y = np.meshgrid(xs, ys)
    Z = 0.05 - 2.0 * X**2 - 1.0 * Y**2
    v = np.stack([X, Y, Z], -1).reshape(-1, 3).astype(np.float32)
    V = len(v)
    faces = grid_faces(nx, ny)
    F = len(faces)
    J = fmt.N_JOINTS
    w = rng.random((V, J)) ** 3
    w /= w.sum(1, keepdims=True)
    jreg = rng.random((J, V))
    jreg /= jreg.sum(1, keepdims=True)

    def bary(*shape):
        b = rng.random(shape + (3,)) + 0.05
        return (b / b.sum(-1, keepdims=True)).astype(np.float32)

    return {
        "v_template": v,
        "shapedirs": (rng.standard_normal((V, 3, fmt.N_SHAPE)) * 1e-3).astype(np.float32),
        "exprdirs": (rng.standard_normal((V, 3, fmt.N_EXPRESSION)) * 1e-3).astype(np.float32),
        "posedirs": (rng.standard_normal((V, 3, fmt.N_POSE_FEATURES)) * 1e-3).astype(np.float32),
        "J_regressor": jreg.astype(np.float32),
        "parents": np.array([-1, 0, 1, 1, 1], np.int32),
        "lbs_weights": w.astype(np.float32),
        "l_eyelid": (rng.standard_normal((V, 3)) * 1e-3).astype(np.float32),
        "r_eyelid": (rng.standard_normal((V, 3)) * 1e-3).astype(np.float32),
        "faces": faces,
        "lmk_faces_idx": rng.integers(0, F, fmt.N_STATIC_LMK).astype(np.int32),
        "lmk_bary_coords": bary(fmt.N_STATIC_LMK),
        "dynamic_lmk_faces_idx": rng.integers(0, F, (fmt.N_YAW_BINS, fmt.N_CONTOUR_LMK)).astype(np.int32),
        "dynamic_lmk_bary_coords": bary(fmt.N_YAW_BINS, fmt.N_CONTOUR_LMK),
        "full_lmk_faces_idx": rng.integers(0, F, 68).astype(np.int32),
        "full_lmk_bary_coords": bary(68),
        "mp_lmk_faces_idx": rng.integers(0, F, fmt.N_MP_LMK).astype(np.int32),
        "mp_lmk_bary_coords": bary(fmt.N_MP_LMK),
        "mp_landmark_indices": fmt.MEDIAPIPE_105_INDICES.copy(),
    }


def random_params(batch: int, seed: int = 0, scale: float = 1.0) -> dict[str, np.ndarray]:
    """Random SMIRK parameters in plausible ranges (pose up to ~50 degrees of yaw)."""
    rng = np.random.default_rng(seed)
    return {
        "shape": (rng.standard_normal((batch, fmt.N_SHAPE)) * scale).astype(np.float32),
        "expression": (rng.standard_normal((batch, fmt.N_EXPRESSION)) * scale).astype(np.float32),
        "pose": (rng.uniform(-0.9, 0.9, (batch, 3)) * scale).astype(np.float32),
        "jaw": np.concatenate([rng.uniform(0, 0.4, (batch, 1)), rng.uniform(-0.2, 0.2, (batch, 2))],
                              1).astype(np.float32),
        "eyelid": rng.uniform(0, 1, (batch, 2)).astype(np.float32),
    }


def make_tiny_bundle(root, seed: int = 0, face_model_arrays: dict | None = None, openvino: bool = False,
                     torch_artifact: bool = False):
    """A bundle with a random-weight tiny encoder (ONNX fp32, dynamic batch), a face model and no
    detector artifacts (the Reconstructor then uses the detectors shipped in the package).

    Needs torch + timm + onnx. The encoder gets SMIRK's head initialisation, so the camera scale is
    about 7 and faces land inside their crops.
    """
    from pathlib import Path

    import torch

    from smirk_edge.bundle import BundleWriter
    from smirk_edge.training.encoder import OUTPUT_NAMES, EncoderConfig, SmirkEncoder

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    enc = SmirkEncoder(EncoderConfig.tiny())
    enc.init_weights()
    enc.eval()
    if torch_artifact:
        with torch.no_grad():
            for p in enc.state_dict().values():
                if p.is_floating_point():
                    p.copy_(p.half().float())
    onnx_path = root / "encoder.onnx"
    torch.onnx.export(enc, (torch.rand(2, 3, 224, 224),), str(onnx_path), input_names=["image"],
                      output_names=list(OUTPUT_NAMES),
                      dynamic_shapes={"image": {0: torch.export.Dim("batch", min=1, max=256)}},
                      opset_version=18, external_data=False, dynamo=True, verbose=False)
    fm_path = root / "face_model.npz"
    fmt.save(fm_path, face_model_arrays or random_face_model_arrays(seed=seed), model_id="test-grid")
    w = BundleWriter(root, metadata={"encoder_variant": "tiny", "input_size": 224})
    w.add("encoder.onnx", "onnx", "encoder", onnx_path, precision="fp32")
    w.add("face_model.npz", "face-model", "face_model", fm_path)
    if openvino:
        from smirk_edge._lazy import require

        ov = require("openvino")  # telemetry off, as in the SDK

        ir = root / "encoder.xml"
        ov.save_model(ov.convert_model(str(onnx_path)), str(ir), compress_to_fp16=False)
        w.add("encoder-ir", "openvino-ir", "encoder", [ir, ir.with_suffix(".bin")], precision="fp32")
    if torch_artifact:  # stored in fp16: the ONNX above was exported from the same (rounded) weights
        from smirk_edge.export.torch_artifact import add_torch_artifact

        add_torch_artifact(w, enc, root)
    return w.write(), enc
