"""Notebook 06's generators trained until they have learned: one SiT per tokenizer run, committed for the notebook.

Notebook 06 fine-tunes six tokenizers from the base over three seeds within its minutes; a generator per run that
learns its tokens (thousands of steps, samples measured at thousands of images) does not fit beside them.  This
script trains the notebook's tokenizers the notebook's way (into its run folder, or loads them from there), gives
every run a SiT of the notebook's ``generator`` recipe from zero velocity (the same steps for every tokenizer: equal
compute, since every tokenizer has the same global tokens), measures ``generator_samples`` samples against as many
test images (beside each tokenizer's ceiling, its decodes of real tokens, and the floor of real training images), and
writes ``benchmarks/tokenizers_compared_<scale>.json``: the recipe, one row per run, the command, machine and wall
time.  The notebook takes its generators from there where the recipe is its own::

    python benchmarks/tokenizers_compared.py [--scale cpu] [--minutes M] [-p NAME=VALUE ...]

A study, made in chunks: with ``--minutes`` no new generator starts after M minutes; the file then says
``"complete": false`` and a rerun of the same command goes on from there: the rows it measured are kept, and a
generator stopped half-way resumes from its run folder.  CIFAR-10 comes from ``$SBT_DATA/cifar10`` (e.g.
``SBT_DATA=../shared/data``).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from sbt_lib.__main__ import _parse_param
from sbt_lib.files import REPO, write_json
from sbt_lib.workbook.config.params import resolve
from sbt_lib.workbook.pipeline import ablations, caches, compare, generation_study, runs
from sbt_lib.workbook.pipeline.base import notebook_base

NOTEBOOK = "06_tokenizers_compared"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", default="cpu")
    parser.add_argument("--dataset", default=None)
    parser.add_argument("--minutes", type=float, default=None, help="start no new generator after this many minutes")
    parser.add_argument("-p", "--param", action="append", type=_parse_param, default=[], metavar="NAME=VALUE")
    parser.add_argument("--out", default=str(REPO / "benchmarks"), help="where the summary goes")
    args = parser.parse_args()

    t0 = time.time()
    deadline = t0 + 60 * args.minutes if args.minutes else None
    P = resolve(NOTEBOOK, args.scale, dataset=args.dataset, **dict(args.param))
    out = REPO / "runs" / args.scale / NOTEBOOK  # the notebook's own run folder under `make reproduce`
    train_set, test_set = caches.load_data(P)
    base = notebook_base(P, train_set, test_set, out.parent)
    hist_w, residual_w = P.study.glotok_weights
    variants = compare.tokenizer_variants(P.tokenizer.local_2d, P.study.crt_weights, hist_w, residual_w)
    rows = ablations.run_on_base(P, base, variants, train_set, test_set, out, finetune=True)
    real = caches.test_images(P, P.generator.samples)
    stem = Path(args.out) / f"tokenizers_compared_{args.scale}"
    recipe = compare.study_recipe(P, variants)
    earlier = compare.saved_study(stem.with_suffix(".json"), recipe)  # the chunks before this one
    before = compare.measured_rows(earlier)
    todo = [r for r in rows if (r["variant"], r["seed"]) not in before]
    compare.with_generators(P, variants, todo, train_set, real, deadline=deadline)
    found = before | {(r["variant"], r["seed"]): {"variant": r["variant"], "seed": r["seed"],
                                                  **{k: r[k] for k in compare.GENERATOR_ROW_KEYS}}
                      for r in todo if "gfd" in r}
    done = [found[key] for key in ((r["variant"], r["seed"]) for r in rows) if key in found]
    write_json(stem.with_suffix(".json"), {
        "command": " ".join(["python", *sys.argv]), "machine": runs.machine(),
        "seconds": time.time() - t0 + (earlier["seconds"] if before else 0.0),
        "complete": len(done) == len(rows), "recipe": recipe,
        "floor": generation_study.floor(train_set, real, P.eval.fd_size), "rows": done})
    for r in done:
        print(f"{r['variant']}, seed {r['seed']}: {r['gfd_label']} {r['gfd']:.1f}, KID {r['gkid']:.4f}, "
              f"ceiling {r['ceiling_gfd']:.1f} "
              f"({r['generator_steps']} steps, {r['generator_seconds']:.0f} s)")
    print(f"{len(done)} of {len(rows)} generators → {stem}.json ({time.time() - t0:.0f} s)"
          + ("" if len(done) == len(rows) else "; rerun the same command to go on"))


if __name__ == "__main__":
    main()
