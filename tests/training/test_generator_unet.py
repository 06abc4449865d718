"""The SMIRK U-Net generator: size, official key layout, forward contract, checkpoint round trip."""

import re

import pytest

torch = pytest.importorskip("torch", reason="torch not installed (pip install 'smirk-edge[train]')")
pytest.importorskip("timm", reason="timm not installed (pip install 'smirk-edge[train]')")

from smirk_edge.errors import CheckpointError, InputError  # noqa: E402
from smirk_edge.training.checkpoint import read_checkpoint, save_checkpoint  # noqa: E402
from smirk_edge.training.encoder import EncoderConfig, SmirkEncoder  # noqa: E402
from smirk_edge.training.generator import (GeneratorConfig, SmirkGenerator, count_parameters,  # noqa: E402
                                           load_generator_state)

pytestmark = pytest.mark.torch

# Keys of the official generator (after the 'smirk_generator.' prefix) with their shapes:
# in_channels=6, out_channels=3, init_features=32, res_blocks=5.
OFFICIAL_KEYS = {
    "encoder1.enc1conv1.weight": (32, 6, 3, 3),
    "encoder1.enc1norm1.running_var": (32,),
    "encoder1.enc1conv2.weight": (32, 32, 3, 3),
    "encoder4.enc4norm2.bias": (256,),
    "bottleneck.bottleneckconv1.weight": (512, 256, 3, 3),
    "bottleneck.bottlenecknorm2.running_mean": (512,),
    "resnet_blocks.0.conv_block.1.weight": (512, 512, 3, 3),
    "resnet_blocks.0.conv_block.2.weight": (512,),
    "resnet_blocks.4.conv_block.5.weight": (512, 512, 3, 3),
    "resnet_blocks.4.conv_block.6.num_batches_tracked": (),
    "upconv4.weight": (512, 256, 2, 2),
    "upconv4.bias": (256,),
    "decoder4.dec4conv1.weight": (256, 512, 3, 3),
    "upconv1.weight": (64, 32, 2, 2),
    "decoder1.dec1conv1.weight": (32, 64, 3, 3),
    "decoder1.dec1norm2.weight": (32,),
    "conv.weight": (3, 32, 1, 1),
    "conv.bias": (3,),
}


@pytest.fixture(scope="module")
def official():
    return SmirkGenerator(GeneratorConfig.official())


def test_parameter_count(official):
    # SMIRK_FACTS: ~31M; exact count of the official configuration
    assert count_parameters(official) == 31_367_171


def test_official_key_layout(official):
    sd = official.state_dict()
    for k, shape in OFFICIAL_KEYS.items():
        assert k in sd, k
        assert tuple(sd[k].shape) == shape, (k, tuple(sd[k].shape))
    assert len(sd) == 178
    # nothing outside the official module names
    tops = {k.split(".")[0] for k in sd}
    assert tops == {"encoder1", "encoder2", "encoder3", "encoder4", "bottleneck", "resnet_blocks",
                    "upconv4", "upconv3", "upconv2", "upconv1", "decoder4", "decoder3", "decoder2", "decoder1",
                    "conv"}
    # no bias on the 3x3 convolutions, bias on the transposed and the final convolutions
    assert not any(re.search(r"(enc\d|dec\d|bottleneck)conv\d\.bias$", k) for k in sd)
    assert not any(re.search(r"conv_block\.[15]\.bias$", k) for k in sd)
    assert all(f"upconv{k}.bias" in sd for k in (1, 2, 3, 4))


def test_forward_contract():
    torch.manual_seed(0)
    g = SmirkGenerator(GeneratorConfig.tiny())
    x = torch.rand(2, 6, 64, 64, requires_grad=True)
    y = g(x)
    assert y.shape == (2, 3, 64, 64)
    assert (y > 0).all() and (y < 1).all()
    y.mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    with pytest.raises(InputError):
        g(torch.rand(2, 3, 64, 64))
    with pytest.raises(InputError):
        g(torch.rand(2, 6, 60, 64))


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    enc = SmirkEncoder(EncoderConfig.tiny())
    gen = SmirkGenerator(GeneratorConfig.tiny())
    path = save_checkpoint(tmp_path / "ckpt.pt", enc, gen)
    ckpt = read_checkpoint(path)
    gen2 = load_generator_state(SmirkGenerator(GeneratorConfig.tiny()), ckpt.generator)
    x = torch.rand(1, 6, 32, 32)
    gen.eval(), gen2.eval()
    torch.testing.assert_close(gen(x), gen2(x))
    with pytest.raises(CheckpointError, match="missing|shape"):
        load_generator_state(SmirkGenerator(GeneratorConfig(init_features=8, res_blocks=1)), ckpt.generator)
    with pytest.raises(CheckpointError, match="no 'smirk_generator"):
        load_generator_state(gen2, {})
