"""Notebook 05's studies of a generator: its samples measured, and the comparison the paper's claim rests on.

A *generator record* is a dict: ``model`` and ``normalizer`` (the SiT and its token normaliser), the ``tokenizer``
that decodes its samples and the token ``groups`` it learned (``global`` or ``all``), the ``steps`` and ``seconds`` of
its training, its sequence length ``tokens``, and the FLOPs of one forward (``flops_forward``, one sequence) and of
one training step (``flops_step``, a batch), both torch's count (2 per multiply-add).

The comparison (paper §4, Table 1): **(a)** a SiT on the global tokens only, **(b)** the same SiT on all three
groups ``[z_global; z_local_1d; z_local_2d]`` for as many steps as (a)'s training FLOPs buy, **(c)** the SoftVQ
baseline (the same frozen encoder and global codebook, a decoder side with no local parts trained as stage 2 is):
its tokens are (a)'s bit for bit, so its generator is (a)'s, seed for seed, and what differs is the decoder.  Each
from zero velocity, one per seed, every one measured on the same classes, sampler, guidance and test images.

Three seeds of (a), (b) and (c) at thousands of samples cost more than notebook 05's minutes at ``cpu``, so
``benchmarks/generator_compare.py`` runs :func:`comparison` once and commits its summary
(``benchmarks/generator_compare_<scale>.json``); the notebook reads it where its recipe (:func:`comparison_recipe`)
is the notebook's own, and runs :func:`comparison` itself otherwise (as at ``tiny``).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ...eval.flops import flops_by_module, training_step_flops
from ...eval.generation import generation_metrics
from ...eval.reconstruction import held_out_images
from ...files import REPO
from ...generation.transport import FlowMatchingLoss
from . import ablations, caches, generators
from .runs import load_generator, load_tokenizer


def record(model, normalizer, tokenizer, groups: str, tokens, train_set, batch_size: int, steps: int,
           seconds: float) -> dict:
    """The generator record (module docstring) of ``model`` trained on the cached ``tokens``."""
    batch = train_set.get_batch(torch.arange(batch_size))
    x = torch.zeros(1, *tokens.shape)
    flops_forward = flops_by_module(model, x, torch.zeros(1), torch.zeros(1, dtype=torch.long))["total"]
    flops_step = training_step_flops(model.train(), FlowMatchingLoss(tokens, normalizer), batch)
    return {"model": model.eval(), "normalizer": normalizer, "tokenizer": tokenizer, "groups": groups,
            "steps": steps, "seconds": seconds, "tokens": tokens.shape[0], "cache": tokens,
            "flops_forward": flops_forward, "flops_step": flops_step}


def train_record(P, tokenizer, groups: str, train_set, out_dir: Path) -> dict:
    """Train (or, on a rerun, load) a SiT of ``P.generator`` on ``tokenizer``'s ``groups`` in ``out_dir``; its
    record."""
    tokens = caches.token_cache(tokenizer, train_set, P, groups, progress=False)
    result = generators.train_generator(P, tokenizer, train_set, out_dir, groups, tokens=tokens, progress=False)
    model, normalizer = load_generator(out_dir)
    return record(model, normalizer, tokenizer, groups, tokens, train_set, P.generator.batch_size, result.step,
                  result.seconds)


def sample_and_measure(gen: dict, classes: torch.Tensor, test_set, sampler: str, steps: int, scale: float,
                       seed: int, fd_size: int, tokenizer=None, guidance_from: float = 0.0) -> dict:
    """Sample ``classes`` from ``gen`` (guided by ``scale`` for t ≥ ``guidance_from``), decode (through
    ``tokenizer``, default ``gen``'s), and measure against as many test images: ``images``, ``z``, ``gfd``,
    ``kid``, ``label``, ``nfe`` (per sample), ``ms_per_image`` (sampling only) and ``ms_per_forward`` (a forward
    of one sequence)."""
    stats, t0 = {}, time.perf_counter()
    z = generators.generate_tokens(gen["model"], gen["normalizer"], classes, sampler, steps, scale, seed, stats,
                                   guidance_from=guidance_from)
    seconds = time.perf_counter() - t0
    images = generators.decode_tokens(tokenizer or gen["tokenizer"], z, gen["groups"])
    batches = -(-len(classes) // 250)  # generate_tokens samples in batches of 250
    nfe = stats["nfe"] / batches
    forwards = len(classes) * (stats["nfe"] + stats["guided"]) / batches  # a guided evaluation adds the null pass
    return {"z": z, "images": images, "nfe": nfe, "ms_per_image": 1000 * seconds / len(classes),
            "ms_per_forward": 1000 * seconds / forwards, "forwards_per_sample": forwards / len(classes),
            **generation_metrics(held_out_images(test_set, len(classes)), images, fd_size)}


ROWS = ("(a) global tokens", "(b) all three groups", "(c) SoftVQ baseline")  # the rows of the comparison, in order


def ceiling(tokenizer, train_images: torch.Tensor, real: torch.Tensor, fd_size: int) -> dict:
    """``tokenizer``'s ceiling: its decodes of ``train_images``' real global tokens measured against ``real`` (what a
    perfect generator of its tokens reaches; ``gfd``, ``kid``, ``label``)."""
    with torch.no_grad():
        images = torch.cat([generators.decode_tokens(tokenizer, tokenizer.encode_global(x))
                            for x in train_images.split(250)])
    return generation_metrics(real, images, fd_size)


def floor(train_set, real: torch.Tensor, fd_size: int) -> dict:
    """Real training images measured against the held-out ``real`` (as many): the floor no generator beats."""
    return generation_metrics(real, held_out_images(train_set, len(real)), fd_size)


def ceilings(tokenizers: dict, train_set, test_set, n: int, fd_size: int) -> dict[str, dict]:
    """The anchors of a generator's numbers against ``n`` test images (each ``gfd``, ``kid``, ``label``): ``real``,
    real training images (the floor no generator beats), and per named tokenizer its :func:`ceiling`.  Where the
    local tokens are bootstrapped from the global ones, real tokens of all three groups decode as the global tokens
    do: one ceiling serves both."""
    real, train_images = held_out_images(test_set, n), held_out_images(train_set, n)
    return {"real": floor(train_set, real, fd_size),
            **{name: ceiling(tok, train_images, real, fd_size) for name, tok in tokenizers.items()}}


def equal_compute(P, selfboottok, softvq, train_set, test_set, out: Path, classes: torch.Tensor,
                  seeds: list[int]) -> dict[str, list[dict]]:
    """(a), (b), (c) of the module docstring, one of each per seed: SiT-``compare_size`` from zero velocity for
    ``compare_steps`` steps of ``compare_batch_size`` of (a) at ``compare_lr`` with ``compare_time_sampling`` times
    and without EMA, (b) for as many steps as (a)'s FLOPs buy.  Every sample set: ``P.generator``'s sampler and
    steps, guidance ``compare_guidance`` over the whole path, ``len(classes)`` samples.
    Returns, per row name, one dict per seed: the record's numbers (no models) and the measurements."""
    g = P.generator
    Q = P.replace(generator_size=g.compare_size, generator_steps=g.compare_steps, generator_lr=g.compare_lr,
                  generator_batch_size=g.compare_batch_size, generator_time_sampling=g.compare_time_sampling,
                  generator_patch=1, generator_ema=0.0, generator_prior="none")
    rows: dict[str, list[dict]] = {name: [] for name in ROWS}
    for seed in seeds:
        a = train_record(Q.replace(seed=seed), selfboottok, "global", train_set, out / f"a-seed{seed}")
        steps_b = max(1, round(a["flops_step"] * a["steps"] / _step_flops(Q, selfboottok, train_set)))
        b = train_record(Q.replace(seed=seed, generator_steps=steps_b), selfboottok, "all", train_set,
                         out / f"b-seed{seed}")
        ma = sample_and_measure(a, classes, test_set, g.sampler, g.sampling_steps, g.compare_guidance, seed,
                                P.eval.fd_size)
        mb = sample_and_measure(b, classes, test_set, g.sampler, g.sampling_steps, g.compare_guidance, seed,
                                P.eval.fd_size)
        images = generators.decode_tokens(softvq, ma["z"], "global")  # (c): (a)'s very samples, SoftVQ's decoder
        mc = {**ma, "images": images, **generation_metrics(held_out_images(test_set, len(classes)), images,
                                                           P.eval.fd_size)}
        for name, gen, m in zip(rows, (a, b, a), (ma, mb, mc)):
            rows[name].append({"seed": seed, "steps": gen["steps"], "tokens": gen["tokens"],
                               "train_seconds": gen["seconds"], "gflops_forward": gen["flops_forward"] / 1e9,
                               "gflops_train": gen["flops_step"] * gen["steps"] / 1e9,
                               "gflops_per_sample": gen["flops_forward"] * m["forwards_per_sample"] / 1e9,
                               **{k: m[k] for k in ("gfd", "kid", "label", "nfe", "ms_per_image", "ms_per_forward")},
                               "images": m["images"][:8]})
    return rows


def _step_flops(Q, tokenizer, train_set) -> int:
    """FLOPs of one training step of a fresh SiT of ``Q.generator`` on ``tokenizer``'s tokens of all groups."""
    tokens = caches.token_cache(tokenizer, train_set, Q, "all", progress=False)
    model, normalizer = generators.build_generator(Q, tokens, train_set)
    batch = train_set.get_batch(torch.arange(Q.generator.batch_size))
    return training_step_flops(model.train(), FlowMatchingLoss(tokens, normalizer), batch)


def summarize(rows: dict[str, list[dict]], keys=("gfd", "kid", "steps", "gflops_forward", "gflops_train",
                                                 "gflops_per_sample", "ms_per_image", "ms_per_forward",
                                                 "train_seconds")) -> dict[str, dict]:
    """Mean and std over seeds of each row's ``keys`` (``<key>_mean``, ``<key>_std``) and the values (``<key>``),
    with the row's ``seeds`` count and, where its runs have them, ``tokens`` and ``label``."""
    out = {}
    for name, runs in rows.items():
        s = {"seeds": len(runs), **{k: runs[0][k] for k in ("tokens", "label") if k in runs[0]}}
        for k in keys:
            v = torch.tensor([float(r[k]) for r in runs])
            s |= {k: v.tolist(), f"{k}_mean": v.mean().item(), f"{k}_std": v.std().item() if len(v) > 1 else 0.0}
        out[name] = s
    return out


def read_difference(summary: dict[str, dict], a: str, b: str, key: str = "gfd") -> str:
    """``a`` against ``b`` in ``key``: the difference of the means, and whether it exceeds the seeds' spread (the
    larger of the two stds; paired seeds, so also whether every seed agrees in sign)."""
    x, y = summary[a][key], summary[b][key]
    diff = summary[a][f"{key}_mean"] - summary[b][f"{key}_mean"]
    spread = max(summary[a][f"{key}_std"], summary[b][f"{key}_std"])
    same_sign = all((u - v) * diff > 0 for u, v in zip(x, y))
    verdict = ("larger than the spread" + (", every seed agrees" if same_sign else ", but not every seed agrees")
               if abs(diff) > spread else "within the spread of the seeds: not established")
    return f"{diff:+.3g} (spread {spread:.3g}): {verdict}"


# --------------------------------------------------------------------------------------------- the committed study

def comparison(P, stage1, stage2: dict, train_set, test_set, out: Path, classes: torch.Tensor,
               reuse_g: Path | None = None) -> tuple[dict, dict]:
    """(a), (b), (c) of the module docstring over ``P.seeds``: (a) and (b) on the smallest of notebook 04's stage-2
    tokenizers ``stage2`` (stage 2 on the base ``stage1``), (c) on the SoftVQ baseline of the same base (notebook
    02's ``G`` run, reused from ``reuse_g`` where it is there, else trained into ``out/tokenizers``).  Returns
    ``(summary, rows, anchors)`` (:func:`summarize`, :func:`equal_compute`, :func:`ceilings`)."""
    first = next(iter(stage2))
    reuse = {"G": (Path(reuse_g), "G")} if reuse_g else {}
    run = ablations.run_on_base(P.replace(seeds=1), stage1, {"G": ablations.table3_variants(first)["G"]}, train_set,
                                test_set, out / "tokenizers", reuse=reuse)
    softvq = load_tokenizer(run[0]["run"]).cpu().eval()
    with torch.no_grad():
        probe = held_out_images(train_set, 64)
        if not torch.equal(softvq.encode_global(probe), stage2[first].encode_global(probe)):
            raise AssertionError("(c)'s global tokens must be (a)'s: both stand on the base's frozen encoder")
    rows = equal_compute(P, stage2[first], softvq, train_set, test_set, out / "generators" / "compare", classes,
                         list(P.seeds))
    anchors = ceilings({"(a), (b)": stage2[first], "(c)": softvq}, train_set, test_set, len(classes), P.eval.fd_size)
    shown = {"real": "real training images (the floor)", **{k: f"{k}: its decoder on real tokens (the ceiling)"
                                                              for k in ("(a), (b)", "(c)")}}
    return summarize(rows), rows, {shown[k]: {m: v[m] for m in ("gfd", "kid", "label")} for k, v in anchors.items()}


def comparison_recipe(P) -> dict:
    """What the numbers of :func:`comparison` depend on: the compared SiTs' recipe, the sampling, the seeds, the data,
    and how the tokenizers they decode through were trained."""
    g = P.generator
    return {"size": g.compare_size, "steps": g.compare_steps, "lr": g.compare_lr, "batch_size": g.compare_batch_size,
            "class_dropout": g.class_dropout, "time_sampling": g.compare_time_sampling, "sampler": g.sampler,
            "sampling_steps": g.sampling_steps, "guidance": g.compare_guidance, "samples": g.samples,
            "seeds": list(P.seeds), "dataset": P.data.dataset, "train_size": P.data.train_size,
            "test_size": P.data.test_size, "stage2": P.stage2.to_dict(), "tokenizer_steps": P.training.steps,
            "tokenizer_batch_size": P.training.batch_size, "tokenizer_lr": P.training.lr}


def comparison_file(scale: str) -> Path:
    """The committed summary of :func:`comparison` at ``scale`` (``benchmarks/generator_compare.py`` writes it)."""
    return REPO / "benchmarks" / f"generator_compare_{scale}.json"


def committed_comparison(P) -> dict | None:
    """The committed study of ``P``'s scale where its recipe is ``P``'s (:func:`comparison_recipe`), else None."""
    path = comparison_file(P.scale)
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    return saved if saved.get("recipe") == json.loads(json.dumps(comparison_recipe(P))) else None
