"""The batched Sinkhorn solver against POT, its edge cases, and the OT alignment term."""
import ot
import pytest
import torch

import sbt_lib.objective.ot as sot
from sbt_lib.objective.ot import OTAlignment, SinkhornResult, ot_loss, sinkhorn, squared_euclidean
from sbt_lib.workbook.pipeline.ot_benchmark import random_problems


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture(scope="module")
def problems():
    return random_problems(4, 40, 12, 8, seed=1).double()


def _uniform(n):
    return torch.full((n,), 1.0 / n, dtype=torch.float64)


def test_plan_and_cost_match_pot_per_problem(problems):
    res = sinkhorn(problems, eps=0.05, tol=1e-10, max_iter=20_000)
    for i, cost in enumerate(problems):
        a, b = _uniform(cost.shape[0]), _uniform(cost.shape[1])
        plan = ot.sinkhorn(a, b, cost, 0.05, method="sinkhorn_log", stopThr=1e-12, numItermax=100_000)
        value = ot.sinkhorn2(a, b, cost, 0.05, method="sinkhorn_log", stopThr=1e-12, numItermax=100_000)
        assert _rel(res.plan[i], plan) < 1e-5
        assert abs(res.cost[i].item() - value.item()) / value.item() < 1e-5


def test_the_solver_result_is_named_sinkhorn_result(problems):
    """``Transport`` is the generator's flow-matching transport; the solver's result must not take the name."""
    assert isinstance(sinkhorn(problems[:1], eps=0.5), SinkhornResult)
    assert not hasattr(sot, "Transport")


def test_matches_pot_batched_solver_in_float32(problems):
    cost = problems.float()
    res = sinkhorn(cost, eps=0.05, tol=1e-6)
    pot = ot.batch.solve_batch(cost, reg=0.05, method="log_sinkhorn", tol=1e-6, max_iter=10_000, grad="detach")
    assert _rel(res.cost, pot.value_linear) < 1e-5
    assert _rel(res.plan, pot.plan) < 1e-4  # both stop at a marginal error of 1e-6, from different sides
    assert res.error < 1e-6 and res.errors[-1] == res.error and len(res.errors) == res.iterations // 10


def test_given_marginals_match_pot(problems):
    g = torch.Generator().manual_seed(0)
    a = torch.rand(problems.shape[1], generator=g, dtype=torch.float64) + 0.1
    b = torch.rand(problems.shape[2], generator=g, dtype=torch.float64) + 0.1
    a, b = a / a.sum(), b / b.sum()
    res = sinkhorn(problems, a, b, eps=0.1, tol=1e-10)
    plan = ot.sinkhorn(a, b, problems[0], 0.1, method="sinkhorn_log", stopThr=1e-12, numItermax=100_000)
    assert _rel(res.plan[0], plan) < 1e-5
    assert torch.allclose(res.plan.sum(2), a.expand(4, -1), atol=1e-9)
    assert torch.allclose(res.plan.sum(1), b.expand(4, -1), atol=1e-12)  # exact after the v update


@pytest.mark.parametrize("eps", [1e-3, 1e-5, 1e-8])
def test_tiny_eps_stays_finite_with_exact_column_marginals(problems, eps):
    res = sinkhorn(problems.float(), eps=eps, max_iter=300)
    assert torch.isfinite(res.plan).all() and torch.isfinite(res.cost).all()
    assert torch.allclose(res.plan.sum(1), torch.full((4, 12), 1 / 12), atol=1e-5)
    assert torch.allclose(res.plan.sum((1, 2)), torch.ones(4), atol=1e-3)


def test_all_zero_cost_gives_the_independent_coupling():
    res = sinkhorn(torch.zeros(2, 5, 3))
    assert torch.allclose(res.plan, torch.full((2, 5, 3), 1 / 15))
    assert res.iterations == 10 and res.cost.abs().max() == 0


def test_duplicate_points_share_mass_equally():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 6, 3, generator=g)
    x = torch.cat([x, x[:, :2]], 1)  # points 6, 7 duplicate points 0, 1
    z = torch.randn(1, 4, 3, generator=g)
    res = sinkhorn(squared_euclidean(x, z), eps=0.01, tol=1e-7)
    assert torch.isfinite(res.plan).all()
    assert torch.allclose(res.plan[0, 6], res.plan[0, 0], atol=1e-6)
    assert torch.allclose(res.plan[0, 7], res.plan[0, 1], atol=1e-6)


def test_bad_inputs_are_clear_errors():
    cost = torch.rand(2, 5, 3)
    with pytest.raises(ValueError, match="marginal a has shape"):
        sinkhorn(cost, a=torch.full((4,), 0.25))
    with pytest.raises(ValueError, match="marginal b has shape"):
        sinkhorn(cost, b=torch.full((2, 5), 0.2))
    with pytest.raises(ValueError, match="strictly positive"):
        sinkhorn(cost, a=torch.tensor([0.0, 0.25, 0.25, 0.25, 0.25]))
    with pytest.raises(ValueError, match="sum to 1"):
        sinkhorn(cost, a=torch.full((5,), 0.3))
    with pytest.raises(ValueError, match="B×Nx×Nz"):
        sinkhorn(torch.rand(5, 3))
    with pytest.raises(ValueError, match="eps"):
        sinkhorn(cost, eps=0.0)
    with pytest.raises(ValueError, match="NaN or inf"):
        sinkhorn(torch.full((1, 2, 2), float("nan")))
    with pytest.raises(ValueError, match="B×Nx×d and z of shape B×Nz×d"):
        squared_euclidean(torch.rand(2, 5, 3), torch.rand(2, 4, 2))


def test_log_domain_fallback_gives_the_same_solution(problems, monkeypatch):
    """A block whose scalings go non-finite is redone in the log domain; the answer is unchanged."""
    reference = sinkhorn(problems, eps=0.05, tol=1e-10)
    calls = {"n": 0}
    real_isfinite = torch.isfinite

    def flaky(x):  # report the scalings (B×n) of the first two blocks as overflowed
        if x.ndim == 2:
            calls["n"] += 1
            if calls["n"] <= 2:
                return torch.zeros_like(x, dtype=torch.bool)
        return real_isfinite(x)

    monkeypatch.setattr(sot.torch, "isfinite", flaky)
    res = sinkhorn(problems, eps=0.05, tol=1e-10)
    assert res.log_domain_blocks >= 1
    assert _rel(res.plan, reference.plan) < 1e-8


def test_loss_gradient_is_the_plan():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 10, 4, generator=g, requires_grad=True)
    z = torch.randn(3, 5, 4, generator=g, requires_grad=True)
    loss, solution = ot_loss(x, z, eps=0.5)
    assert isinstance(solution, SinkhornResult)
    loss.backward()
    # d⟨P, C⟩/dz_j = Σ_i P_ij · 2 (z_j − x_i), averaged over the batch
    expected = 2 * (solution.plan.sum(1).unsqueeze(-1) * z - solution.plan.transpose(1, 2) @ x) / 3
    assert torch.allclose(z.grad, expected.detach(), atol=1e-5)


def test_alignment_cannot_collapse_by_shrinking_or_scaling():
    torch.manual_seed(0)
    align = OTAlignment(token_dim=4, latent_dim=3, eps=0.05)
    latents = torch.randn(2, 64, 3)
    tokens = torch.randn(2, 8, 4)
    base, _ = align(latents, tokens)
    for s in (1e-4, 1e3):
        assert torch.allclose(align(latents, s * tokens)[0], base, rtol=1e-4)
        assert torch.allclose(align(s * latents, tokens)[0], base, rtol=1e-4)
    assert align(latents, torch.zeros_like(tokens))[0].item() == pytest.approx(1.0, abs=1e-5)  # cos = 0 everywhere
    with torch.no_grad():
        align.proj.weight.mul_(1e-6)
    assert align(latents, tokens)[0].item() > 0.05


def test_alignment_loss_stays_above_zero_when_optimised():
    """Free tokens and projector, optimised on the loss alone, cannot drive it to zero: 64 latent
    directions cannot all sit on 8 tokens."""
    torch.manual_seed(0)
    align = OTAlignment(token_dim=4, latent_dim=3, eps=0.02)
    latents = torch.randn(1, 64, 3)
    tokens = torch.randn(1, 8, 4, requires_grad=True)
    opt = torch.optim.Adam([tokens, *align.parameters()], lr=0.05)
    first = None
    for _ in range(150):
        loss, _ = align(latents, tokens)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.7 * first  # it does learn …
    assert loss.item() > 0.05  # … but it cannot reach zero
