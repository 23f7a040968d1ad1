import pytest
import torch

from sbt_lib.models.blocks import CrossAttentionBlock
from sbt_lib.models.tokenizer import SelfBootTok
from sbt_lib.models.tokenizer_config import TokenizerConfig

TINY = dict(image_size=16, patch_size=4, width=32, encoder_depth=1, decoder_depth=1, num_heads=2,
            num_tokens=4, token_dim=4, codebook_size=16, conv_channels=8)
FULL = dict(local_1d=True, local_2d="xs")
VARIANTS = {
    "G": {},
    "G+L1": dict(local_1d=True),
    "G+L1+L2": FULL,
    "non-causal": {**FULL, "causal": False},
    "shared codebook": {**FULL, "shared_codebook": True},
    "concat": {**FULL, "fusion": "concat"},
    "self-attention decoder": {**FULL, "decoder": "self"},
    "N_l != N": {**FULL, "num_local_tokens": 6},
    "conv trunk": {**FULL, "trunk": "conv"},
    "gain-shape SoftVQ": {**FULL, "keep_norm": True, "tau": 0.3},
    "unit-length locals": {**FULL, "keep_norm": True, "local_keep_norm": False, "local_scale": 10.0},
    "dense path": {**FULL, "trunk": "conv", "patch_size": 8, "dense_path": True},
}
RECIPE = dict(trunk="conv", linear_path=True, keep_norm=True, tau=0.3)


def build(**kw) -> SelfBootTok:
    torch.manual_seed(0)
    return SelfBootTok(**{**TINY, **kw})


def images(b: int = 3) -> torch.Tensor:
    return torch.rand(b, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_shapes_and_generator_path(variant):
    m = build(**VARIANTS[variant]).eval()
    cfg = m.cfg
    recon, enc = m.reconstruct(images())
    assert recon.shape == (3, 3, 16, 16)
    assert list(enc.tokens) == list(cfg.groups)
    for g in cfg.groups:
        assert enc.tokens[g].shape == (3, cfg.num_group_tokens(g), cfg.token_dim)
        assert enc.probs[g].shape == (3, cfg.num_group_tokens(g), cfg.codebook_size)
    # the generator's path: global tokens alone give the same local tokens and the same image
    torch.testing.assert_close(m.decode_from_global(enc.z_global), recon)
    boot = m.bootstrap(enc.z_global)
    for g in cfg.groups:
        torch.testing.assert_close(boot.tokens[g], enc.tokens[g])


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_trains_every_parameter(variant):
    m = build(**VARIANTS[variant])
    recon, enc = m(images(2))
    (recon.square().mean() + enc.entropy_loss).backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not missing


def test_groups_follow_the_switches():
    assert TokenizerConfig().groups == ("global",)
    assert TokenizerConfig(local_1d=True).groups == ("global", "local_1d")
    assert TokenizerConfig(local_1d=True, local_2d="s").groups == ("global", "local_1d", "local_2d")
    assert build(**FULL, causal=False).aligner_2d.cfg.causal is False
    assert build(**FULL).aligner_2d.cfg.causal is True


def test_separate_codebooks_by_default_one_shared_on_request():
    sep, shared = build(**FULL), build(**FULL, shared_codebook=True)
    assert set(sep.quantizers) == {"global", "local_1d", "local_2d"}
    assert len({id(sep.quantizer(g)) for g in sep.cfg.groups}) == 3
    assert set(shared.quantizers) == {"shared"}
    assert len({id(shared.quantizer(g)) for g in shared.cfg.groups}) == 1
    assert sep.num_params()["quantizers"] == 3 * shared.num_params()["quantizers"]
    # a local codebook changes the local tokens only when it is separate
    x = images(2)
    with torch.no_grad():
        before = sep.encode(x)
        sep.quantizer("local_1d").codebook.add_(1.0)
        after = sep.encode(x)
        torch.testing.assert_close(after.z_global, before.z_global)
        assert not torch.allclose(after.z_local_1d, before.z_local_1d)
        before = shared.encode(x)
        shared.quantizer("local_1d").codebook.add_(1.0)
        assert not torch.allclose(shared.encode(x).z_global, before.z_global)


def test_soft_residual_fusion_is_eq_11():
    m = build(**FULL, num_local_tokens=6)
    enc = m.encode(images(2))
    w = m.fusion.logits.softmax(0)
    z2 = torch.einsum("oi,bid->bod", m.fusion.match_2d.weight, enc.z_local_2d)  # 6 → 4 tokens
    expected = w[0] * enc.z_global + w[1] * enc.z_local_1d + w[2] * z2
    torch.testing.assert_close(m.fusion(enc.tokens), expected)
    assert sum(m.fusion.weights().values()) == pytest.approx(1.0)
    memory = m.fusion.memory(enc.tokens)  # [Fuse; z_L1; z_L2]
    assert memory.shape == (2, 4 + 4 + 6, 4)
    torch.testing.assert_close(memory[:, 4:8], enc.z_local_1d)
    assert build(**FULL).fusion.match_2d is None  # N_l = N: nothing to match


def test_concat_fusion_is_the_concatenation():
    m = build(**FULL, fusion="concat", num_local_tokens=6)
    enc = m.encode(images(2))
    memory = m.fusion.memory(enc.tokens)
    torch.testing.assert_close(memory, torch.cat([enc.z_global, enc.z_local_1d, enc.z_local_2d], 1))
    assert m.fusion.weights() == {}


def test_the_two_decoders():
    cross, selfattn = build(**FULL), build(**FULL, decoder="self")
    assert all(isinstance(b, CrossAttentionBlock) for b in cross.decoder.blocks)
    assert not any(isinstance(b, CrossAttentionBlock) for b in selfattn.decoder.blocks)
    # each reads every memory token: the output depends on all of them
    for m in (cross, selfattn):
        m.decoder.read_out = None  # only the attention path
        memory = m.fusion.memory(m.encode(images(1)).tokens).detach().requires_grad_()
        m.decoder(memory).sum().backward()
        assert (memory.grad.abs().sum(-1) > 0).all()


def test_cross_attention_block_matches_a_manual_computation():
    torch.manual_seed(0)
    blk = CrossAttentionBlock(8, 2).eval()
    x, mem = torch.randn(2, 5, 8), torch.randn(2, 3, 8)
    h = x + blk.attn(blk.norm1(x))
    q, m = blk.norm2(h), blk.norm_memory(mem)
    wq, wk, wv = blk.cross.in_proj_weight.chunk(3)
    bq, bk, bv = blk.cross.in_proj_bias.chunk(3)
    split = lambda t: t.view(2, -1, 2, 4).transpose(1, 2)  # noqa: E731
    att = torch.softmax(split(q @ wq.T + bq) @ split(m @ wk.T + bk).transpose(-1, -2) / 2.0, -1)
    out = (att @ split(m @ wv.T + bv)).transpose(1, 2).reshape(2, 5, 8)
    h = h + blk.cross.out_proj(out)
    torch.testing.assert_close(blk(x, mem), h + blk.mlp(blk.norm3(h)))


def test_scales_explore_the_groups():
    m = build(**FULL).eval()
    enc = m.encode(images(2))
    torch.testing.assert_close(m.decode(enc, scales={"local_1d": 1.0}), m.decode(enc))
    assert not torch.allclose(m.decode(enc, scales={"local_2d": 0.0}), m.decode(enc))
    with pytest.raises(ValueError, match="unknown group"):
        m.decode(enc, scales={"local_3d": 0.0})


@pytest.mark.parametrize("variant", ["G+L1+L2", "dense path"])
def test_decoder_sees_only_the_tokens(variant):
    """Reconstructions of two images differ only through their global tokens."""
    m = build(**VARIANTS[variant]).eval()
    z = m.encode(images(2)).z_global
    same = m.decode_from_global(z[:1].expand(2, -1, -1))
    torch.testing.assert_close(same[0], same[1])


def test_bottleneck_counts():
    cfg = TokenizerConfig()  # the cpu-scale default
    assert cfg.token_values == 256 and cfg.pixel_values == 3072
    assert cfg.token_values * 8 <= cfg.pixel_values  # a real bottleneck: at most 1/8 of the pixel values
    assert TokenizerConfig(local_1d=True, local_2d="s").token_values == 256  # local tokens are not sent


def test_overrides_resolve_late():
    """num_local_tokens=None follows num_tokens even when num_tokens is overridden afterwards."""
    assert SelfBootTok(TokenizerConfig(), **TINY, **FULL).aligner_2d.cfg.num_local_tokens == TINY["num_tokens"]


def smooth_images(n: int, seed: int = 0) -> torch.Tensor:
    """Low-frequency random images: a few principal components explain most of them."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(coarse, size=16, mode="bilinear", align_corners=False)


def test_linear_path_is_the_principal_components_and_the_start():
    from sklearn.decomposition import PCA as SkPCA

    m = build(**FULL, **RECIPE).fit_linear_path(smooth_images(300))
    x = smooth_images(5, seed=1)
    lp = m.linear_path
    k = m.cfg.token_values
    sk = SkPCA(n_components=k, svd_solver="full").fit(smooth_images(300).flatten(1).double().numpy())
    expected = torch.from_numpy(sk.inverse_transform(sk.transform(x.flatten(1).double().numpy()))).float()
    torch.testing.assert_close(lp.decode(lp.encode(x)).flatten(1), expected, atol=1e-4, rtol=0)
    coef = lp.encode(smooth_images(300)).flatten(1)
    torch.testing.assert_close(coef.std(0), torch.ones(k), atol=1e-3, rtol=0)  # whitened
    # at the start the networks add nothing: the image is the linear path's decoding of z_global
    recon, enc = m.eval().reconstruct(x)
    torch.testing.assert_close(recon, lp.decode(enc.z_global), atol=1e-6, rtol=0)
    torch.testing.assert_close(enc.unquantized["global"], lp.encode(x), atol=1e-6, rtol=0)


def test_linear_path_is_saved_and_every_network_trains_from_it():
    m = build(**FULL, **RECIPE).fit_linear_path(smooth_images(300))
    copy = build(**FULL, **RECIPE)
    copy.load_state_dict(m.state_dict())
    torch.testing.assert_close(copy.eval()(images())[0], m.eval()(images())[0])
    assert not any("linear_path" in n for n, _ in m.named_parameters())  # fixed: buffers, not trained
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    for _ in range(2):  # the zero-initialised last layers let gradients through after one step
        opt.zero_grad()
        recon, enc = m.train()(images(2))
        (recon - images(2)).square().mean().backward()
        opt.step()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not missing


def test_conv_trunk_halves_down_to_the_grid():
    m = build(trunk="conv")
    assert m.encoder.patch_embed(images()).shape == (3, (16 // 4) ** 2, TINY["width"])
    with pytest.raises(ValueError, match="power-of-two"):
        TokenizerConfig(image_size=12, patch_size=3, trunk="conv")
    with pytest.raises(ValueError, match="valid: .*conv"):
        TokenizerConfig(trunk="unet")
    with pytest.raises(ValueError, match="at most as many token values"):
        TokenizerConfig(image_size=4, patch_size=4, num_tokens=64, token_dim=8, linear_path=True)


def test_without_conv_stem_and_head():
    m = SelfBootTok(**{**TINY, "conv_channels": 0})
    assert m(torch.zeros(1, 3, 16, 16))[0].shape == (1, 3, 16, 16)


def test_clear_errors():
    m = build(**FULL)
    with pytest.raises(ValueError, match=r"B×3×16×16"):
        m.encode(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="global tokens of shape B×4×4"):
        m.decode_from_global(torch.zeros(1, 3, 3))
    with pytest.raises(TypeError, match="decode_from_global"):
        m.decode(torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="missing"):
        m.decode({"global": torch.zeros(1, 4, 4)})
    with pytest.raises(TypeError, match="valid"):
        SelfBootTok(widht=64)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        TokenizerConfig(image_size=30, patch_size=4)
    with pytest.raises(ValueError, match="valid: .*xs"):
        TokenizerConfig(local_2d="huge")
    with pytest.raises(ValueError, match="residual"):
        TokenizerConfig(fusion="sum")
    with pytest.raises(ValueError, match="cross"):
        TokenizerConfig(decoder="unet")


def test_swapping_local_tokens_changes_only_what_the_local_tokens_carry():
    from sbt_lib.eval.reconstruction import reconstruct, swapped_local_tokens

    m = build(**FULL).eval()
    x = images(4)
    assert not torch.allclose(swapped_local_tokens(m, x), reconstruct(m, x))
    same = x[:1].expand(4, -1, -1, -1).contiguous()  # identical images: swapping their local tokens changes nothing
    torch.testing.assert_close(swapped_local_tokens(m, same), reconstruct(m, same))
    with pytest.raises(ValueError, match="no local tokens"):
        swapped_local_tokens(build().eval(), x)


@pytest.mark.parametrize("shared", [False, True])
def test_unit_length_local_tokens_have_the_fixed_length(shared):
    m = build(**FULL, keep_norm=True, local_keep_norm=False, local_scale=10.0, shared_codebook=shared).eval()
    enc = m.encode(images())
    for group in ("local_1d", "local_2d"):
        torch.testing.assert_close(enc.tokens[group].norm(dim=-1), torch.full(enc.tokens[group].shape[:-1], 10.0))
    gain_shape = build(**FULL, keep_norm=True, shared_codebook=shared).eval().encode(images())  # default: lengths kept
    assert not torch.allclose(gain_shape.tokens["local_1d"].norm(dim=-1), torch.ones(()), atol=1e-3)
    torch.testing.assert_close(gain_shape.tokens["global"], enc.tokens["global"])  # the encoder side is the same


def test_local_token_length_survives_save_and_load(tmp_path):
    m = build(**FULL, keep_norm=True, local_keep_norm=False, local_scale=10.0).eval()
    m.save_pretrained(tmp_path)
    loaded = SelfBootTok.from_pretrained(tmp_path).eval()
    assert loaded.cfg.local_keep_norm is False and loaded.cfg.local_scale == 10.0
    x = images()
    torch.testing.assert_close(loaded(x)[0], m(x)[0], atol=2e-2, rtol=0)  # float16 weights
