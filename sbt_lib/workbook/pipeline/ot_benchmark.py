"""Speed and accuracy of :func:`sbt_lib.objective.ot.sinkhorn` against POT, on one batch of problems.

Shared by ``benchmarks/ot_speed.py`` (the full table) and notebook 03 (a small one).  The problems
are the OT term's: B pairs of point sets of unit vectors (random directions in d dimensions, as
the l2-normalised features of :class:`~sbt_lib.objective.ot.OTAlignment`), squared-Euclidean cost,
uniform marginals.  Every solver gets the same ε, the same tolerance and the same float32 costs;
the reference for accuracy is POT's per-problem log-domain Sinkhorn in float64 at tolerance 1e-10.
"""
from __future__ import annotations

import time
from typing import Callable

import torch

from ...objective.ot import sinkhorn, squared_euclidean
from ..report.tables import markdown_table


def random_problems(batch: int, nx: int, nz: int, dim: int, seed: int = 0, device="cpu") -> torch.Tensor:
    """B×Nx×Nz float32 costs between random unit vectors (see the module docstring)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(batch, nx, dim, generator=g), dim=-1)
    z = torch.nn.functional.normalize(torch.randn(batch, nz, dim, generator=g), dim=-1)
    return squared_euclidean(x, z).to(device)


def _timed(fn: Callable, device: torch.device, repeats: int):
    """(median seconds over ``repeats`` runs after one warm-up, last result)."""
    times, out = [], fn()
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2], out


def _reference_costs(cost: torch.Tensor, eps: float) -> torch.Tensor:
    import ot

    c = cost.double().cpu()
    a, b = torch.full((c.shape[1],), 1 / c.shape[1], dtype=torch.float64), torch.full((c.shape[2],), 1 / c.shape[2],
                                                                                      dtype=torch.float64)
    return torch.stack([ot.sinkhorn2(a, b, m, eps, method="sinkhorn_log", stopThr=1e-10, numItermax=100_000)
                        for m in c])


def compare_solvers(batch: int = 64, nx: int = 256, nz: int = 64, dim: int = 32, eps: float = 0.05,
                    tol: float = 1e-6, device: str = "cpu", repeats: int = 5, per_problem: bool = True) -> list[dict]:
    """One row per solver: ``solver``, ``device``, ``ms`` (median), ``iterations``, ``max_rel_cost_diff``
    (against the float64 reference), ``speedup`` (POT batched time / this time)."""
    import ot

    device = torch.device(device)
    cost = random_problems(batch, nx, nz, dim, device=device)
    reference = _reference_costs(cost, eps)
    a = torch.full((nx,), 1 / nx, device=device)
    b = torch.full((nz,), 1 / nz, device=device)

    def ours():
        r = sinkhorn(cost, eps=eps, tol=tol, max_iter=100_000)
        return r.cost, r.iterations

    def pot_batch():
        r = ot.batch.solve_batch(cost, reg=eps, method="log_sinkhorn", tol=tol, max_iter=100_000, grad="detach")
        return r.value_linear, r.log["n_iter"] + 1  # POT reports the 0-based index of its last iteration

    def pot_loop():
        costs = [ot.sinkhorn2(a, b, m, eps, method="sinkhorn_log", stopThr=tol, numItermax=100_000) for m in cost]
        return torch.stack(costs), None

    solvers = {"sbt_lib.objective.ot.sinkhorn": ours, "ot.batch.solve_batch": pot_batch}
    if per_problem:
        solvers["ot.sinkhorn2 (loop)"] = pot_loop
    rows = []
    for name, fn in solvers.items():
        seconds, (costs, iterations) = _timed(fn, device, repeats)
        rel = ((costs.double().cpu() - reference).abs() / reference.abs()).max().item()
        rows.append({"solver": name, "device": device.type, "ms": 1e3 * seconds, "iterations": iterations,
                     "max_rel_cost_diff": rel})
    base = next(r["ms"] for r in rows if r["solver"] == "ot.batch.solve_batch")
    for r in rows:
        r["speedup"] = base / r["ms"]
    return rows


def solver_table(rows: list[dict]) -> str:
    """The rows of :func:`compare_solvers` as a markdown table."""
    return markdown_table(
        ["solver", "device", "time (ms)", "iterations", "max rel. cost diff", "speed-up vs POT batched"],
        [[r["solver"], r["device"], f"{r['ms']:.1f}", "—" if r["iterations"] is None else r["iterations"],
          f"{r['max_rel_cost_diff']:.1e}", f"{r['speedup']:.1f}×"] for r in rows])
