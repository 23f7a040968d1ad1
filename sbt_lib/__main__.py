"""Command line.

- ``python -m sbt_lib reproduce [--scale S] [--dataset NAME|PATH] [--only 01,02] [--out DIR] [-p NAME=VALUE ...]``:
  the notebooks, headlessly (papermill).
- ``python -m sbt_lib report RUNS [--out RESULTS.md] [--scale S]``: the results page of a run folder (default
  ``RESULTS.md`` at the repository root): per notebook its headline table, command, date, machine, wall time and
  figures, from the run folders' ``metrics.json``.
- ``python -m sbt_lib train {base,tokenizer,stage2,generator} [--scale S] [--dataset D] [--out DIR] [-p NAME=VALUE ...]``:
  the base tokenizer or the reused generator (``--export DIR`` writes its shipped form), or notebook 04's stage 2, alone
  or under ``torchrun --nproc_per_node=K`` (DDP).
- ``python -m sbt_lib evaluate {base,tokenizer,stage2,generator} ...`` (the same options): what ``train`` trained,
  on the held-out split, sharded over the processes under ``torchrun``; ``evaluate generator --folder DIR`` measures a
  shipped generator folder's record again (its sample quality and check losses) without training it.
"""
from __future__ import annotations

import argparse
import ast
import sys

from .workbook.config.scales import SCALE_NAMES


def _parse_param(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"-p expects NAME=VALUE, got {text!r}")
    name, value = text.split("=", 1)
    try:
        value = ast.literal_eval(value)  # numbers, None, True, lists; anything else stays a string
    except (ValueError, SyntaxError):
        pass
    return name.strip().lower(), value


def _run_options(parser: argparse.ArgumentParser) -> None:
    """The options of ``train`` and ``evaluate``."""
    parser.add_argument("what", choices=("base", "stage2", "generator"))  # launch.WHAT, without importing torch
    parser.add_argument("--scale", default="cpu", choices=SCALE_NAMES)
    parser.add_argument("--dataset", help="auto, photos, shapes, cifar10, imagenet, or an ImageFolder path "
                                          "(default: the scale's)")
    parser.add_argument("--out", help="run folder root, as reproduce's (default: runs/<scale>)")
    parser.add_argument("-p", "--param", action="append", type=_parse_param, default=[], metavar="NAME=VALUE",
                        help="set a parameter, e.g. -p steps=500 -p micro_batch=16 (repeatable)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sbt_lib", description="SelfBootTok workbook")
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("reproduce", help="run the notebooks headlessly through papermill")
    rep.add_argument("--scale", default="cpu", choices=SCALE_NAMES)
    rep.add_argument("--dataset", help="auto, photos, shapes, cifar10, or an ImageFolder path (default: the scale's)")
    rep.add_argument("--only", help="comma-separated notebook prefixes, e.g. 01,02")
    rep.add_argument("--out", help="output folder (default: runs/<scale>)")
    rep.add_argument("-p", "--param", action="append", type=_parse_param, default=[], metavar="NAME=VALUE",
                     help="set a notebook parameter, e.g. -p steps=500 (repeatable)")
    rep.add_argument("--log-output", action="store_true", help="echo the notebooks' output")
    page = sub.add_parser("report", help="write RESULTS.md from a run folder's metrics.json files")
    page.add_argument("runs", help="the run folder, e.g. runs/cpu")
    page.add_argument("--out", help="the page to write (default: RESULTS.md at the repository root)")
    page.add_argument("--scale", choices=SCALE_NAMES, help="the run's scale (default: the folder's name, else "
                                                           "what its metrics.json say)")
    for command, what in (("train", "train the base tokenizer, its stage-2 aligners or the generator"),
                          ("evaluate", "evaluate what train trained, on the held-out split")):
        _run_options(sub.add_parser(command, help=f"{what} (alone or under torchrun)"))
    sub.choices["train"].add_argument("--export", metavar="DIR",
                                      help="base and generator: write its save_pretrained folder here when "
                                           "training ends (the shipped ones: weights/base-tokenizer-<dataset>, "
                                           "weights/generator-<dataset>)")
    sub.choices["train"].add_argument("--init", metavar="DIR",
                                      help="generator with two cycles: a generator folder trained by the first "
                                           "cycle's recipe (e.g. an earlier shipped one) stands in for the first; "
                                           "only the second is trained")
    sub.choices["evaluate"].add_argument("--folder", metavar="DIR",
                                         help="generator: measure this save_pretrained folder's record again "
                                              "(e.g. weights/generator-cifar10) instead of the run folder")
    args = parser.parse_args(argv)
    if args.command == "report":
        return _report(args)
    return _reproduce(args) if args.command == "reproduce" else _train(args)


def _report(args) -> int:
    from .workbook.report.results_page import write_report

    try:
        print(write_report(args.runs, args.out, args.scale))
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def _reproduce(args) -> int:
    from .workbook.cli.runner import NotebookFailed, reproduce  # papermill and Jupyter: only for the notebooks

    only = [o.strip() for o in args.only.split(",")] if args.only else None
    try:
        reproduce(args.scale, args.dataset, only, args.out, dict(args.param), args.log_output)
    except (NotebookFailed, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def _train(args) -> int:
    from .train import NonFiniteLossError
    from .workbook.cli.launch import evaluate_command, train_command

    command = train_command if args.command == "train" else evaluate_command
    try:
        extra = {"export": args.export, "init": args.init} if args.command == "train" else {"folder": args.folder}
        command(args.what, args.scale, args.dataset, args.out, dict(args.param), **extra)
    except KeyboardInterrupt as e:
        print(f"interrupted: {e or 'the last checkpoint is kept; run the same command again to resume'}", file=sys.stderr)
        return 130
    except (ValueError, TypeError, FileNotFoundError, NonFiniteLossError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0

if __name__ == "__main__":
    sys.exit(main())
