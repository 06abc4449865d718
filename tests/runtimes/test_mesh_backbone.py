"""The face-mesh backbone and the ``mesh`` encoder variant: shapes, checkpoints, ONNX, weight conversion.

Random weights throughout (CPU, seconds); the parity test against MediaPipe's TFLite model runs
only where the .tflite, the ``tflite`` parser and an interpreter are installed.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch not installed (pip install 'smirk-edge[torch]')")

from smirk_edge.errors import CheckpointError  # noqa: E402
from smirk_edge.runtimes.mesh_backbone import (MESH_BACKBONE, FaceMeshBackbone, FaceMeshNet,  # noqa: E402
                                               backbone_state)
from smirk_edge.runtimes.torch_encoder import (OUTPUT_NAMES, OUTPUT_WIDTHS, EncoderConfig,  # noqa: E402
                                               SmirkEncoder, load_mesh_weights, random_encoder)

pytestmark = pytest.mark.torch

REPO = Path(__file__).resolve().parents[2]
CONVERTER = REPO / "export" / "detector" / "convert_face_mesh.py"


def _converter():
    spec = importlib.util.spec_from_file_location("convert_face_mesh", CONVERTER)
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("convert_face_mesh", mod)
    spec.loader.exec_module(mod)
    return mod


def _random_net(seed: int = 0) -> FaceMeshNet:
    torch.manual_seed(seed)
    net = FaceMeshNet().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    return net


def test_backbone_feature_maps_at_192_and_224():
    bb = FaceMeshBackbone().eval()
    assert bb.feature_info.channels() == [16, 32, 64, 128, 128, 128]
    assert bb.feature_info.reduction() == [2, 4, 8, 16, 32, 64]
    with torch.no_grad():
        for size, sides in ((192, [96, 48, 24, 12, 6, 3]), (224, [112, 56, 28, 14, 7, 4])):
            feats = bb(torch.rand(2, 3, size, size))
            assert [tuple(f.shape) for f in feats] == [(2, c, s, s) for c, s in zip(bb.feature_info.channels(), sides)]
            assert all(torch.isfinite(f).all() for f in feats)


def test_spatial_backbone_keeps_the_position_of_each_feature():
    """The mesh variant's heads read the 128 x 4 x 4 map flattened (not 128 pooled channels), so a
    left-only and a right-only expression can differ; same weights and keys as the plain backbone."""
    from smirk_edge.runtimes.mesh_backbone import mesh_side

    assert mesh_side(224) == 4 and mesh_side(192) == 3
    torch.manual_seed(0)
    plain, spatial = FaceMeshBackbone(), FaceMeshBackbone(spatial_input=224)
    spatial.load_state_dict(plain.state_dict(), strict=True)
    assert spatial.feature_info.channels() == [16, 32, 64, 128, 128, 128 * 16]
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        a, b = plain(x)[-1], spatial(x)[-1]
    assert tuple(b.shape) == (2, 2048, 1, 1)
    assert torch.equal(b.view(2, 128, 4, 4), a)
    with pytest.raises(ValueError, match="4 x 4"):
        spatial(torch.rand(1, 3, 192, 192))
    enc = random_encoder("mesh")
    assert enc.shape_encoder.shape_layers[0].in_features == 2048


def test_whole_network_outputs_and_key_layout():
    net = _random_net()
    with torch.no_grad():
        out = net(torch.rand(3, 3, 192, 192))
    assert tuple(out["landmarks"].shape) == (3, 468, 3) and tuple(out["score"].shape) == (3, 1)
    # the backbone is a strict subset of the whole network's keys
    bb = FaceMeshBackbone()
    bb.load_state_dict(backbone_state(net.state_dict()), strict=True)
    x = torch.rand(1, 3, 192, 192)
    with torch.no_grad():
        assert torch.equal(bb(x)[-1], net.landmark_branch(net.shared(x)[-1]))


def test_mesh_variant_builds_without_timm_and_gives_the_standard_outputs(monkeypatch):
    import smirk_edge.runtimes.torch_encoder as te

    def no_timm(name):
        raise AssertionError(f"the mesh variant asked for {name}")

    monkeypatch.setattr(te, "require", no_timm)
    cfg = EncoderConfig.named("mesh")
    assert cfg.shared and cfg.pose_backbone == MESH_BACKBONE and cfg.input_size == 224
    assert cfg.variant_name() == "mesh"
    enc = random_encoder("mesh")
    assert isinstance(enc.pose_encoder.encoder, FaceMeshBackbone)
    assert enc.shape_encoder.encoder is enc.pose_encoder.encoder is enc.expression_encoder.encoder
    assert not any(k.startswith(("shape_encoder.encoder.", "expression_encoder.encoder.")) for k in enc.state_dict())
    with torch.no_grad():
        out = enc(torch.rand(2, 3, 224, 224))
    assert list(out) == list(OUTPUT_NAMES)
    assert {k: tuple(v.shape) for k, v in out.items()} == {k: (2, w) for k, w in OUTPUT_WIDTHS.items()}
    assert torch.allclose(out["cam"][:, 0], torch.full((2,), 7.0), atol=1e-2)  # SMIRK's head init
    assert out["shape"].abs().max() == 0


def test_mesh_checkpoint_round_trips_through_the_official_layout(tmp_path):
    pytest.importorskip("timm", reason="the checkpoint reader tries every variant (pip install 'smirk-edge[torch]')")
    from smirk_edge.training.checkpoint import ENCODER_PREFIX, load_encoder, read_checkpoint, save_checkpoint

    torch.manual_seed(3)
    enc = SmirkEncoder(EncoderConfig.named("mesh")).eval()
    path = save_checkpoint(tmp_path / "mesh.pt", enc, meta={"step": 5})
    ck = read_checkpoint(path)
    assert ck.meta["encoder_variant"] == "mesh"
    raw = torch.load(path, weights_only=True)
    assert sum(1 for k in raw if k.startswith(ENCODER_PREFIX)) == len(enc.state_dict())
    back = load_encoder(path)
    assert back.config == EncoderConfig.named("mesh")
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        a, b = enc(x), back(x)
    for k in OUTPUT_NAMES:
        assert torch.equal(a[k], b[k]), k


def test_mesh_variant_exports_to_onnx_and_matches_torch(tmp_path):
    pytest.importorskip("onnx", reason="onnx not installed (pip install 'smirk-edge[export]')")
    pytest.importorskip("onnxscript", reason="onnxscript not installed (pip install 'smirk-edge[export]')")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install 'smirk-edge[export]')")
    from smirk_edge.export.onnx_export import export_encoder

    enc = random_encoder("mesh", seed=1)
    with torch.no_grad():  # non-trivial heads, so every output is compared
        for lin in (enc.shape_encoder.shape_layers[0], enc.expression_encoder.expression_layers[0]):
            lin.weight.copy_(torch.randn_like(lin.weight) * 0.05)
    res = export_encoder(enc, tmp_path / "encoder.onnx", parity_tol=1e-4)
    assert set(res.parity) == set(OUTPUT_NAMES)
    sess = ort.InferenceSession(str(res.path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((3, 3, 224, 224), dtype=np.float32)  # another batch size
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {sess.get_inputs()[0].name: x})))
    with torch.no_grad():
        ref = enc(torch.from_numpy(x))
    for k in OUTPUT_NAMES:
        np.testing.assert_allclose(got[k], ref[k].numpy(), atol=1e-4, rtol=1e-4, err_msg=k)


def test_load_mesh_weights_warm_starts_the_backbone_only(tmp_path):
    net = _random_net(seed=4)
    path = tmp_path / "face_mesh.pt"
    torch.save(net.state_dict(), path)
    enc = random_encoder("mesh", seed=0)
    heads = {k: v.clone() for k, v in enc.state_dict().items() if not k.startswith("pose_encoder.encoder.")}
    assert load_mesh_weights(enc, path) == len(backbone_state(net.state_dict()))
    for k, v in backbone_state(net.state_dict()).items():
        assert torch.equal(enc.state_dict()["pose_encoder.encoder." + k], v), k
    for k, v in heads.items():
        assert torch.equal(enc.state_dict()[k], v), k
    with pytest.raises(CheckpointError, match="mesh"):
        load_mesh_weights(random_encoder("tiny-shared"), path)
    bad = dict(net.state_dict())
    bad["blocks.3.pw.weight"] = torch.zeros(7, 7, 1, 1)
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"blocks\.3\.pw\.weight"):
        load_mesh_weights(enc, tmp_path / "bad.pt")


def _layers_of(net: FaceMeshNet, conv):
    """The converter's input (tflite layer name -> arrays) made from a torch network."""
    sd = {k: v.numpy() for k, v in net.state_dict().items()}
    convs, alphas = {}, {}
    for path, name, kind in conv.weight_map():
        if kind == "prelu":
            alphas[name] = sd[f"{path}.weight"]
        else:
            convs[name] = (kind, sd[f"{path}.weight"], sd[f"{path}.bias"])
    return convs, alphas


def test_converter_fills_every_parameter_and_rejects_wrong_layers():
    conv = _converter()
    net = _random_net(seed=5)
    convs, alphas = _layers_of(net, conv)
    assert len(convs) == 45 and len(alphas) == 23  # every conv and PReLU of face_landmark.tflite
    state = conv.assemble_state(convs, alphas)
    assert state.keys() == net.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())

    wrong = dict(convs)
    kind, w, b = wrong["conv2d_7"]
    wrong["conv2d_7"] = (kind, w[:, :16], b)
    with pytest.raises(conv.ConversionError, match=r"blocks\.5\.pw\.weight: .tflite layer 'conv2d_7' has shape "
                                                   r"\(64, 16, 1, 1\), the architecture wants \(64, 32, 1, 1\)"):
        conv.assemble_state(wrong, alphas)
    with pytest.raises(conv.ConversionError, match="p_re_lu_9"):
        conv.assemble_state(convs, {**alphas, "p_re_lu_9": np.zeros(3, np.float32)})
    with pytest.raises(conv.ConversionError, match="is a conv convolution, the architecture wants dw"):
        conv.assemble_state({**convs, "depthwise_conv2d_2": ("conv",) + convs["depthwise_conv2d_2"][1:]}, alphas)
    with pytest.raises(conv.ConversionError, match="left unused: conv2d_99"):
        conv.assemble_state({**convs, "conv2d_99": convs["conv2d_2"]}, alphas)
    missing = dict(convs)
    del missing["conv2d_21"]
    with pytest.raises(conv.ConversionError, match="landmark_out: convolution 'conv2d_21' is not in the .tflite"):
        conv.assemble_state(missing, alphas)


def _tflite_setup():
    """(tflite path, interpreter python) or a skip with the reason."""
    pytest.importorskip("tflite", reason="the tflite flatbuffer parser is not installed (pip install tflite)")
    conv = _converter()
    try:
        path = conv.find_tflite(os.environ.get("SMIRK_EDGE_FACE_MESH_TFLITE"))
    except SystemExit:
        pytest.skip("MediaPipe's face_landmark.tflite not found (mediapipe 0.10.21 wheel; or set "
                    "SMIRK_EDGE_FACE_MESH_TFLITE)")
    python = os.environ.get("SMIRK_EDGE_TFLITE_PYTHON", "/work/mpenv/bin/python")
    probe = "import importlib.util as u, sys; sys.exit(not (u.find_spec('ai_edge_litert') or u.find_spec('tensorflow')))"
    try:
        ok = Path(python).is_file() and subprocess.run([python, "-c", probe], timeout=60).returncode == 0
    except (OSError, subprocess.SubprocessError):
        ok = False
    if not ok:
        pytest.skip(f"no TFLite interpreter: {python} lacks ai-edge-litert / tensorflow "
                    "(set SMIRK_EDGE_TFLITE_PYTHON to a python that has one)")
    return conv, path, python


@pytest.mark.data
def test_converted_network_matches_the_tflite_interpreter(shared_data):
    conv, path, python = _tflite_setup()
    faces = shared_data / "faces" / "utkface"
    if not faces.is_dir():
        pytest.skip(f"{faces} not found")
    state = conv.convert(path)
    row = conv.check_parity(state, path, conv.load_faces(faces, 8), python)
    assert row["images"] == 8
    assert row["landmarks_xy_max_px"] < 2e-3, row  # fp32 against fp32: ~2e-4 px at conversion time
    assert row["score"]["max_abs"] < 1e-3, row
    assert row["faces_over_0.5"]["ours"] == row["faces_over_0.5"]["tflite"]
