"""Checkpoints in the official SMIRK key layout: round trip, strict loading, clear errors."""

import json

import pytest

torch = pytest.importorskip("torch", reason="torch not installed (pip install 'smirk-edge[torch]')")
pytest.importorskip("timm", reason="timm not installed (pip install 'smirk-edge[torch]')")

from smirk_edge.errors import CheckpointError  # noqa: E402
from smirk_edge.training.checkpoint import (ENCODER_PREFIX, GENERATOR_PREFIX, build_encoder,  # noqa: E402
                                            load_encoder, read_checkpoint, save_checkpoint)
from smirk_edge.training.encoder import EncoderConfig, SmirkEncoder  # noqa: E402

pytestmark = pytest.mark.torch

# A few keys of the official file, as SMIRK_FACTS.md lists them (after the prefix).
OFFICIAL_KEYS = [
    "pose_encoder.encoder.conv_stem.weight",
    "pose_encoder.encoder.bn1.running_var",
    "pose_encoder.encoder.blocks.0.0.conv_dw.weight",
    "pose_encoder.pose_cam_layers.0.weight",
    "shape_encoder.encoder.conv_stem.weight",
    "shape_encoder.shape_layers.0.bias",
    "expression_encoder.encoder.blocks.6.0.conv.weight",
    "expression_encoder.expression_layers.0.weight",
]


def _official_style_file(tmp_path, config, extra=None):
    """A flat state dict exactly as SMIRK_em1.pt is laid out (random weights), no smirk-edge metadata."""
    torch.manual_seed(0)
    enc = SmirkEncoder(config)
    state = {ENCODER_PREFIX + k: torch.randn_like(v) if v.is_floating_point() else v
             for k, v in enc.state_dict().items()}
    # a generator-shaped entry and an unrelated key the official loader ignores
    state[GENERATOR_PREFIX + "encoder1.enc1conv1.weight"] = torch.randn(32, 6, 3, 3)
    state["some_other_module.weight"] = torch.randn(3)
    state.update(extra or {})
    path = tmp_path / "SMIRK_em1.pt"
    torch.save(state, path)
    return path, state


def test_full_architecture_matches_the_official_parameter_count():
    enc = SmirkEncoder(EncoderConfig.full())
    assert sum(p.numel() for p in enc.parameters()) == 3_599_921
    keys = set(enc.state_dict())
    for k in OFFICIAL_KEYS:
        assert k in keys, k
    shapes = {k: tuple(v.shape) for k, v in enc.state_dict().items()}
    assert shapes["pose_encoder.pose_cam_layers.0.weight"] == (6, 576)
    assert shapes["shape_encoder.shape_layers.0.weight"] == (300, 960)
    assert shapes["expression_encoder.expression_layers.0.weight"] == (55, 960)


@pytest.mark.parametrize("variant", ["tiny", "full"])
def test_official_layout_loads_bit_for_bit(tmp_path, variant):
    path, state = _official_style_file(tmp_path, EncoderConfig.named(variant))
    enc = load_encoder(path)
    assert enc.config == EncoderConfig.named(variant)
    for k, v in enc.state_dict().items():
        assert torch.equal(v, state[ENCODER_PREFIX + k]), k
    ck = read_checkpoint(path)
    assert list(ck.generator) == ["encoder1.enc1conv1.weight"]
    assert len(ck.sha256) == 64


def test_save_writes_the_official_layout_and_round_trips(tmp_path):
    torch.manual_seed(1)
    enc = SmirkEncoder(EncoderConfig.tiny()).eval()
    gen = torch.nn.Conv2d(6, 3, 3)
    path = save_checkpoint(tmp_path / "ckpt.pt", enc, gen, meta={"step": 12})
    raw = torch.load(path, weights_only=True)
    enc_keys = [k for k in raw if k.startswith(ENCODER_PREFIX)]
    assert len(enc_keys) == len(enc.state_dict())
    assert {k for k in raw if k.startswith(GENERATOR_PREFIX)} == {"smirk_generator.weight", "smirk_generator.bias"}
    assert json.loads(raw["smirk_edge_meta"]) == {"encoder_variant": "tiny", "step": 12}
    back = load_encoder(path)
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        a, b = enc(x), back(x)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_outputs_obey_smirk_activations():
    torch.manual_seed(2)
    enc = SmirkEncoder(EncoderConfig.tiny()).eval()
    with torch.no_grad():
        for lin in (enc.expression_encoder.expression_layers[0],):
            lin.bias.copy_(torch.randn_like(lin.bias) * 5)
        out = enc(torch.rand(3, 3, 224, 224))
    assert out["eyelid"].min() >= 0 and out["eyelid"].max() <= 1
    assert out["jaw"][:, 0].min() >= 0
    assert out["jaw"][:, 1:].abs().max() <= 0.2 + 1e-7
    assert {k: tuple(v.shape[1:]) for k, v in out.items()} == {
        "pose": (3,), "cam": (3,), "shape": (300,), "expression": (50,), "eyelid": (2,), "jaw": (3,)}


def test_training_init_matches_smirk():
    enc = SmirkEncoder(EncoderConfig.tiny())
    enc.init_weights()
    with torch.no_grad():
        out = enc(torch.rand(2, 3, 224, 224))
    assert torch.allclose(out["cam"][:, 0], torch.full((2,), 7.0), atol=1e-2)
    assert out["shape"].abs().max() == 0


def test_mismatched_checkpoint_lists_keys_and_shapes(tmp_path):
    path, state = _official_style_file(tmp_path, EncoderConfig.tiny())
    del state[ENCODER_PREFIX + "shape_encoder.shape_layers.0.bias"]
    state[ENCODER_PREFIX + "shape_encoder.shape_layers.0.weight"] = torch.zeros(100, 64)
    state[ENCODER_PREFIX + "bogus.weight"] = torch.zeros(1)
    torch.save(state, path)
    with pytest.raises(CheckpointError) as err:
        build_encoder(read_checkpoint(path), EncoderConfig.tiny())
    msg = str(err.value)
    assert "missing keys: shape_encoder.shape_layers.0.bias" in msg
    assert "unexpected keys: bogus.weight" in msg
    assert "shape_encoder.shape_layers.0.weight (100, 64) (model wants (300, 64))" in msg


def test_not_a_smirk_checkpoint(tmp_path):
    p = tmp_path / "x.pt"
    torch.save({"model.weight": torch.zeros(2)}, p)
    with pytest.raises(CheckpointError, match="no 'smirk_encoder.\\*' keys"):
        read_checkpoint(p)
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        read_checkpoint(tmp_path / "garbage.pt")
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "missing.pt")


class _Boom:
    def __reduce__(self):
        import os
        return (os.system, ("echo pwned > /dev/null",))


def test_checkpoint_with_code_is_refused(tmp_path):
    p = tmp_path / "evil.pt"
    torch.save({"smirk_encoder.x": torch.zeros(1), "payload": _Boom()}, p)
    with pytest.raises(CheckpointError, match="weights_only"):
        read_checkpoint(p)
