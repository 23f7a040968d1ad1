import torch
from timm.models.vision_transformer import Attention
from torch import nn

from sbt_lib.eval.flops import flops_by_module, num_params
from sbt_lib.models.tokenizer import SelfBootTok


class Wrap(nn.Module):
    def __init__(self, attn):
        super().__init__()
        self.attn = attn

    def forward(self, x):
        return self.attn(x)


def test_fused_cpu_attention_is_counted_like_the_explicit_one():
    torch.manual_seed(0)
    attn = Attention(32, num_heads=4, qkv_bias=True)
    x = torch.randn(2, 10, 32)
    attn.fused_attn = True
    fused = flops_by_module(Wrap(attn), x)["attn"]
    attn.fused_attn = False
    explicit = flops_by_module(Wrap(attn), x)["attn"]
    linear = 2 * 2 * 10 * 32 * (3 * 32 + 32)  # qkv and proj
    attention = 2 * 2 * 2 * 10 * 10 * 32  # q k^T and attn v, 2 FLOPs per multiply-add
    assert fused == explicit == linear + attention


def test_parts_add_up_and_linear_layers_are_exact():
    m = SelfBootTok(image_size=16, patch_size=4, width=32, encoder_depth=1, decoder_depth=1, num_heads=2,
                    num_tokens=4, token_dim=4, codebook_size=16, conv_channels=8, local_1d=True, local_2d="xs")
    x = torch.zeros(3, 3, 16, 16)
    f = flops_by_module(m, x)
    assert set(f) >= {"encoder", "aligner_1d", "aligner_2d", "quantizers", "decoder", "total"}
    assert f["total"] == sum(v for k, v in f.items() if k != "total")
    # the 1D aligner is Mlp(4 → 16 → 4) on 3×4 tokens
    assert f["aligner_1d"] == 2 * 3 * 4 * (4 * 16 + 16 * 4)
    assert num_params(m.aligner_1d) == 4 * 16 + 16 + 16 * 4 + 4
    assert num_params(None) == 0
