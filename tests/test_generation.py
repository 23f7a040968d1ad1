"""The generator: SiT, the flow-matching path and loss, and the samplers on a problem with a known answer.

Data N(μ, diag σ²) and noise N(0, I), coupled independently, give the linear path a velocity field in
closed form, v(x, t) = μ + (tσ² − (1 − t)) / (t²σ² + (1 − t)²) · (x − tμ), whose flow maps x0 to μ + σ x0.
"""
import pytest
import torch

from sbt_lib.batch import Batch
from sbt_lib.generation.path import interpolate, score_from_velocity, target_velocity
from sbt_lib.generation.samplers import dopri5, euler, euler_maruyama, guided, heun, sample
from sbt_lib.generation.transport import FlowMatchingLoss, TokenNormalizer, sample_time
from sbt_lib.models.class_mixture import ClassMixture
from sbt_lib.models.gaussian_flow import GaussianFlow
from sbt_lib.models.sit import SIT_PRESETS, SiT
from sbt_lib.train import TrainConfig, train

MU = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
SIGMA = torch.tensor([0.5, 1.0, 2.0, 0.1], dtype=torch.float64)


def exact_velocity(x, t):
    return MU + (t * SIGMA**2 - (1 - t)) / (t**2 * SIGMA**2 + (1 - t) ** 2) * (x - t * MU)


@pytest.fixture
def x0():
    return torch.randn(2000, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def test_the_path_and_its_score():
    x0, x1, t = torch.randn(5, 3), torch.randn(5, 3), torch.rand(5)
    xt = interpolate(x0, x1, t)
    assert torch.allclose(xt, t[:, None] * x1 + (1 - t[:, None]) * x0)
    assert torch.equal(interpolate(x0, x1, torch.zeros(5)), x0) and torch.equal(interpolate(x0, x1, torch.ones(5)), x1)
    # with the exact velocity, the score is -E[x0 | x_t] / (1 - t): here the marginal's own Gaussian score
    x, s = torch.randn(7, 4, dtype=torch.float64), 0.3
    var = s**2 * SIGMA**2 + (1 - s) ** 2
    assert torch.allclose(score_from_velocity(exact_velocity(x, s), x, torch.tensor(s)), -(x - s * MU) / var)
    assert torch.equal(target_velocity(x0, x1), x1 - x0)


@pytest.mark.parametrize("method, order", [(euler, 1), (heun, 2)])
def test_euler_and_heun_show_their_orders(x0, method, order):
    exact = MU + SIGMA * x0
    errors = [(method(exact_velocity, x0, n) - exact).abs().max().item() for n in (20, 40, 80)]
    ratios = [a / b for a, b in zip(errors, errors[1:])]
    assert all(abs(r - 2**order) < 0.25 * 2**order for r in ratios), (errors, ratios)


def test_dopri5_is_accurate_and_counts_its_evaluations(x0):
    stats = {}
    out = dopri5(exact_velocity, x0, rtol=1e-7, atol=1e-7, stats=stats)
    assert (out - (MU + SIGMA * x0)).abs().max() < 1e-4
    assert stats["nfe"] > 6


@pytest.mark.parametrize("sampler", ["heun", "sde"])
def test_samples_converge_to_the_data_distribution(sampler):
    x0 = torch.randn(20_000, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    if sampler == "heun":
        out = heun(exact_velocity, x0, 50)
    else:
        out = euler_maruyama(exact_velocity, x0, 400, last_step=0.01, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(out.mean(0), MU, atol=0.05), out.mean(0)
    assert torch.allclose(out.std(0), SIGMA, rtol=0.05, atol=0.01), out.std(0)
    # and the error shrinks with steps: 5 Euler steps land visibly off
    coarse = euler(exact_velocity, x0, 2)
    assert (coarse.std(0) - SIGMA).abs().max() > 0.05


def test_the_sde_last_step_biases_a_narrow_dimension_less_as_it_shrinks():
    """SiT's deterministic last step keeps the drift's contraction but drops the noise: for data much narrower
    than the noise (σ = 0.1 here) a long last step shrinks the spread; a short one does not."""
    x0 = torch.randn(20_000, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    std = {ls: euler_maruyama(exact_velocity, x0, 400, last_step=ls, generator=torch.Generator().manual_seed(2))
           .std(0)[3].item() for ls in (0.04, 0.01)}
    assert std[0.04] < 0.09 < 0.095 < std[0.01] < 0.105, std


def trained_like(model: SiT) -> SiT:
    """A SiT whose zero-initialised gates and output are perturbed, so it computes something."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def test_sit_starts_at_zero_velocity_and_checks_its_input():
    model = SiT(num_tokens=6, token_dim=4, num_classes=3, size="tiny")
    x = torch.randn(2, 6, 4)
    assert torch.equal(model(x, torch.rand(2), torch.tensor([0, 2])), torch.zeros(2, 6, 4))
    with pytest.raises(ValueError, match="B×6×4"):
        model(torch.randn(2, 5, 4), torch.rand(2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="valid"):
        SiT(size="huge")
    assert list(SIT_PRESETS)[-4:] == ["S", "B", "L", "XL"]


def test_a_sit_patch_joins_consecutive_tokens_into_one_sequence_element():
    joined = trained_like(SiT(num_tokens=6, token_dim=4, num_classes=3, size="tiny", patch=3))
    wide = SiT(num_tokens=2, token_dim=12, num_classes=3, size="tiny")  # tokens 0-2 and 3-5 as two of 12 numbers
    wide.load_state_dict(joined.state_dict())
    x, t, y = torch.randn(2, 6, 4), torch.rand(2), torch.tensor([0, 2])
    v = joined.eval()(x, t, y)
    assert v.shape == (2, 6, 4) and v.abs().amin() > 0
    assert torch.allclose(v, wide.eval()(x.reshape(2, 2, 12), t, y).reshape(2, 6, 4), atol=1e-6)
    with pytest.raises(ValueError, match="divide num_tokens 6"):
        SiT(num_tokens=6, token_dim=4, size="tiny", patch=4)


def test_label_dropout_uses_the_null_class():
    model = trained_like(SiT(num_tokens=6, token_dim=4, num_classes=3, size="tiny", class_dropout=1.0))
    x, t, y = torch.randn(4, 6, 4), torch.rand(4), torch.tensor([0, 1, 2, 1])
    null = torch.full_like(y, model.null_class)
    model.train()
    dropped = model(x, t, y)
    model.eval()
    assert torch.allclose(dropped, model(x, t, null)) and not torch.allclose(dropped, model(x, t, y))


def test_guidance_at_scale_one_is_the_conditional_model():
    model = trained_like(SiT(num_tokens=6, token_dim=4, num_classes=3, size="tiny"))
    x, y = torch.randn(4, 6, 4), torch.tensor([0, 1, 2, 1])
    t = torch.full((4,), 0.3)
    cond, uncond = model(x, t, y), model(x, t, torch.full_like(y, 3))
    assert torch.equal(guided(model, y, 1.0)(x, 0.3), cond)
    assert torch.allclose(guided(model, y, 3.0)(x, 0.3), uncond + 3.0 * (cond - uncond), atol=1e-6)
    assert torch.equal(guided(model, y, 3.0, interval=(0.5, 1.0))(x, 0.3), cond)  # outside the interval


def test_a_guidance_interval_runs_the_null_pass_only_inside_it():
    model = trained_like(SiT(num_tokens=6, token_dim=4, num_classes=3, size="tiny"))
    y = torch.tensor([0, 1, 2])
    whole, part = {}, {}
    sample(model, y, "heun", steps=4, scale=2.0, stats=whole)
    sample(model, y, "heun", steps=4, scale=2.0, interval=(0.5, 1.0), stats=part)
    assert whole == {"nfe": 8, "guided": 8}
    # Heun × 4 evaluates at t = 0, .25 | .25, .5 | .5, .75 | .75, 1: five of them at t ≥ 0.5
    assert part == {"nfe": 8, "guided": 5}
    with pytest.raises(ValueError, match="guidance_from"):
        sample(model, y, "heun", steps=4, scale=2.0, interval=(1.2, 1.0))


def test_every_sampler_returns_tokens_of_the_right_shape():
    model = trained_like(SiT(num_tokens=6, token_dim=4, num_classes=3, size="tiny"))
    y = torch.tensor([0, 1, 2])
    for sampler in ("euler", "heun", "dopri5", "sde"):
        stats = {}
        out = sample(model, y, sampler, steps=4, scale=2.0, generator=torch.Generator().manual_seed(0), stats=stats)
        assert out.shape == (3, 6, 4) and torch.isfinite(out).all() and stats["nfe"] > 0, sampler
    with pytest.raises(ValueError, match="valid"):
        sample(model, y, "rk4")


def test_time_sampling_and_normalizer():
    for how in ("uniform", "logit_normal"):
        t = sample_time(10_000, how, generator=torch.Generator().manual_seed(0))
        assert 0 < t.min() and t.max() < 1 and abs(t.mean() - 0.5) < 0.02
    with pytest.raises(ValueError, match="valid"):
        sample_time(3, "beta")
    z = torch.randn(50, 6, 4) * torch.tensor([1.0, 2.0, 3.0, 0.5]) + 7
    norm = TokenNormalizer(4).fit(z)
    x = norm.normalize(z).reshape(-1, 4)
    assert torch.allclose(x.mean(0), torch.zeros(4), atol=1e-5) and torch.allclose(x.std(0), torch.ones(4), atol=1e-5)
    assert torch.allclose(norm.denormalize(norm.normalize(z)), z, atol=1e-5)
    assert set(norm.state_dict()) == {"mean", "std"}  # saved with the generator


def test_the_gaussian_flow_is_the_closed_form_velocity():
    flow = GaussianFlow(num_classes=1, dim=4).double()
    flow.mean[0], flow.variance[0] = MU, SIGMA**2  # the basis is the identity: the diagonal case above
    x, t = torch.randn(7, 4, dtype=torch.float64), torch.rand(7, dtype=torch.float64)
    v = flow(x, t, torch.zeros(7, dtype=torch.long))
    assert torch.allclose(v, exact_velocity(x, t[:, None]), atol=1e-10)


def correlated_gaussians(n=3000, dim=6, classes=2, seed=0):
    """``n`` samples of each of ``classes`` Gaussians with random means and full covariances, and their labels."""
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(classes, dim, dim, generator=g) / dim**0.5
    means = 2 * torch.randn(classes, dim, generator=g)
    x = torch.cat([means[k] + torch.randn(n, dim, generator=g) @ mixing[k].T for k in range(classes)])
    return x, torch.arange(classes).repeat_interleave(n), means, mixing @ mixing.transpose(1, 2)


def test_an_untrained_sit_with_a_gaussian_prior_samples_each_class_gaussian():
    x, y, means, covs = correlated_gaussians()
    model = SiT(num_tokens=3, token_dim=2, num_classes=2, size="tiny", prior="gaussian")
    model.prior.fit(x.reshape(-1, 3, 2), y)
    assert torch.allclose(model.prior.mean[:2], means, atol=0.1)
    classes = torch.tensor([0, 1]).repeat_interleave(3000)
    z = sample(model, classes, "heun", steps=30, generator=torch.Generator().manual_seed(1)).reshape(-1, 6)
    for k in range(2):
        zk = z[classes == k]
        assert torch.allclose(zk.mean(0), means[k], atol=0.08), k  # the class's own mean and covariance,
        assert torch.allclose(torch.cov(zk.T), covs[k], atol=0.12), k  # off-diagonal terms included
    null = sample(model, torch.full((3000,), 2), "heun", steps=30, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(null.reshape(-1, 6).mean(0), means.mean(0), atol=0.12)  # the null class: both together


def test_the_gaussian_prior_sees_the_dropped_label_and_lowers_the_first_loss():
    x, y, *_ = correlated_gaussians(n=256, dim=8)
    tokens = x.reshape(-1, 2, 4)
    model = trained_like(SiT(num_tokens=2, token_dim=4, num_classes=2, size="tiny", prior="gaussian",
                             class_dropout=1.0))
    model.prior.fit(tokens, y)
    xt, t, labels = torch.randn(4, 2, 4), torch.rand(4), torch.tensor([0, 1, 1, 0])
    model.train()
    dropped = model(xt, t, labels)
    model.eval()
    assert torch.allclose(dropped, model(xt, t, torch.full_like(labels, 2)), atol=1e-6)

    normalizer = TokenNormalizer(4).fit(tokens)
    batch = Batch(torch.zeros(512, 3, 2, 2), y, torch.arange(512), 0)
    first = {}
    for prior in ("none", "gaussian"):
        plain = SiT(num_tokens=2, token_dim=4, num_classes=2, size="tiny", prior=prior, class_dropout=0.0)
        if plain.prior is not None:
            plain.prior.fit(normalizer.normalize(tokens), y)
        torch.manual_seed(0)
        first[prior] = FlowMatchingLoss(tokens, normalizer)(plain, batch)["flow"].item()
    assert first["gaussian"] < 0.8 * first["none"], first  # training starts where the Gaussian ends


def test_the_gaussian_prior_says_what_is_wrong():
    with pytest.raises(ValueError, match="prior='none'"):
        GaussianFlow(num_classes=1000, dim=2048)
    with pytest.raises(ValueError, match="class 1 has 1"):
        GaussianFlow(num_classes=2, dim=3).fit(torch.randn(5, 3), torch.tensor([0, 0, 0, 0, 1]))
    with pytest.raises(ValueError, match="valid"):
        SiT(prior="mixture")


def test_a_class_mixture_finds_the_modes_a_gaussian_fills_in():
    g = torch.Generator().manual_seed(0)
    signs = torch.randint(0, 2, (4000,), generator=g) * 2 - 1            # class 0: two modes at x0 = ±3
    x = torch.stack([3.0 * signs + 0.3 * torch.randn(4000, generator=g), torch.randn(4000, generator=g)], 1)
    x = torch.cat([x, torch.randn(4000, 2, generator=g) + 10]).reshape(-1, 1, 2)  # class 1: one mode at 10
    y = torch.arange(2).repeat_interleave(4000)
    classes = torch.tensor([1, 0]).repeat(1000)
    z = {k: ClassMixture(k).fit(x, y).sample(classes, seed=1) for k in (1, 2)}
    between = {k: (z[k][classes == 0, 0, 0].abs() < 1.5).float().mean().item() for k in z}
    assert between[2] < 0.01 < 0.2 < between[1], between                  # one Gaussian puts mass between the modes
    assert z[2].shape == (2000, 1, 2) and (z[2][classes == 1].mean() - 10).abs() < 0.2
    assert torch.equal(ClassMixture(2).fit(x, y).sample(classes, seed=1), z[2])  # seeded
    with pytest.raises(ValueError, match="not in the data"):
        ClassMixture(2).fit(x, y).sample(torch.tensor([3]))
    with pytest.raises(ValueError, match="fewer components"):
        ClassMixture(8).fit(x[:5], torch.zeros(5))


class TokenData:
    """A stand-in for a data set of cached tokens: class k's tokens sit at k + noise."""

    def __init__(self, n=512, classes=3):
        g = torch.Generator().manual_seed(0)
        self.targets = torch.arange(n) % classes
        self.tokens = self.targets[:, None, None].float() + 0.1 * torch.randn(n, 6, 4, generator=g)

    def __len__(self):
        return len(self.targets)

    def get_batch(self, indices, step=0):
        return Batch(torch.zeros(len(indices), 3, 2, 2), self.targets[indices], indices, step)


def test_the_generator_learns_class_conditional_tokens_through_the_engine(tmp_path):
    data = TokenData()
    normalizer = TokenNormalizer(4).fit(data.tokens)
    torch.manual_seed(0)
    model = SiT(num_tokens=6, token_dim=4, num_classes=3, size="tiny", class_dropout=0.1)
    loss = FlowMatchingLoss(data.tokens, normalizer)
    cfg = TrainConfig(steps=300, batch_size=64, lr=3e-3, warmup=20, log_every=10, progress=False, ema=0.0)
    result = train(model, loss, data, cfg, out_dir=tmp_path)
    losses = [r["flow"] for r in result.history if "flow" in r]
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:3]) / 3, losses
    y = torch.tensor([0, 1, 2] * 50)
    tokens = normalizer.denormalize(sample(result.model, y, "heun", steps=20, scale=2.0,
                                           generator=torch.Generator().manual_seed(0)))
    means = torch.stack([tokens[y == k].mean() for k in range(3)])
    assert torch.allclose(means, torch.arange(3.0), atol=0.35), means  # each class lands near its own tokens


@pytest.mark.parametrize("groups", ["global", "all"])
def test_a_generator_trains_on_a_tokenizers_cached_tokens_and_decodes(tmp_path, groups):
    from sbt_lib.workbook.config.params import resolve
    from sbt_lib.workbook.pipeline import caches, generators, trainers
    from sbt_lib.workbook.pipeline.runs import load_generator

    P = resolve("04_aligner_scaling", "tiny", train_size=64, test_size=16, generator_size="tiny", generator_steps=6,
                generator_batch_size=16, generator_prior="gaussian")
    train_set, _ = caches.load_data(P)
    tokenizer = trainers.build_tokenizer(P, train_set)
    result = generators.train_generator(P, tokenizer, train_set, tmp_path, groups=groups, progress=False)
    n = P.tokenizer.num_tokens * (1 if groups == "global" else 2) + (P.tokenizer.local_tokens if groups == "all" else 0)
    assert result.step == 6 and result.model.cfg.num_tokens == n
    generator, normalizer = load_generator(tmp_path)
    assert not torch.equal(normalizer.std, torch.ones_like(normalizer.std))  # fitted, and saved with it
    assert P.generator.prior == "gaussian" and torch.equal(generator.prior.mean, result.model.prior.mean.cpu())
    assert not torch.equal(generator.prior.variance, torch.ones_like(generator.prior.variance))  # fitted too
    stats = {}
    images = generators.generate_images(tokenizer, generator, normalizer, torch.tensor([0, 1, 2]), groups,
                                        sampler="euler", steps=3, scale=2.0, stats=stats)
    assert images.shape == (3, 3, 16, 16) and images.abs().max() <= 1 and stats["nfe"] == 3
    with pytest.raises(ValueError, match="valid"):
        caches.token_cache(tokenizer, train_set, P, groups="local")
