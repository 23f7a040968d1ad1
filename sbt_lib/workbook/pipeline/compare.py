"""Table 1 in miniature (notebook 06): tokenizers side by side at the same token budget, each with the same
small generator trained on the tokens it needs.

The tokenizers are variants of one :class:`~sbt_lib.workbook.config.params.Params` (the same number of global tokens,
token size, training steps and seeds): the SoftVQ baseline (global tokens only), SelfBootTok (G+L1+L2), and
the SoftVQ baseline with CRT's causal regulariser (:mod:`sbt_lib.objective.crt`) at a few weights or with
GloTok's histogram relations and residual recovery (:mod:`sbt_lib.objective.glotok`,
:mod:`sbt_lib.models.residual`).  :func:`with_generators` gives every trained tokenizer run its generator
(``P.generator``, on ``z_global``, decoded through ``decode_from_global``) and measures it.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ...eval.flops import flops_by_module
from ...eval.generation import generation_metrics
from ...eval.reconstruction import held_out_images
from ...files import REPO
from ..config.params import Params
from .caches import token_cache
from .generation_study import ceiling
from .generators import generate_images, train_generator
from .runs import load_generator, load_tokenizer

# The rows of the papers' own tables for these methods: ImageNet at 256×256, tokenizers of ~100M+ parameters
# trained for days on many GPUs, generators of ~700M.  Printed beside the miniature for orientation only.
PAPER_ROWS = [
    {"tokenizer": "SoftVQ", "tokens": 64, "generator": "SiT-XL", "rFID": 0.88, "gFID (no CFG)": 5.98, "gFID (CFG)": 1.78,
     "source": "SelfBootTok Table 1"},
    {"tokenizer": "SelfBootTok", "tokens": 64, "generator": "SiT-XL", "rFID": 0.66, "gFID (no CFG)": 2.22,
     "gFID (CFG)": 1.56, "source": "SelfBootTok Table 1"},
    {"tokenizer": "CRT", "tokens": 256, "generator": "autoregressive (LlamaGen-style), 775M in all", "rFID": None,
     "gFID (no CFG)": None, "gFID (CFG)": "2.18 (CFG not stated)", "source": "CRT summary (not in Table 1)"},
    {"tokenizer": "GloTok", "tokens": None, "generator": "autoregressive", "rFID": None, "gFID (no CFG)": None,
     "gFID (CFG)": None, "source": "GloTok summary: no numbers given (not in Table 1)"},
]


def tokenizer_variants(aligner_2d: str, crt_weights: list[float], glotok_weight: float,
                       residual_weight: float) -> dict[str, dict]:
    """The tokenizers of the comparison, as flat-parameter variants: every one has the same number and size of
    global tokens."""
    softvq = dict(local_1d=False, local_2d=None)
    full = dict(local_1d=True, local_2d=aligner_2d)
    variants = {"SoftVQ": softvq, "SelfBootTok": full}
    variants |= {f"SoftVQ + CRT {w:g}": {**softvq, "crt_weight": w} for w in crt_weights}
    variants[f"SoftVQ + GloTok {glotok_weight:g}"] = {**softvq, "glotok_weight": glotok_weight, "residual_recovery": True,
                                   "residual_weight": residual_weight}
    variants[f"SelfBootTok + CRT {crt_weights[0]:g}"] = {**full, "crt_weight": crt_weights[0]}
    return variants


def with_generators(P: Params, variants: dict[str, dict], rows: list[dict], train_set, real: torch.Tensor,
                    deadline: float | None = None) -> list[dict]:
    """For every tokenizer run of ``rows`` (:func:`~sbt_lib.workbook.pipeline.ablations.run_variants`' rows): the
    generator of ``P.generator`` on its cached global tokens (in ``<run>/generator``; resumed or loaded when there),
    then ``P.generator.samples`` samples of balanced classes against the held-out images ``real`` (as many; see
    :func:`~sbt_lib.workbook.pipeline.caches.test_images`).  Adds to each row: ``gfd``, ``gkid``, ``gfd_label``,
    ``generator_seconds``, ``generator_gflops_forward`` (torch's count, 2 per multiply-add), ``tokens`` (the
    generator's sequence length) and the tokenizer's ceiling, its decodes of real global tokens of as many training
    images (``ceiling_gfd``, ``ceiling_gkid``).  With ``deadline`` (a ``time.time()``), no new row starts after it: the rows
    not reached come back without those keys."""
    G = P.generator
    if len(real) < G.samples:
        raise ValueError(f"{G.samples} samples need as many held-out images; got {len(real)}: pass "
                         "caches.test_images(P, P.generator.samples)")
    real = real[:G.samples]
    classes = torch.arange(G.samples) % len(train_set.classes)
    train_images = held_out_images(train_set, G.samples)
    for row in rows:
        if deadline is not None and time.time() > deadline:
            break
        Q = P.replace(**variants[row["variant"]], seed=row["seed"])
        tokenizer = load_tokenizer(row["run"])
        tokens = token_cache(tokenizer, train_set, Q, "global", progress=False)
        t0 = time.perf_counter()
        result = train_generator(Q, tokenizer, train_set, Path(row["run"]) / "generator", "global", tokens=tokens,
                                 progress=False)
        model, normalizer = load_generator(Path(row["run"]) / "generator")
        images = generate_images(tokenizer, model, normalizer, classes, "global", G.sampler, G.sampling_steps,
                                 G.guidance, seed=row["seed"], guidance_from=G.guidance_from)
        metrics = generation_metrics(real, images, P.eval.fd_size)
        top = ceiling(tokenizer, train_images, real, P.eval.fd_size)
        x = torch.zeros(1, *tokens.shape)
        flops = flops_by_module(model, x, torch.zeros(1), torch.zeros(1, dtype=torch.long))["total"]
        row.update(gfd=metrics["gfd"], gkid=metrics["kid"], gfd_label=metrics["label"], tokens=tokens.shape[0],
                   generator_seconds=result.seconds, generator_steps=result.step,
                   generator_wall_seconds=time.perf_counter() - t0, generator_gflops_forward=flops / 1e9,
                   ceiling_gfd=top["gfd"], ceiling_gkid=top["kid"])
    return rows


# --------------------------------------------------------------------------------------------- the committed study

GENERATOR_ROW_KEYS = ("gfd", "gkid", "gfd_label", "tokens", "generator_seconds", "generator_steps",
                      "generator_wall_seconds", "generator_gflops_forward", "ceiling_gfd", "ceiling_gkid")


def study_recipe(P: Params, variants: dict[str, dict]) -> dict:
    """What the generators of notebook 06 depend on: the tokenizers (variants, seeds, their fine-tuning) and the
    generator's recipe, sampling and reference set."""
    g, t = P.generator, P.training
    return {"variants": variants, "seeds": list(P.seeds), "dataset": P.data.dataset, "train_size": P.data.train_size,
            "tokenizer": {"steps": t.steps, "batch_size": t.batch_size, "lr": t.lr},
            "generator": {"size": g.size, "steps": g.steps, "batch_size": g.batch_size, "lr": g.lr, "ema": g.ema,
                          "time_sampling": g.time_sampling, "sampler": g.sampler,
                          "sampling_steps": g.sampling_steps, "guidance": g.guidance, "samples": g.samples,
                          # written only where they differ from the studies made before them
                          **({"patch": g.patch} if g.patch != 1 else {}),
                          **({"guidance_from": g.guidance_from} if g.guidance_from else {})}}


def study_file(scale: str) -> Path:
    """The committed generators of notebook 06 at ``scale`` (``benchmarks/tokenizers_compared.py`` writes it)."""
    return REPO / "benchmarks" / f"tokenizers_compared_{scale}.json"


def saved_study(path: Path, recipe: dict) -> dict | None:
    """The study written at ``path`` where its recipe is ``recipe`` (:func:`study_recipe`), else None."""
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    return saved if saved.get("recipe") == json.loads(json.dumps(recipe)) else None


def measured_rows(saved: dict | None) -> dict[tuple, dict]:
    """The rows of a saved study that hold every number the notebook shows (:data:`GENERATOR_ROW_KEYS`), by
    (variant, seed)."""
    rows = saved["rows"] if saved else []
    return {(r["variant"], r["seed"]): r for r in rows if set(GENERATOR_ROW_KEYS) <= set(r)}


def committed_generators(P: Params, variants: dict[str, dict]) -> dict | None:
    """The committed study of ``P``'s scale where it is complete, its recipe is ``P``'s (:func:`study_recipe`) and
    it holds every number the notebook shows (each row's :data:`GENERATOR_ROW_KEYS`, the ``floor``), else None."""
    saved = saved_study(study_file(P.scale), study_recipe(P, variants))
    whole = saved is not None and "floor" in saved and len(measured_rows(saved)) == len(saved["rows"])
    return saved if whole and saved.get("complete") else None


def with_saved_generators(rows: list[dict], saved: dict) -> list[dict]:
    """``rows`` with each run's generator numbers taken from the committed study ``saved`` (same variant and seed)."""
    by_run = {(r["variant"], r["seed"]): r for r in saved["rows"]}
    missing = [(r["variant"], r["seed"]) for r in rows if (r["variant"], r["seed"]) not in by_run]
    if missing:
        raise KeyError(f"the committed study has no generator for {missing}: rerun benchmarks/tokenizers_compared.py")
    for row in rows:
        row.update({k: by_run[(row["variant"], row["seed"])][k] for k in GENERATOR_ROW_KEYS})
    return rows


def claim(summary: dict[str, dict], a: str, b: str, metric: str, label: str, lower_is_better: bool) -> str:
    """One line reading ``metric`` of variant ``a`` against ``b``
    (:func:`~sbt_lib.workbook.report.seed_stats.summarize`'s entries): the difference of the means, the larger seed
    std, and whether ``a`` is clearly better, clearly worse (a difference beyond twice that std), or within the
    seed-to-seed spread."""
    sa, sb = summary[a], summary[b]
    d = sa[f"{metric}_mean"] - sb[f"{metric}_mean"]
    spread = max(sa[f"{metric}_std"], sb[f"{metric}_std"])
    better = -d if lower_is_better else d
    call = ("clearly better" if better > 2 * spread else "clearly worse" if better < -2 * spread
            else "within the seed spread")
    return f"{label}: {d:+.3g} (largest seed std {spread:.2g}): {call}"
