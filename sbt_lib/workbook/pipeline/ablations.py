"""Ablations in miniature: train tokenizer variants over seeds, evaluate, summarise (paper Table 3).

A *variant* is a name and a dict of flat parameter names (tokenizer switches, objective weights) laid over a
notebook's :class:`~sbt_lib.workbook.config.params.Params`.  :func:`run_variants` trains every (variant, seed) pair
into its own run folder — so an interrupted sweep resumes where it stopped, and finished runs are not retrained;
on a CPU several at once (:mod:`~sbt_lib.workbook.pipeline.pool`) — and returns one row of held-out metrics per run;
:func:`~sbt_lib.workbook.report.seed_stats.summarize` turns the rows into mean ± standard deviation per variant.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ...data.datasets import LazyImageFolder
from ...eval.metrics import psnr
from ...eval.reconstruction import evaluate_tokenizer, held_out_images, prepare_evaluation, swapped_local_tokens
from ...models.two_stage import decoder_side_params
from ...train import DifferentRunError, resolve_device
from ..config.params import Params
from ..report.seed_stats import FEATURE_KEYS
from .caches import global_token_cache
from .pool import map_runs, sweep_workers
from .runs import load_tokenizer, variant_run
from .trainers import base_params, prepare_training, train_on_base, train_tokenizer



def table3_variants(aligner_2d: str) -> dict[str, dict]:
    """Paper Table 3 in miniature: equal global tokens, growing local groups, and three ablations of
    the full model (a bidirectional 2D aligner; one codebook shared by all groups; local tokens that keep the
    lengths their aligners give them instead of a fixed one)."""
    full = dict(local_1d=True, local_2d=aligner_2d)
    return {
        "G": dict(local_1d=False, local_2d=None),
        "G+L1": dict(local_1d=True, local_2d=None),
        "G+L1+L2 (non-causal)": {**full, "causal": False},
        "G+L1+L2 (shared codebook)": {**full, "shared_codebook": True},
        "G+L1+L2 (gain-shape locals)": {**full, "local_keep_norm": True, "local_scale": 1.0},
        "G+L1+L2": full,
    }


def matched_control(base, full: dict, most: int = 12) -> dict:
    """The control the paper lacks: G (no local groups) with the decoder depth whose decoder side on ``base``
    has the parameter count nearest to that of the variant ``full`` (e.g. G+L1+L2), so that a gain of the local
    tokens is not just a gain of parameters."""
    from ...models.two_stage import on_base

    def count(**switches) -> int:
        with torch.random.fork_rng(devices=[]):
            return decoder_side_params(on_base(base, inherit_decoder=False, **switches))

    target = count(**full)
    depth = min(range(1, most + 1), key=lambda d: abs(count(local_1d=False, local_2d=None, decoder_depth=d) - target))
    return dict(local_1d=False, local_2d=None, decoder_depth=depth)


def table2_variants(aligner_2d: str, teachers: list[str], weight: float) -> dict[str, dict]:
    """Paper Table 2 in miniature: the full model with local REPA (μ2 = ``weight``, on the local 1D
    tokens, Eq. 7) to each local teacher in ``teachers``, against the same model without it."""
    full = dict(local_1d=True, local_2d=aligner_2d)
    return {"no local REPA": {**full, "repa_local_weight": 0.0},
            **{f"REPA-local: {t}": {**full, "repa_local_weight": weight, "repa_local_teacher": t,
                                    "repa_local_group": "local_1d"} for t in teachers}}


def fusion_variants(aligner_2d: str) -> dict[str, dict]:
    """Eq. 11: the full model with soft residual fusion and with concatenation."""
    full = dict(local_1d=True, local_2d=aligner_2d)
    return {"soft residual": {**full, "fusion": "residual"}, "concat": {**full, "fusion": "concat"}}


def run_variants(P: Params, variants: dict[str, dict], train_set, test_set, out: Path,
                 progress: bool = True, reuse: dict[str, tuple[Path, str]] | None = None) -> list[dict]:
    """Train and evaluate every variant with every seed of ``P.seeds``; one row of metrics per run, in the order
    variant by variant, seed by seed.

    Runs land in :func:`~sbt_lib.workbook.pipeline.runs.variant_run` ``(out, variant, seed)``; each resumes from
    its checkpoint, and a finished run is only re-evaluated.  The seed fixes the initial weights and the
    batch order.  ``P.study.workers`` runs train at once (:mod:`~sbt_lib.workbook.pipeline.pool`: on a CPU, one process
    of one thread per core); what new runs read from disk caches (principal components, 2D latents, teacher and
    evaluation features) is computed here first.  ``progress`` shows one bar over the runs (one per training step
    would slow a 2-core notebook kernel).

    ``reuse`` maps a variant to ``(root, name)``: the same run kept by another notebook in
    ``variant_run(root, name, seed)`` (notebook 03's baseline is notebook 02's full model).  Where that folder
    holds a run with exactly these parameters, it is resumed or only re-evaluated there; where it holds
    another run or nothing, the variant trains in ``out`` as usual."""
    reuse = reuse or {}
    jobs = [_Job(name, seed, P.replace(**variants[name], seed=seed), variant_run(out, name, seed),
                 {"reuse": variant_run(reuse[name][0], reuse[name][1], seed) if name in reuse else None})
            for name in variants for seed in P.seeds]
    workers = _workers(P, train_set, len(jobs))
    if workers > 1:  # what a new run reads, computed once here rather than by each worker at once
        for name in dict.fromkeys(job.variant for job in jobs if not _finished(job)):
            prepare_training(P.replace(**variants[name]), train_set, progress)
    return _sweep(P, jobs, _train_variant, (train_set, test_set), workers, progress)


def run_on_base(P: Params, base, variants: dict[str, dict], train_set, test_set, out: Path,
                progress: bool = True, reuse: dict[str, tuple[Path, str]] | None = None,
                finetune: bool = False) -> list[dict]:
    """:func:`run_variants` on a base tokenizer: every (variant, seed) trains its decoder side (local aligners,
    their codebooks, fusion, decoder, and the objective's own parts) from a fresh start of that seed on the
    frozen encoder and global codebook of ``base``, so every variant has the same global tokens, read once
    from a cache (:func:`~sbt_lib.workbook.pipeline.trainers.train_on_base`).  A variant may only change decoder-side
    switches and objective weights.  With ``finetune``, every variant trains all of its weights instead, started
    from the base's.  One row per run, as :func:`run_variants` gives; ``reuse`` as there."""
    P = base_params(P, base)
    z_global = None if finetune else global_token_cache(base, train_set, P, progress)
    reuse = reuse or {}
    jobs = [_Job(name, seed, P.replace(**variants[name], seed=seed), variant_run(out, name, seed),
                 {"reuse": variant_run(reuse[name][0], reuse[name][1], seed) if name in reuse else None,
                  "finetune": finetune})
            for name in variants for seed in P.seeds]
    workers = _workers(P, train_set, len(jobs))
    if workers > 1:
        for name in dict.fromkeys(job.variant for job in jobs if not _finished(job)):
            prepare_training(P.replace(**variants[name]), train_set, progress)
    return _sweep(P, jobs, _train_on_base, (train_set, test_set, base, z_global), workers, progress)


def stage2_on_base(sizes: list[str]) -> dict[str, dict]:
    """Stage 2 of two-stage scaling on a base: the full model with a 2D aligner of each size in ``sizes`` on the
    base's frozen encoder and global codebook (the §4.1 reading: everything after them trains), as variants for
    :func:`run_on_base`; named ``two-stage <size>``."""
    return {f"two-stage {size}": dict(local_1d=True, local_2d=size) for size in sizes}


def on_base_step_flops(P: Params, base, switches: dict, train_set) -> int:
    """FLOPs of one training step (forward and backward, torch's counter) of the variant ``switches`` on ``base``:
    the decoder side only, as :func:`run_on_base` trains it, since the frozen encoder's tokens are cached."""
    from ...eval.flops import training_step_flops
    from ...models.two_stage import ENCODER_SWITCHES, on_base
    from .trainers import build_objective

    Q = base_params(P, base).replace(**switches)
    model = on_base(base, seed=Q.seed, inherit_decoder=False,
                    **{k: v for k, v in Q.tokenizer.to_dict().items() if k not in ENCODER_SWITCHES})
    z_global = global_token_cache(base, train_set, Q, progress=False)
    objective = build_objective(Q, model, train_set, progress=False, z_global=z_global)
    return training_step_flops(model, objective, train_set.get_batch(torch.arange(Q.training.batch_size)))


def equal_flops_control(P: Params, base, sizes: list[str], train_set) -> tuple[dict[str, dict], dict[str, int]]:
    """The control of aligner scaling at equal compute: for every size after the first, the smallest aligner
    (``sizes[0]``) trained for as many steps as that size's stage-2 FLOPs buy, so a gain of a larger aligner is not
    just a gain of compute.  Returns the variants (``<small> at the FLOPs of <size>``) and each size's FLOPs per
    step."""
    small, variants = sizes[0], stage2_on_base(sizes)
    flops = {s: on_base_step_flops(P, base, sw, train_set) for s, sw in zip(sizes, variants.values())}
    control = {f"{small} at the FLOPs of {s}": {**variants[f"two-stage {small}"],
                                                "steps": round(P.training.steps * flops[s] / flops[small])}
               for s in sizes[1:]}
    return control, flops


def aligner_sweep(P: Params, base, train_set, test_set, folder04: Path, fallback: Path,
                  progress: bool = True) -> tuple[dict, str]:
    """Notebook 04's stage-2 tokenizers on ``base`` (first seed), one per size of ``P.stage2.aligners``: the runs its
    ``metrics.json`` in ``folder04`` lists when it lists them all (one may live in notebook 02's folder), else
    trained here through the same library call (:func:`run_on_base`, one seed) into ``fallback``, where a rerun
    finds them.  Returns ``({size: stage-2 tokenizer}, where)``; ``where`` says which folder they came from."""
    folder04, fallback = Path(folder04), Path(fallback)
    variants = stage2_on_base(P.stage2.aligners)
    listed = json.loads((folder04 / "metrics.json").read_text()).get("runs", []) if (folder04 / "metrics.json").exists() else []
    found = {r["variant"]: Path(r["run"]) for r in listed if r["seed"] == P.seed and r["variant"] in variants}
    if len(found) == len(variants) and all((run / "checkpoint.json").exists() for run in found.values()):
        where = str(folder04)
    else:
        rows = run_on_base(P.replace(seeds=1), base, variants, train_set, test_set, fallback, progress)
        found, where = {r["variant"]: Path(r["run"]) for r in rows}, str(fallback)
    return {s: load_tokenizer(found[name]).cpu().eval() for s, name in zip(P.stage2.aligners, variants)}, where


# ----------------------------------------------------------------------------- one run of a sweep

@dataclass
class _Job:
    """One run of a sweep: the variant, its seed, its parameters (the seed set), the folder it trains in, and
    what its kind of run needs besides (``reuse``: another notebook's folder of the same run; ``finetune``: the run trains all of a base's weights)."""

    variant: str
    seed: int
    params: Params
    folder: Path
    options: dict

    def __str__(self) -> str:
        return f"{self.variant}, seed {self.seed}"


def _workers(P: Params, train_set, jobs: int) -> int:
    return sweep_workers(P.study.workers, jobs, resolve_device(P.training.device),
                         lazy_data=isinstance(train_set, LazyImageFolder))


def _sweep(P: Params, jobs: list[_Job], train_one, shared: tuple, workers: int, progress: bool) -> list[dict]:
    """``train_one(job, *shared) -> row`` for every job, ``workers`` at a time, the finished runs (only to
    re-evaluate) handed out last; the test set (``shared[1]``) is prepared for evaluation here first when runs are evaluated in parallel
    processes."""
    if workers > 1:
        prepare_evaluation(shared[1], fd_size=P.eval.fd_size)
    return map_runs(train_one, jobs, shared, workers, progress, cheap=_finished)


def _finished(job: _Job) -> bool:
    """Whether a run is finished (here or where it is reused), so that it is only re-evaluated."""
    for folder in (job.folder, job.options.get("reuse")):
        if folder is not None and (folder / "checkpoint.json").exists():
            saved = json.loads((folder / "checkpoint.json").read_text())
            if saved.get("step", 0) >= saved.get("train", {}).get("steps", float("inf")):
                return True
    return False


def _train_variant(job: _Job, train_set, test_set) -> dict:
    """A run of :func:`run_variants`: trained in another notebook's folder when that holds this very run, else in
    its own; then evaluated."""
    shared = job.options["reuse"]
    if shared is not None and (shared / "checkpoint.json").exists():
        try:
            result = train_tokenizer(job.params, train_set, test_set, shared, progress=False, evaluate=False)
            return _row(job, result, shared, test_set)
        except DifferentRunError:
            pass
    result = train_tokenizer(job.params, train_set, test_set, job.folder, progress=False, evaluate=False)
    return _row(job, result, job.folder, test_set)


def _train_on_base(job: _Job, train_set, test_set, base, z_global) -> dict:
    """A run of :func:`run_on_base` (in another notebook's folder when that holds this very run), then evaluated."""
    def train_in(folder: Path):
        return train_on_base(job.params, base, train_set, test_set, folder, z_global=z_global, progress=False,
                             finetune=job.options["finetune"])

    shared = job.options.get("reuse")
    if shared is not None and (shared / "checkpoint.json").exists():
        try:
            return _row(job, train_in(shared), shared, test_set)
        except DifferentRunError:
            pass
    return _row(job, train_in(job.folder), job.folder, test_set)


def _row(job: _Job, result, run: Path, test_set) -> dict:
    """The held-out metrics of a trained run, with what the tables report beside them."""
    model = result.best_model
    metrics = evaluate_tokenizer(model, test_set, fd_size=job.params.eval.fd_size)
    swap = {}
    if model.cfg.groups[1:]:  # does the decoder read the local tokens? (another image's, same global tokens)
        images = held_out_images(test_set)
        swap["swap_drop"] = metrics["test_psnr"] - psnr(swapped_local_tokens(model, images), images).mean().item()
    return {
        "variant": job.variant, "seed": job.seed, "run": str(run),
        "test_psnr": metrics["test_psnr"], "test_ssim": metrics["test_ssim"],
        **{k: metrics[k] for k in (*FEATURE_KEYS, "kid", "kid_effnet", "feature_space", "test_lpips")
           if k in metrics},
        "codebook_perplexity": metrics["codebook_perplexity"],
        "params": model.num_params()["total"], "aligner_2d_params": model.num_params()["aligner_2d"],
        "train_seconds": result.seconds, "steps": result.step,
        "fusion_weights": model.fusion.weights(), "decoder_side_params": decoder_side_params(model), **swap,
    }


# ----------------------------------------------------------------------------- summaries

def run_of(rows: list[dict], variant: str, seed: int) -> Path:
    """The folder that the run of ``variant`` with ``seed`` trained in: its own, or the one it reused."""
    return Path(next(r["run"] for r in rows if r["variant"] == variant and r["seed"] == seed))
