"""Metadata that travels with every exported model (STYLE #5).

One dict, built once per export by :func:`model_metadata`, goes three places:

* the bundle manifest (``metadata``), structured JSON;
* every ONNX file's ``metadata_props`` (:func:`set_onnx_metadata`): one entry per top-level key,
  named ``smirk_edge.<key>``, the value JSON-encoded; plus ``smirk_edge.precision``;
* every OpenVINO IR's ``rt_info`` under ``smirk_edge`` (same keys and JSON values).

:func:`read_onnx_metadata` reads it back (with the ``onnx`` package; runners may instead read
``InferenceSession.get_modelmeta().custom_metadata_map``, which holds the same strings).

This module imports nothing heavy.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from smirk_edge._version import __version__
from smirk_edge.crop import CROP_SIZE, DEFAULT_SCALE, INPUT_NAME

PREFIX = "smirk_edge."
# Kept in step with smirk_edge.training.encoder.OUTPUT_NAMES / OUTPUT_WIDTHS (checked by the tests);
# repeated here so reading metadata never needs torch.
OUTPUTS: tuple[tuple[str, int, str], ...] = (
    ("pose", 3, "global head rotation, axis-angle radians (model frame)"),
    ("cam", 3, "orthographic camera (s, tx, ty): x = s(X + tx), y = -s(Y + ty) in crop NDC"),
    ("shape", 300, "identity coefficients (face-model shapedirs[:, :, :300])"),
    ("expression", 50, "expression coefficients (face-model exprdirs)"),
    ("eyelid", 2, "[left, right] eyelid closure in [0, 1], added after skinning"),
    ("jaw", 3, "jaw rotation, axis-angle radians: [relu(p0), clamp(p1:3, -0.2, 0.2)]"),
)
FUSED_OUTPUTS: tuple[tuple[str, str], ...] = (
    ("vertices", "(B, V, 3) metres, face-model frame"),
    ("landmarks68", "(B, 68, 3) metres, face-model frame (17 yaw-dependent contour points first)"),
    ("landmarks105", "(B, 105, 3) metres, face-model frame, MediaPipe-indexed"),
)


def model_metadata(*, encoder_variant: str, checkpoint_sha256: str, face_model_id: str,
                   face_model_vertices: int | None = None, opset: int | None = None,
                   crop_scale: float = DEFAULT_SCALE, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The metadata dict of one export (JSON-serialisable).

    Args:
        encoder_variant: ``'full'`` (the official architecture), ``'tiny'`` or ``'custom'``.
        checkpoint_sha256: sha256 of the source checkpoint file (hex).
        face_model_id: ``model_id`` of the face-model file the bundle ships.
        face_model_vertices: its vertex count V (5023 for FLAME, 468 for the stand-in).
        opset: ONNX opset of the exported graphs.
        crop_scale: the square-side factor the SDK crops with at run time (SMIRK demo: 1.4).
    """
    meta: dict[str, Any] = {
        "input": {
            "name": INPUT_NAME, "shape": ["batch", 3, CROP_SIZE, CROP_SIZE], "dtype": "float32",
            "layout": "NCHW", "color": "RGB", "range": [0.0, 1.0],
            "normalization": "x / 255; no mean/std (smirk_edge.crop.to_tensor)",
        },
        "crop_policy": {
            "box": "bounding box of the face landmarks (MediaPipe 478 or the SDK's 105/68)",
            "square_side": "int(((w + h) / 2) * scale) around the box centre",
            "scale": float(crop_scale), "test_scale": 1.6, "train_scale": [1.2, 1.8],
            "size": CROP_SIZE, "warp": "similarity, bilinear, zero border (smirk_edge.crop)",
        },
        "outputs": {name: {"width": width, "meaning": doc} for name, width, doc in OUTPUTS},
        "fused_outputs": {name: doc for name, doc in FUSED_OUTPUTS},
        "face_model": {"id": face_model_id, "vertices": face_model_vertices},
        "source_checkpoint": {"sha256": checkpoint_sha256, "encoder_variant": encoder_variant},
        "sdk_version": __version__,
    }
    if opset is not None:
        meta["onnx_opset"] = int(opset)
    meta.update(dict(extra or {}))
    json.dumps(meta)  # fail here, not when the manifest is written
    return meta


def flatten(metadata: Mapping[str, Any], precision: str | None = None) -> dict[str, str]:
    """``{'smirk_edge.<key>': json}`` for model-file properties (ONNX metadata_props, IR rt_info)."""
    flat = {PREFIX + k: json.dumps(v) for k, v in metadata.items()}  # keep order: output layout
    if precision is not None:
        flat[PREFIX + "precision"] = json.dumps(precision)
    return flat


def unflatten(props: Mapping[str, str]) -> dict[str, Any]:
    """Inverse of :func:`flatten`; keys without the prefix are ignored, non-JSON values kept as str."""
    out: dict[str, Any] = {}
    for k, v in props.items():
        if not k.startswith(PREFIX):
            continue
        try:
            out[k[len(PREFIX):]] = json.loads(v)
        except (TypeError, json.JSONDecodeError):
            out[k[len(PREFIX):]] = v
    return out


def set_onnx_metadata(model: Any, metadata: Mapping[str, Any], precision: str | None = None) -> Any:
    """Replace the ``smirk_edge.*`` entries of an ``onnx.ModelProto``'s metadata_props (in place)."""
    keep = [(p.key, p.value) for p in model.metadata_props if not p.key.startswith(PREFIX)]
    del model.metadata_props[:]
    for k, v in keep + sorted(flatten(metadata, precision).items()):
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    return model


def read_onnx_metadata(path_or_model: Any) -> dict[str, Any]:
    """The smirk-edge metadata of an ONNX file or ``ModelProto`` (needs the ``onnx`` package)."""
    from smirk_edge._lazy import require

    onnx = require("onnx")
    model = path_or_model if isinstance(path_or_model, onnx.ModelProto) else onnx.load(
        str(path_or_model), load_external_data=False)
    return unflatten({p.key: p.value for p in model.metadata_props})
