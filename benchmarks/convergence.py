"""The convergence study: notebooks 02-04's comparisons trained until their curves flatten, over seeds.

Parts (``--part``; :mod:`sbt_lib.workbook.pipeline.convergence` has the details and the reasons for each choice):

- **A**, decoder sides on the frozen base at equal global tokens (notebooks 02, 03): ``G``, ``G (param-matched)``,
  ``G+L1``, ``G+L1+L2``, ``REPA-local: hog``, ``with L_OT``; seeds 0 1 2.
- **B**, whole tokenizers end to end with the base's recipe (Table 3): ``G``, ``G+L1+L2`` (``REPA-local: hog``,
  ``with L_OT`` when named in ``--variants``); seeds 0 1.
- **C**, stage 2 on the base (notebook 04, Fig. 6): ``two-stage xs``, ``two-stage xl``, ``xs at the FLOPs of xl``;
  seeds 0 1 2.

Every run trains on the whole training split and is evaluated at images seen doubling from 6,400 to ``--max-images``
(held-out PSNR, SSIM, rFD-EffNet, FD-HOG and the swap drop on ``--eval-images`` test images).  The work goes round
robin by level: every run to 6,400 images, then every run to 12,800, ...; A and C stop at the first level where their
best variant gains < 0.05 dB and < 2% rFD per doubling, or at ≥ 320k images.  ``--minutes N`` stops every run at the
end of a step after N minutes, with a checkpoint, as Ctrl-C or ``kill PID`` (SIGTERM; a job started in the background
ignores Ctrl-C) do at any time; the same command resumes, and nothing evaluated is redone.  After
every evaluation ``benchmarks/convergence_<scale>.json`` (command, machine, images/s and CPU hours per part, every run's
curve, the curves' statistics, the stopping rule) and ``convergence_<scale>.png`` are rewritten.

A chunk of the study at cpu (about 90 minutes with the start; make it in a root outside the work tree, so that the next
chunk finds the runs, and commit the JSON and the figure after each chunk; on a machine without the root, the call
rebuilds it from the committed JSON, keeping every evaluation, and retrains the unfinished runs from their start):

    SBT_DATA=../shared/data python benchmarks/convergence.py --scale cpu --root /work/runs/convergence-cpu --minutes 85

    python benchmarks/convergence.py [--scale cpu] [--part A B C] [--variants NAME ...] [--seeds 0 1 2]
        [--max-images 409600] [--eval-images 1000] [--minutes N] [--until-images N] [--workers 0]
        [--root DIR] [--out DIR] [--dataset NAME]
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time

from sbt_lib.workbook.pipeline import convergence
from sbt_lib.workbook.report import convergence as report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", default="cpu", choices=list(convergence.SCALES))
    parser.add_argument("--part", nargs="+", default=list(convergence.PARTS), metavar="PART",
                        help="A, B and/or C (default: all)")
    parser.add_argument("--variants", nargs="+", default=None, metavar="NAME",
                        help="only these variants of the selected parts (default: each part's)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="seeds for every part (default: A 0 1 2, "
                                                                           "B 0 1, C 0 1 2)")
    parser.add_argument("--max-images", type=int, default=None, help="the last level (cpu: 409600)")
    parser.add_argument("--eval-images", type=int, default=None, help="test images per evaluation (cpu: 1000)")
    parser.add_argument("--minutes", type=float, default=None, help="stop cleanly after this many minutes")
    parser.add_argument("--until-images", type=int, default=None, help="this time, only the levels up to this one")
    parser.add_argument("--workers", type=int, default=0, help="runs trained at once (0: one per CPU thread)")
    parser.add_argument("--root", default=None, help="the run folders (default: $SBT_RUNS or runs/, "
                                                     "/convergence-<scale>)")
    parser.add_argument("--out", default=None, help="where the JSON and the figure go (default: benchmarks/)")
    parser.add_argument("--dataset", default=None, help="default: the scale's (cpu: CIFAR-10 where it can be had)")
    args = parser.parse_args(argv)

    t0 = time.time()
    line = " ".join(["python", "benchmarks/convergence.py", *map(shlex.quote, sys.argv[1:] if argv is None else argv)])
    try:
        results = convergence.run_study(
            args.scale, args.part, args.variants, args.seeds, args.max_images, args.eval_images, args.root, args.out,
            args.minutes, args.workers, args.until_images, line, args.dataset)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (kill) during a sweep: every run saved a checkpoint at its step
        print(f"\nstopped after {(time.time() - t0) / 60:.1f} min: every run in training saved its checkpoint; the "
              f"results hold the evaluations made so far. Run the same command to go on.", file=sys.stderr)
        return 130
    print()
    print(report.report(results, [p for p in convergence.PARTS if p in results["parts"]], scale=args.scale))
    where = report.results_file(args.scale, args.out)
    state = ("paused at the deadline: run the same command to go on" if results["paused"] else
             "stopped (--until-images): run again to go on" if args.until_images else
             "every run of the selected parts is done" if all(p["finished"] for p in results["parts"].values())
             else "the selected runs are done; the parts' other runs remain (select them with --variants/--seeds, "
                  "or name neither)")
    print(f"\n{where} and {where.with_suffix('.png')} written ({(time.time() - t0) / 60:.1f} min); {state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
