import pytest
import torch

from sbt_lib.models.aligners import (
    ALIGNER_2D_PRESETS,
    Aligner2DConfig,
    LocalAligner1D,
    LocalAligner2D,
    aligner_2d_param_counts,
    causal_prefix_mask,
)

TINY = dict(token_dim=4, num_global_tokens=5, num_local_tokens=7, out_dim=6, width=16, depth=2, num_heads=2)


def tiny_2d(causal: bool = True, seed: int = 0) -> LocalAligner2D:
    torch.manual_seed(seed)
    model = LocalAligner2D(Aligner2DConfig(**TINY, causal=causal)).eval()
    with torch.no_grad():  # O(1) weights instead of the 0.02 init, so that every dependency is visible
        for p in (model.global_pos, model.local_queries, model.local_pos):
            p.normal_()
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.normal_(std=m.in_features**-0.5)
    return model


def z(b: int = 3, n: int = 5, d: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, n, d, generator=torch.Generator().manual_seed(seed))


def queries(model: LocalAligner2D, b: int = 3) -> torch.Tensor:
    return model.local_queries.detach().expand(b, -1, -1).clone()


# ----------------------------------------------------------------------------- mask


def test_mask_blocks():
    p, n = 3, 4
    m = causal_prefix_mask(p, n)
    assert m.shape == (7, 7) and m.dtype == torch.bool
    assert m[:p, :p].all()  # prefix sees itself
    assert not m[:p, p:].any()  # prefix never sees local positions
    assert m[p:, :p].all()  # every local position sees the whole prefix
    assert torch.equal(m[p:, p:], torch.ones(n, n, dtype=torch.bool).tril())
    assert causal_prefix_mask(p, n, causal=False).all()


# ----------------------------------------------------------------------------- 2D aligner


def test_2d_shapes_and_errors():
    model = tiny_2d()
    assert model(z()).shape == (3, 7, 6)  # N=5 ≠ N_l=7, out_dim 6 ≠ token_dim 4
    assert model(z(), local_inputs=queries(model)[:, :3]).shape == (3, 3, 6)
    assert LocalAligner2D(Aligner2DConfig(**{**TINY, "out_dim": None})).cfg.output_dim == 4
    with pytest.raises(ValueError, match="B×5×4"):
        model(z(n=6))
    with pytest.raises(ValueError, match="B×5×4"):
        model(z(d=3))
    with pytest.raises(ValueError, match="1 ≤ n ≤ 7"):
        model(z(), local_inputs=torch.zeros(3, 8, 16))
    with pytest.raises(ValueError, match="multiple of num_heads"):
        Aligner2DConfig(width=10, num_heads=4)


@pytest.mark.parametrize("i", [0, 3, 6])
def test_causal_perturbing_position_i_leaves_earlier_positions_unchanged(i):
    model, zg = tiny_2d(), z()
    q = queries(model)
    base = model(zg, local_inputs=q)
    q[:, i] += torch.randn_like(q[:, i])
    out = model(zg, local_inputs=q)
    torch.testing.assert_close(out[:, :i], base[:, :i], atol=1e-6, rtol=0)
    assert (out[:, i:] - base[:, i:]).abs().amax() > 1e-3


def test_non_causal_perturbation_reaches_earlier_positions():
    model, zg = tiny_2d(causal=False), z()
    q = queries(model)
    base = model(zg, local_inputs=q)
    q[:, 6] += torch.randn_like(q[:, 6])
    diff = (model(zg, local_inputs=q) - base).abs().amax(dim=(0, 2))
    assert (diff > 1e-3).all()  # every position, including 0…5


@pytest.mark.parametrize("causal", [True, False])
def test_every_output_depends_on_z_global(causal):
    model, zg = tiny_2d(causal), z()
    base = model(zg)
    zg2 = zg.clone()
    zg2[:, 2] += 1.0  # one global token
    diff = (model(zg2) - base).abs().amax(dim=2)
    assert (diff > 1e-4).all()  # every sample, every local position


def test_default_queries_equal_explicit_local_inputs():
    model, zg = tiny_2d(), z()
    torch.testing.assert_close(model(zg), model(zg, local_inputs=queries(model)), atol=0, rtol=0)


def test_causal_output_equals_truncated_runs():
    """Position i computed in one pass = the last output of a run on prefix + local[:i+1] only."""
    model, zg = tiny_2d(), z()
    q = queries(model)
    full = model(zg)
    for i in range(q.shape[1]):
        torch.testing.assert_close(model(zg, local_inputs=q[:, : i + 1])[:, -1], full[:, i], atol=1e-5, rtol=1e-5)


def test_non_causal_output_differs_from_truncated_run():
    model, zg = tiny_2d(causal=False), z()
    short = model(zg, local_inputs=queries(model)[:, :2])[:, 0]
    assert (short - model(zg)[:, 0]).abs().amax() > 1e-3


def _reference_forward(model: LocalAligner2D, zg: torch.Tensor) -> torch.Tensor:
    """The 2D aligner with attention written out: softmax of masked scores, -inf where the mask is False."""
    c = model.cfg
    mask = causal_prefix_mask(c.num_global_tokens, c.num_local_tokens, c.causal)
    local = (model.local_queries + model.local_pos).expand(len(zg), -1, -1)
    x = torch.cat([model.from_tokens(zg) + model.global_pos, local], 1)
    h, dh = c.num_heads, c.width // c.num_heads
    for blk in model.blocks:
        a = blk.attn
        y = blk.norm1(x)
        qkv = a.qkv(y).reshape(len(x), x.shape[1], 3, h, dh).permute(2, 0, 3, 1, 4)
        qh, kh, vh = qkv[0], qkv[1], qkv[2]
        scores = (qh @ kh.transpose(-2, -1)) / dh**0.5
        scores = scores.masked_fill(~mask, float("-inf"))
        att = (scores.softmax(-1) @ vh).transpose(1, 2).reshape(len(x), x.shape[1], c.width)
        x = x + a.proj(att)
        x = x + blk.mlp(blk.norm2(x))
    return model.head(model.norm(x[:, c.num_global_tokens :]))


@pytest.mark.parametrize("causal", [True, False])
def test_sdpa_path_equals_explicit_reference(causal):
    model, zg = tiny_2d(causal), z()
    with torch.no_grad():
        torch.testing.assert_close(model(zg), _reference_forward(model, zg), atol=1e-5, rtol=1e-5)


def test_2d_gradients_reach_every_parameter():
    model = tiny_2d().train()
    model(z()).square().sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, missing


# ----------------------------------------------------------------------------- presets


def test_presets_scale_monotonically_over_30x():
    counts = aligner_2d_param_counts(token_dim=8, num_local_tokens=32)
    assert list(counts) == list(ALIGNER_2D_PRESETS)
    assert list(counts)[:5] == ["xs", "s", "m", "l", "xl"]  # the workbook's sizes, then the paper's (10M-600M)
    values = list(counts.values())
    assert all(a < b for a, b in zip(values, values[1:])), counts
    assert values[-1] / values[0] >= 30, counts
    assert 20_000 <= counts["xs"] <= 50_000 and 1_500_000 <= counts["xl"] <= 3_000_000, counts


def test_from_preset():
    model = LocalAligner2D.from_preset("xs", token_dim=8, num_local_tokens=16, out_dim=12, causal=False)
    assert model.cfg.width == ALIGNER_2D_PRESETS["xs"]["width"] and not model.cfg.causal
    assert model.cfg.num_global_tokens == 16
    assert model(torch.randn(2, 16, 8)).shape == (2, 16, 12)
    other = LocalAligner2D.from_preset("xs", token_dim=8, num_local_tokens=16, num_global_tokens=32)
    assert other(torch.randn(2, 32, 8)).shape == (2, 16, 8)


def test_unknown_preset_lists_valid_names():
    with pytest.raises(ValueError) as err:
        LocalAligner2D.from_preset("xxl", token_dim=8, num_local_tokens=32)
    for name in ALIGNER_2D_PRESETS:
        assert repr(name) in str(err.value)


def test_config_round_trip_and_unknown_keys():
    cfg = Aligner2DConfig(**TINY)
    assert Aligner2DConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(TypeError, match="valid"):
        Aligner2DConfig.from_dict({"widht": 8})


# ----------------------------------------------------------------------------- 1D aligner


def test_1d_shapes():
    zg = z(b=2, n=9, d=8)
    assert LocalAligner1D(8)(zg).shape == (2, 9, 8)
    assert LocalAligner1D(8, hidden=16, out_dim=24)(zg).shape == (2, 9, 24)
    assert LocalAligner1D(8).mlp.fc1.out_features == 32  # hidden defaults to 4×
    with pytest.raises(ValueError, match="B×N×8"):
        LocalAligner1D(8)(z(d=4))


def test_1d_is_per_token():
    torch.manual_seed(0)
    model, zg = LocalAligner1D(8, out_dim=12), z(b=2, n=9, d=8)
    perm = torch.randperm(9)
    torch.testing.assert_close(model(zg[:, perm]), model(zg)[:, perm])
    torch.testing.assert_close(model(zg[:, :1]), model(zg)[:, :1])  # a token alone gives the same output


def test_1d_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = LocalAligner1D(8, out_dim=12)
    model(z(d=8)).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
