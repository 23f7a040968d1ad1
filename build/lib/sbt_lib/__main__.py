"""Command line: ``python -m sbt_lib reproduce [--scale tiny|cpu|gpu] [--dataset NAME|PATH]
[--only 01,02] [--out DIR] [-p NAME=VALUE ...]``."""
from __future__ import annotations

import argparse
import ast
import sys

from .workbook.runner import NotebookFailed, reproduce
from .workbook.scales import SCALE_NAMES


def _parse_param(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"-p expects NAME=VALUE, got {text!r}")
    name, value = text.split("=", 1)
    try:
        value = ast.literal_eval(value)  # numbers, None, True, lists; anything else stays a string
    except (ValueError, SyntaxError):
        pass
    return name.strip().lower(), value


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
    args = parser.parse_args(argv)
    only = [o.strip() for o in args.only.split(",")] if args.only else None
    try:
        reproduce(args.scale, args.dataset, only, args.out, dict(args.param), args.log_output)
    except (NotebookFailed, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
