"""Entropic OT solvers on the OT term's problem size: this workbook's Sinkhorn against POT.

    .venv/bin/python benchmarks/ot_speed.py            # B=64, Nx=256, Nz=64, d=32, eps=0.05, tol=1e-6
    .venv/bin/python benchmarks/ot_speed.py --eps 0.01 --repeats 9

Prints one table per device (CPU, and CUDA when present): median time, iterations, and the largest
relative difference of the transport cost from a float64 reference (POT, tolerance 1e-10).  See
:mod:`sbt_lib.workbook.pipeline.ot_benchmark` for how the problems are made.
"""
from __future__ import annotations

import argparse

import torch

from sbt_lib.workbook.pipeline.ot_benchmark import compare_solvers, solver_table


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--nx", type=int, default=256)
    ap.add_argument("--nz", type=int, default=64)
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--eps", type=float, default=0.05)
    ap.add_argument("--tol", type=float, default=1e-6)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"B={args.batch}, Nx={args.nx}, Nz={args.nz}, d={args.dim}, eps={args.eps}, tol={args.tol}, "
          f"float32, {torch.get_num_threads()} CPU threads, median of {args.repeats}\n")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        rows = compare_solvers(args.batch, args.nx, args.nz, args.dim, args.eps, args.tol, device, args.repeats,
                               per_problem=True)
        print(solver_table(rows), "\n")


if __name__ == "__main__":
    main()
