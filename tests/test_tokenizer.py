import pytest
import torch

from sbt_lib.tokenizer import SelfBootTok, TokenizerConfig


def test_shapes_through_encode_decode(tiny_model, tiny_config):
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    recon, enc = tiny_model.reconstruct(x)
    assert recon.shape == x.shape
    assert enc.z_global.shape == (3, tiny_config.num_tokens, tiny_config.token_dim)
    assert enc.probs["global"].shape == (3, tiny_config.num_tokens, tiny_config.codebook_size)
    torch.testing.assert_close(tiny_model.decode(enc.z_global), recon)


def test_bottleneck_counts():
    cfg = TokenizerConfig()  # the cpu-scale default
    assert cfg.token_values == 256 and cfg.pixel_values == 3072
    assert cfg.token_values * 8 <= cfg.pixel_values  # a real bottleneck: at most 1/8 of the pixel values


def test_decoder_sees_only_the_tokens(tiny_model):
    """Reconstructions of two images differ only through their tokens: same tokens, same output."""
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    enc = tiny_model.encode(x)
    same = tiny_model.decode(enc.z_global[:1].expand(2, -1, -1))
    torch.testing.assert_close(same[0], same[1])


def test_every_parameter_gets_a_gradient(tiny_model):
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    recon, _ = tiny_model(x)
    recon.square().mean().backward()
    missing = [n for n, p in tiny_model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not missing


def test_without_conv_stem_and_head():
    m = SelfBootTok(image_size=16, patch_size=4, width=32, encoder_depth=1, decoder_depth=1, num_heads=2,
                    num_tokens=4, token_dim=4, codebook_size=16, conv_channels=0)
    assert m(torch.zeros(1, 3, 16, 16))[0].shape == (1, 3, 16, 16)


def test_clear_errors(tiny_model):
    with pytest.raises(ValueError, match=r"B×3×16×16"):
        tiny_model.encode(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="global tokens"):
        tiny_model.decode(torch.zeros(1, 3, 3))
    with pytest.raises(TypeError, match="valid"):
        SelfBootTok(widht=64)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        TokenizerConfig(image_size=30, patch_size=4)
