"""The convergence study: the notebooks' comparisons trained until their curves flatten, over seeds.

Notebooks 02-04 train every decoder side for 6,400 images, which shows which variant *learns fastest*; the paper's
claims are about trained models.  This study trains the same comparisons on the whole training split and evaluates
every run at images seen doubling (6.4k, 12.8k, 25.6k, ...), in three parts:

- **A** (notebooks 02 and 03): decoder sides on the frozen base at equal global tokens, their recipe (MSE, lr 2e-3,
  batch 32): ``G``, ``G (param-matched)``, ``G+L1``, ``G+L1+L2``, ``REPA-local: hog`` (local REPA to the HOG
  teacher), ``with L_OT``; 3 seeds.
- **B** (the paper's Table 3): whole tokenizers trained end to end with the base's recipe (perceptual loss, the GAN
  from half-way, EMA), differing only in the local parts: ``G`` and ``G+L1+L2`` (``REPA-local: hog`` and
  ``with L_OT`` on request); 2 seeds.
- **C** (notebook 04, Fig. 6): stage 2 on the frozen base with the smallest and the largest 2D aligner of the scale
  (``two-stage xs``, ``two-stage xl`` at ``cpu``) at equal steps, and the smallest at the largest one's FLOPs
  (``xs at the FLOPs of xl``); 3 seeds.

**Every evaluation** measures held-out PSNR, SSIM, the rFID-style distance (rFD-EffNet offline) and FD-HOG on the
same ``eval_images`` test images, and the swap drop (another image's local tokens) where a model has local tokens,
with the library's own functions (:func:`~sbt_lib.eval.reconstruction.evaluate_tokenizer`,
:func:`~sbt_lib.eval.fidelity.hog_distance`, :func:`~sbt_lib.eval.reconstruction.swapped_local_tokens`).

**Learning rates.**  A and C train at the notebooks' learning rate held constant after the warm-up
(``min_lr_ratio=1``), towards a horizon never reached: a run's weights after n images then do not depend on where
it will stop, so each level is that run trained for that many images, a part can stop as soon as its curves flatten,
and a larger ``max_images`` later continues the same runs.  One consequence is used: the smallest aligner at the
largest one's FLOPs is the ``two-stage xs`` run itself read at the images those FLOPs buy (ratio × each level),
bit for bit what a separate run of more steps would give.  B keeps the base's schedule whole (cosine over
``max_images``, the GAN from half-way, EMA), as the paper trains Table 3: its levels before the last are snapshots of
one schedule, and only its last is an annealed model; it always runs to ``max_images``.

**The stopping rule** (per part, on the means over seeds): at a level every run of the part has reached, the best
variant in PSNR gains less than 0.05 dB over the level before and the best in rFD improves by less than 2%
(*flattened*), or the level is at least 320,000 images (*floor*).  A and C stop at the first level where it holds;
the results say which of the two ended each part.

**Order of the work: round-robin by level.**  All selected parts' runs are brought to the first level, evaluated,
then to the next, and so on (within a level the slowest runs first, B's, C's, then A's, so that the workers end a
level together; variant by variant, seed by seed; ``workers`` runs at a time).  So every chunk leaves complete
levels (all variants and seeds at the same images seen, comparable at once), a part stops as soon as its rule holds
without training runs it would not need, and the verdicts always read the longest complete curves.  The price: a
level costs as much as all before it, so the last levels take several chunks; ``deadline`` pauses each run at the
end of a step with a checkpoint (the engine's ``until`` / ``deadline``), so a chunk loses no work, and the next call
resumes every run from its checkpoint.  A run already evaluated at a level is never trained or evaluated there
again.

**Cost.**  A part's cost is its runs' images to their last level over their speed, plus one evaluation per run and
level; B's whole tokenizers are the slowest runs, then C's largest aligner.  The results record what it took
(``images_per_s`` and ``cpu_hours`` per part), and the report says it beside the curves.

**Where things live.**  ``root`` holds ``study.json`` (the study's settings, the runs it registers and the anchors)
and one folder per run, ``<root>/<part>/runs/<variant>/seed<s>``, with the engine's checkpoint and ``curve.json``
(one record per evaluation).  After every evaluation, :func:`publish` rebuilds the results from them and rewrites
``convergence_<scale>.json`` and ``convergence_<scale>.png`` atomically (under a lock: workers publish too).  A
root is a machine's; the results file is committed.  Where a call finds no ``study.json`` in ``root`` but a results
file, it first rebuilds the root from it (:func:`restore`): every evaluation is kept, and the runs that are not
finished train again from their start.  So a chunk that selects a few runs (``variants``, ``seeds``) and brings them
to the end loses, with its machine, at most those runs' training.
:mod:`sbt_lib.workbook.report.convergence` reads the results: each claim at the end of its curves, seed by seed, the
figure and a notebook's report.  ``benchmarks/convergence.py`` is the command line.
"""
from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ...eval.fidelity import hog_distance
from ...eval.metrics import psnr
from ...eval.reconstruction import (evaluate_tokenizer, held_out_images, prepare_evaluation, reconstruct,
                                   swapped_local_tokens)
from ...files import atomic_write, write_json
from ..config.params import Params, resolve
from ..report.convergence import LABELS, PARTS, default_root, figure, results_file
from . import ablations as ab
from .runs import variant_run

RULE = {"psnr_db": 0.05, "rfd_fraction": 0.02}  # gains per doubling below which a part's curves count as flat
FLOOR_IMAGES = 320_000  # ... or the images seen at which a part has run long enough
RESTORED = "restored.json"  # a run's progress as a results file recorded it, where its root was rebuilt (restore)
HORIZON_STEPS = 2**30  # A and C: a schedule's end never reached (the learning rate is constant after the warm-up)

# Per scale: the first level (the notebooks' 200 steps of 32 at cpu), the last (≥ the floor), the test images.
SCALES = {
    "tiny": dict(first_images=32, max_images=128, eval_images=64),
    "cpu": dict(first_images=6_400, max_images=409_600, eval_images=1_000),
    "gpu": dict(first_images=25_600, max_images=1_638_400, eval_images=2_000),
}
SEEDS = {"A": [0, 1, 2], "B": [0, 1], "C": [0, 1, 2]}
NOTEBOOK_PARTS = {"02_bootstrapping": ("A", "B"), "03_ot_alignment": ("A", "B"), "04_aligner_scaling": ("C",)}
METRICS = ("test_psnr", "test_ssim", "fd_effnet", "fid", "fd_hog", "swap_drop")


def levels(first_images: int, max_images: int) -> list[int]:
    """The images seen at which every run is evaluated: ``first_images`` doubling, up to ``max_images``."""
    if first_images < 1 or max_images < first_images:
        raise ValueError(f"need 1 ≤ first_images ≤ max_images, got {first_images} and {max_images}")
    out = [first_images]
    while out[-1] * 2 <= max_images:
        out.append(out[-1] * 2)
    return out






def variant_names(scale: str, part: str) -> tuple[list[str], list[str]]:
    """(every variant, the default selection) of ``part`` at ``scale``, from the bundles alone (no data, no base)."""
    if part == "A":
        names = ["G", "G (param-matched)", "G+L1", "G+L1+L2", "REPA-local: hog", "with L_OT"]
        return names, names
    if part == "B":
        return ["G", "G+L1+L2", "REPA-local: hog", "with L_OT"], ["G", "G+L1+L2"]
    if part == "C":
        aligners = resolve("04_aligner_scaling", scale).stage2.aligners
        small, large = aligners[0], aligners[-1]
        names = [f"two-stage {small}", f"two-stage {large}", f"{small} at the FLOPs of {large}"]
        return names, names
    raise ValueError(f"unknown part {part!r}; the study has parts {list(PARTS)}")


def select(scale: str, parts, variants: list[str] | None = None,
           seeds: list[int] | None = None) -> dict[str, tuple[list[str], list[int]]]:
    """Per part of ``parts``, the variants and seeds to run: each part's default, or the ``variants`` it knows (a
    name no selected part knows is an error that lists every part's), and ``seeds`` for all (default: the part's,
    :data:`SEEDS`).  A part that knows none of ``variants`` is left out.  Checked before anything is loaded."""
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise ValueError(f"unknown part(s) {unknown or parts}; the study has parts {list(PARTS)}")
    names = {p: variant_names(scale, p) for p in parts}
    if variants:
        missing = [v for v in variants if not any(v in every for every, _ in names.values())]
        if missing:
            raise ValueError(f"unknown variant(s) {missing}; the selected parts have "
                             + "; ".join(f"{p}: {every}" for p, (every, _) in names.items()))
    if seeds is not None and (not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds)):
        raise ValueError(f"seeds must be distinct non-negative integers, got {seeds}")
    out = {}
    for p, (every, default) in names.items():
        chosen = [v for v in every if v in variants] if variants else default
        if chosen:
            out[p] = (chosen, sorted(seeds) if seeds is not None else SEEDS[p])
    if not out:
        raise ValueError(f"none of the variants {variants} is in the parts {list(parts)}")
    return out




# ----------------------------------------------------------------------------- the parts

@dataclass
class Part:
    """One part of the study: its parameters (the run's recipe; a variant's switches are laid over them), its
    variants (name → switches), the variants read off another run at scaled images (``derived``: name →
    (source variant, ratio)), whether it trains decoder sides on the base (``on_base``) or whole tokenizers,
    whether it may stop as soon as its curves flatten (``anytime``), and its claims (id, variant a, variant b, what
    the claim is)."""

    name: str
    title: str
    params: Params
    variants: dict[str, dict]
    derived: dict[str, tuple[str, float]]
    on_base: bool
    anytime: bool
    claims: list[tuple[str, str, str, str]]
    notebooks: tuple[str, ...]
    flops: dict[str, int] | None = None  # C: FLOPs of a training step per aligner size

    @property
    def batch_size(self) -> int:
        return self.params.training.batch_size

    def steps_at(self, images: int, variant: str) -> int:
        """The training steps of ``variant``'s run at a level of ``images`` (scaled for a derived variant)."""
        ratio = self.derived[variant][1] if variant in self.derived else 1.0
        if images % self.batch_size:
            raise ValueError(f"part {self.name}: a level of {images} images is not a whole number of steps of "
                             f"{self.batch_size}; choose first_images as a multiple of it")
        return max(1, round(images * ratio / self.batch_size))

    def source(self, variant: str) -> str:
        """The variant whose run ``variant`` is read from (itself, unless derived)."""
        return self.derived[variant][0] if variant in self.derived else variant


def _study_params(notebook: str, scale: str, dataset: str, eval_images: int, first_steps: int, **more) -> Params:
    """A notebook's bundle with the study's data (the whole training split: ``resolve`` skips ``None``, so it is set
    by ``replace``), test images, checkpoints every first level, no evaluation during training, and ``more``."""
    return resolve(notebook, scale, dataset=dataset, test_size=eval_images, seed=0, eval_every=0,
                   ckpt_every=first_steps, progress=False, **more).replace(train_size=None)


def build_parts(scale: str, names, base, train_set, dataset: str, first_images: int, max_images: int,
                eval_images: int) -> dict[str, Part]:
    """The parts ``names`` at ``scale`` (module docstring), their recipes from the notebooks' bundles; ``base`` is
    the frozen base of A and C, ``train_set`` what C's FLOPs are counted on."""
    from .trainers import base_params

    ot = resolve("03_ot_alignment", scale)
    ot_switches = {"ot_weight": ot.objective.ot_weight, "ot_eps": ot.objective.ot_eps,
                   **{f"vae_{k}": v for k, v in ot.vae.to_dict().items()}}
    parts = {}

    def on_base(notebook: str) -> Params:
        """The notebook's recipe on the frozen base, at a constant learning rate after warm-up (an anytime curve)."""
        first = first_images // resolve(notebook, scale).training.batch_size
        return base_params(_study_params(notebook, scale, dataset, eval_images, first, steps=HORIZON_STEPS,
                                         min_lr_ratio=1.0), base)

    if "A" in names:
        P = on_base("02_bootstrapping")
        t3 = ab.table3_variants(P.tokenizer.local_2d)
        full = t3["G+L1+L2"]
        repa = ab.table2_variants(P.tokenizer.local_2d, ["hog"], P.study.local_teacher_weight)["REPA-local: hog"]
        variants = {"G": t3["G"], "G (param-matched)": ab.matched_control(base, full), "G+L1": t3["G+L1"],
                    "G+L1+L2": full, "REPA-local: hog": repa, "with L_OT": {**full, **ot_switches}}
        parts["A"] = Part("A", "A · decoder sides on the frozen base (notebooks 02, 03)", P, variants, {},
                          on_base=True, anytime=True, claims=_claims("A"),
                          notebooks=("02_bootstrapping", "03_ot_alignment"))
    if "B" in names:
        B = resolve("base", scale)
        steps = max_images // B.training.batch_size
        P = _study_params("base", scale, dataset, eval_images, max(1, first_images // B.training.batch_size),
                          steps=steps, adv_start=steps // 2)
        full = {"local_1d": True, "local_2d": P.tokenizer.local_2d}
        variants = {"G": {"local_1d": False, "local_2d": None}, "G+L1+L2": full,
                    "REPA-local: hog": {**full, **_repa_hog(scale)},
                    "with L_OT": {**full, **ot_switches}}
        parts["B"] = Part("B", "B · whole tokenizers end to end, the base's recipe (Table 3)", P, variants, {},
                          on_base=False, anytime=False, claims=_claims("B"),
                          notebooks=("02_bootstrapping", "03_ot_alignment"))
    if "C" in names:
        P = on_base("04_aligner_scaling")
        small, large = P.stage2.aligners[0], P.stage2.aligners[-1]
        variants = ab.stage2_on_base([small, large])
        flops = {s: ab.on_base_step_flops(P, base, variants[f"two-stage {s}"], train_set) for s in (small, large)}
        control = f"{small} at the FLOPs of {large}"
        parts["C"] = Part("C", f"C · stage 2 on the base, {small} and {large} aligners (notebook 04, Fig. 6)", P,
                          variants, {control: (f"two-stage {small}", flops[large] / flops[small])}, on_base=True,
                          anytime=True, claims=_claims("C", small, large), notebooks=("04_aligner_scaling",),
                          flops=flops)
    return {n: parts[n] for n in PARTS if n in parts}


def _repa_hog(scale: str) -> dict:
    """Notebook 02's local REPA to the HOG teacher (Table 2), as switches."""
    weight = resolve("02_bootstrapping", scale).study.local_teacher_weight
    switches = ab.table2_variants("xs", ["hog"], weight)["REPA-local: hog"]
    return {k: v for k, v in switches.items() if k.startswith("repa_")}


def _claims(part: str, small: str = "xs", large: str = "xl") -> list[tuple[str, str, str, str]]:
    """(id, a, b, what it asks) of each claim a part tests; a claim whose variants a study lacks is left out."""
    if part == "C":
        return [("xl_equal_steps", f"two-stage {large}", f"two-stage {small}",
                 f"a larger 2D aligner ({large}) against the smallest ({small}) at equal steps"),
                ("xl_equal_flops", f"two-stage {large}", f"{small} at the FLOPs of {large}",
                 "the larger aligner against the smallest given its FLOPs as more steps")]
    return [("locals_vs_matched", "G+L1+L2", "G (param-matched)", "the local tokens against as many parameters"),
            ("locals_vs_g", "G+L1+L2", "G", "the local tokens against none (Table 3)"),
            ("local_repa", "REPA-local: hog", "G+L1+L2", "local REPA to the HOG teacher (Eq. 7)"),
            ("l_ot", "with L_OT", "G+L1+L2", "the OT alignment of the 2D tokens (Eq. 12-13)")]


# ----------------------------------------------------------------------------- one run, in a worker

@dataclass
class _Run:
    """A run of the study as a worker trains it: its part, variant and seed, its parameters (the variant's switches
    and the seed set), its folder, the steps at which it is evaluated and those it trains through now (≤
    ``target``), the deadline, and where the results are published."""

    part: str
    variant: str
    seed: int
    params: Params
    folder: Path
    on_base: bool
    points: list[int]
    target: int
    deadline: float | None
    publish: tuple[Path, Path]  # (root, results file)

    def __str__(self) -> str:
        return f"{self.part} {self.variant}, seed {self.seed}"


def read_curve(folder: Path) -> list[dict]:
    """The evaluations of a run folder, in order of images seen."""
    path = Path(folder) / "curve.json"
    return json.loads(path.read_text()) if path.exists() else []


def measure(model, test_set, fd_size: int) -> dict:
    """Held-out metrics of ``model`` on every image of ``test_set``: PSNR, SSIM, the rFID-style distance and its KID
    (:func:`~sbt_lib.eval.reconstruction.evaluate_tokenizer`), FD-HOG, and the swap drop where it has local tokens."""
    model = model.eval()
    metrics = evaluate_tokenizer(model, test_set, fd_size=fd_size)
    images = held_out_images(test_set)
    out = {k: metrics[k] for k in ("test_psnr", "test_ssim", "fd_effnet", "kid_effnet", "fid", "kid", "feature_space",
                                    "test_images") if k in metrics}
    out["fd_hog"] = hog_distance(images, reconstruct(model, images))
    if model.cfg.groups[1:]:
        out["swap_drop"] = metrics["test_psnr"] - psnr(swapped_local_tokens(model, images), images).mean().item()
    return out


def _train(run: _Run, until: int, train_set, test_set, base, z_global):
    from .trainers import train_on_base, train_tokenizer

    if run.on_base:
        return train_on_base(run.params, base, train_set, test_set, run.folder, z_global=z_global, progress=False,
                             until=until, deadline=run.deadline)
    return train_tokenizer(run.params, train_set, test_set, run.folder, progress=False, evaluate=False, until=until,
                           deadline=run.deadline)


def advance(run: _Run, train_set, test_set, base=None, z_global=None) -> dict:
    """Train ``run`` through its evaluation points up to ``run.target`` steps, evaluating it at each one it has not
    been evaluated at (each record appended to its ``curve.json``, then the results published); stops at the
    deadline with a checkpoint.  Returns what it did: the images evaluated and whether it paused."""
    done = {r["steps"] for r in read_curve(run.folder)}
    evaluated = []
    for point in [p for p in run.points if p <= run.target and p not in done]:
        if run.deadline is not None and time.time() >= run.deadline:
            return {"run": str(run), "evaluated": evaluated, "paused": True}
        result = _train(run, point, train_set, test_set, base, z_global)
        if result.step < point:
            return {"run": str(run), "evaluated": evaluated, "paused": True}
        if result.step > point:
            raise RuntimeError(f"{run.folder} is at step {result.step}, past its unevaluated point {point}: "
                               "remove the folder to retrain the run")
        t0 = time.perf_counter()
        record = {"steps": point, "images": point * run.params.training.batch_size,
                  **measure(result.best_model, test_set, run.params.eval.fd_size),
                  "train_seconds": result.seconds, "eval_seconds": 0.0, "threads": torch.get_num_threads(),
                  "params": result.best_model.num_params()["total"], "time": time.strftime("%Y-%m-%d %H:%M:%S")}
        record["eval_seconds"] = time.perf_counter() - t0
        write_json(run.folder / "curve.json", [*read_curve(run.folder), record])
        evaluated.append(record["images"])
        fd = next((k for k in ("fid", "fd_effnet") if k in record), None)
        print(f"[{run}] {record['images']:,} images: PSNR {record['test_psnr']:.3f} dB"
              + (f", {LABELS[fd][0]} {record[fd]:.1f}" if fd else "") + f", FD-HOG {record['fd_hog']:.3f}"
              + (f", swap drop {record['swap_drop']:.3f} dB" if "swap_drop" in record else "")
              + f" (train {result.seconds:.0f} s so far, eval {record['eval_seconds']:.0f} s)", flush=True)
        publish(*run.publish)
    return {"run": str(run), "evaluated": evaluated, "paused": False}


# ----------------------------------------------------------------------------- the study

def run_study(scale: str = "cpu", parts=PARTS, variants: list[str] | None = None, seeds: list[int] | None = None,
              max_images: int | None = None, eval_images: int | None = None, root: str | Path | None = None,
              out: str | Path | None = None, minutes: float | None = None, workers: int = 0,
              until_images: int | None = None, command_line: str = "", dataset: str | None = None) -> dict:
    """Make (or resume) the study (module docstring): the ``parts`` with the selected ``variants`` and ``seeds``,
    each run evaluated at every level up to ``max_images`` (``until_images``: only up to that level this time),
    ``workers`` runs at a time (0: one per CPU thread), stopping within a step of ``minutes``.  The runs live under
    ``root``; the results go to ``out`` (default ``benchmarks/``) as ``convergence_<scale>.json`` and ``.png``.
    Returns the results."""
    from .base import _machine, notebook_base
    from .caches import global_token_cache, load_data
    from .trainers import prepare_training
    from .pool import map_runs, sweep_workers
    from ...train import resolve_device

    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; the study has {list(SCALES)}")
    chosen = select(scale, list(parts), variants, seeds)
    if minutes is not None and minutes < 0:
        raise ValueError(f"minutes must be ≥ 0, got {minutes}")
    s = SCALES[scale]
    max_images, eval_images = max_images or s["max_images"], eval_images or s["eval_images"]
    grid = levels(s["first_images"], max_images)
    deadline = None if minutes is None else time.time() + 60 * minutes
    root = Path(root or default_root(scale))
    out_file = results_file(scale, out)
    study_file = root / "study.json"
    if not study_file.exists() and out_file.exists():
        restore(root, out_file)
    saved = json.loads(study_file.read_text()) if study_file.exists() else {}
    for key, value in (("scale", scale), ("eval_images", eval_images), ("first_images", s["first_images"])):
        if saved and saved.get(key) != value:
            raise ValueError(f"{root} holds a study with {key}={saved.get(key)!r}, not {value!r}: "
                             "choose another --root")

    D = resolve("02_bootstrapping", scale, dataset=dataset, test_size=eval_images, seed=0).replace(train_size=None)
    train_set, test_set = load_data(D)
    base = notebook_base(D, train_set, test_set, root, progress=False).cpu().eval()
    built = build_parts(scale, list(chosen), base, train_set, D.data.dataset, s["first_images"], max_images,
                        eval_images)
    fd_size = next(iter(built.values())).params.eval.fd_size
    anchors = saved.get("anchors") or _anchors(base, train_set, test_set, fd_size)
    study = _register(saved, scale, eval_images, s["first_images"], max_images, built, chosen, anchors,
                      command_line, _machine(), D.data.dataset, root)
    write_json(study_file, study)

    z_global = global_token_cache(base, train_set, built["A" if "A" in built else "C"].params, progress=False) \
        if any(built[p].on_base for p in chosen) else None
    jobs_total = sum(len(v) * len(sd) for v, sd in chosen.values())
    workers = sweep_workers(workers, jobs_total, resolve_device("auto"))
    if workers > 1:  # what the runs read besides the images, computed here once rather than by each worker at once
        prepare_evaluation(test_set, fd_size=fd_size)
        for name, (names, _) in chosen.items():
            part = built[name]
            for v in dict.fromkeys(part.source(v) for v in names):
                prepare_training(part.params.replace(**part.variants[v]), train_set, progress=False)

    paused = False
    for level in grid:
        if until_images is not None and level > until_images:
            break
        if deadline is not None and time.time() >= deadline:
            paused = True
            break
        results = collect(root)
        jobs = []
        for name, (names, part_seeds) in chosen.items():
            part, state = built[name], results["parts"].get(name, {})
            if part.anytime and state.get("stopping", {}).get("holds"):
                continue
            for run in _runs_of(part, names, part_seeds, grid, root, deadline, (root, out_file)):
                run.target = max(part.steps_at(level, v) for v in names if part.source(v) == run.variant)
                if any(p <= run.target and p not in {r["steps"] for r in read_curve(run.folder)} for p in run.points):
                    jobs.append(run)
        jobs.sort(key=lambda run: "BCA".index(run.part))  # the slowest first, so the workers end a level together
        if jobs:
            print(f"level {level:,} images: {len(jobs)} run(s) to train and evaluate, {workers} at a time", flush=True)
            done = map_runs(advance, jobs, (train_set, test_set, base, z_global), workers, progress=False)
            paused = any(d["paused"] for d in done)
        publish(root, out_file)
        if paused:
            break
    results = publish(root, out_file)
    results["paused"] = paused
    return results


def _runs_of(part: Part, names: list[str], seeds: list[int], grid: list[int], root: Path, deadline,
             publish_to) -> list[_Run]:
    """The runs that the selected variants ``names`` of ``part`` need, with their evaluation points."""
    runs = []
    for source in dict.fromkeys(part.source(v) for v in names):
        points = sorted({part.steps_at(level, v) for v in names if part.source(v) == source for level in grid})
        for seed in seeds:
            runs.append(_Run(part.name, source, seed, part.params.replace(**part.variants[source], seed=seed),
                             variant_run(root / part.name, source, seed), part.on_base, points, 0, deadline,
                             publish_to))
    return runs


def _anchors(base, train_set, test_set, fd_size: int) -> dict:
    """PCA at the base's number of values and the base itself, measured as every run is."""
    from .base import anchor_images, distribution_metrics

    images = held_out_images(test_set)
    pca = anchor_images(images, train_set, base.cfg.token_values)["PCA"]
    return {"PCA": {"values": base.cfg.token_values, "test_psnr": psnr(pca, images).mean().item(),
                    **distribution_metrics(images, pca, fd_size)},
            "base": {"values": base.cfg.token_values, **measure(base, test_set, fd_size)}}


def _register(saved: dict, scale, eval_images, first_images, max_images, parts, chosen, anchors, command_line,
              machine, dataset, root) -> dict:
    """``study.json``: the settings, and per part the variants and seeds every call so far selected (a union)."""
    study = {"scale": scale, "eval_images": eval_images, "first_images": first_images, "max_images": max_images,
             "floor_images": FLOOR_IMAGES, "rule": RULE, "dataset": dataset, "anchors": anchors,
             "command": command_line, "machine": machine, "root": str(root),
             "commands": [*saved.get("commands", []), {"command": command_line,
                                                        "started": time.strftime("%Y-%m-%d %H:%M:%S")}],
             "parts": dict(saved.get("parts", {}))}
    for name, (names, seeds) in chosen.items():
        part, old = parts[name], study["parts"].get(name, {})
        variants = list(dict.fromkeys([*old.get("variants", []), *names]))
        study["parts"][name] = {
            "title": part.title, "notebooks": list(part.notebooks), "on_base": part.on_base, "anytime": part.anytime,
            "batch_size": part.batch_size, "variants": variants, "seeds": sorted({*old.get("seeds", []), *seeds}),
            "switches": {v: part.variants.get(v) for v in variants if v in part.variants},
            "derived": {v: list(part.derived[v]) for v in variants if v in part.derived},
            "claims": [list(c) for c in part.claims], "recipe": _recipe(part.params),
            **({"flops_per_step": part.flops} if part.flops else {}),
        }
    return study


def _recipe(P: Params) -> dict:
    t = P.training
    return {"batch_size": t.batch_size, "lr": t.lr, "warmup": t.warmup, "steps": t.steps,
            "min_lr_ratio": t.min_lr_ratio,
            "ema": t.ema, "perceptual_weight": P.objective.perceptual_weight, "adv_weight": P.objective.adv_weight,
            "adv_start": P.objective.adv_start, "train_size": P.data.train_size, "dataset": P.data.dataset}


# ----------------------------------------------------------------------------- results

def collect(root: str | Path) -> dict:
    """The study's results from ``root``: ``study.json`` and every run folder (module docstring), as the results
    file holds them: per part the runs (their evaluations, progress and whether they are finished), the curves
    (per variant and level: the mean, std, min and max over seeds of each metric, and every seed's value), the
    stopping rule, images/s and CPU hours."""
    root = Path(root)
    study = json.loads((root / "study.json").read_text())
    grid = levels(study["first_images"], study["max_images"])
    out = {k: study[k] for k in ("scale", "command", "commands", "machine", "dataset", "eval_images", "first_images",
                                 "max_images", "floor_images", "rule", "anchors", "root")}
    out["levels"] = grid
    out["parts"] = {}
    for name, spec in study["parts"].items():
        runs = {}
        for variant in dict.fromkeys(spec["derived"].get(v, [v])[0] for v in spec["variants"]):
            for seed in spec["seeds"]:
                folder = variant_run(root / name, variant, seed)
                metas = [json.loads(f.read_text()) for f in (folder / "checkpoint.json", folder / RESTORED)
                         if f.exists()]  # a restored run's record until its retraining passes it
                meta = max(metas, key=lambda m: m.get("step", 0), default={})
                runs[(variant, seed)] = {"variant": variant, "seed": seed, "folder": str(folder.relative_to(root)),
                                         "steps": meta.get("step", 0),
                                         "images": meta.get("step", 0) * spec["batch_size"],
                                         "train_seconds": meta.get("seconds", 0.0), "curve": read_curve(folder)}
        curves = {v: _curve(spec, v, runs, grid) for v in spec["variants"]}
        complete = {v: {c["level"]: c for c in cs if c["n"] == len(spec["seeds"])} for v, cs in curves.items()}
        stopping = stopping_rule(complete, grid)
        done = [lv for lv in grid if complete and all(lv in c for c in complete.values())]
        if spec["anytime"] and stopping["holds"]:
            ended_by, end = stopping["reason"], stopping["level"]
        elif done and done[-1] == grid[-1]:  # the last level: the floor, or a max_images below it
            ended_by, end = ("floor" if grid[-1] >= FLOOR_IMAGES else "max_images"), grid[-1]
        else:
            ended_by, end = None, grid[-1]
        for run in runs.values():
            run["finished"] = _evaluated_through(spec, run, grid, end)
        out["parts"][name] = {**{k: spec[k] for k in ("title", "notebooks", "variants", "seeds", "claims", "recipe",
                                                       "batch_size", "anytime", "derived")},
                              **({"flops_per_step": spec["flops_per_step"]} if "flops_per_step" in spec else {}),
                              "runs": list(runs.values()), "curves": curves, "stopping": stopping,
                              "ended_by": ended_by, "end_level": end,
                              "finished": all(r["finished"] for r in runs.values()), **_cost(runs.values())}
    return out


def restore(root: str | Path, results: str | Path) -> None:
    """Rebuild a lost ``root`` from a results file (:func:`collect`'s output, e.g. the committed one): ``study.json``
    and every run's ``curve.json``, and in ``restored.json`` the steps and seconds the run had reached.  The weights are
    not in the results, so the next call trains each run again from its start, evaluating it only where it has no
    record; so losing a root costs the training of its unfinished runs, never an evaluation."""
    root, data = Path(root), json.loads(Path(results).read_text())
    keys = ("scale", "command", "commands", "machine", "dataset", "eval_images", "first_images", "max_images",
            "floor_images", "rule", "anchors")
    spec_keys = ("title", "notebooks", "anytime", "batch_size", "variants", "seeds", "derived", "claims", "recipe",
                 "flops_per_step")
    study = {**{k: data[k] for k in keys}, "root": str(root),
             "parts": {name: {k: part[k] for k in spec_keys if k in part} for name, part in data["parts"].items()}}
    for part in data["parts"].values():
        for run in part["runs"]:
            folder = root / run["folder"]
            write_json(folder / "curve.json", run["curve"])
            write_json(folder / RESTORED, {"step": run["steps"], "seconds": run["train_seconds"], "from": str(results)})
    write_json(root / "study.json", study)
    print(f"{root} had no study: restored from {results} (every evaluation; the runs retrain from their start)")


def _curve(spec: dict, variant: str, runs: dict, grid: list[int]) -> list[dict]:
    """One variant's curve: per level with any seed evaluated, the statistics over the seeds that are."""
    source, ratio = spec["derived"].get(variant, [variant, 1.0])
    out = []
    for level in grid:
        steps = max(1, round(level * ratio / spec["batch_size"]))
        records = {seed: next((r for r in runs[(source, seed)]["curve"] if r["steps"] == steps), None)
                   for seed in spec["seeds"]}
        records = {k: v for k, v in records.items() if v is not None}
        if not records:
            continue
        entry = {"level": level, "images": steps * spec["batch_size"], "seeds": list(records), "n": len(records),
                 "params": next(iter(records.values())).get("params", 0), "values": {}}
        for m in METRICS:
            v = np.array([r[m] for r in records.values() if m in r], dtype=float)
            if len(v) == len(records):
                entry["values"][m] = v.tolist()
                entry |= {f"{m}_mean": float(v.mean()), f"{m}_std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                          f"{m}_min": float(v.min()), f"{m}_max": float(v.max())}
        out.append(entry)
    return out


def _evaluated_through(spec: dict, run: dict, grid: list[int], end: int) -> bool:
    """Whether ``run`` has every evaluation its part's variants need at the levels of ``grid`` up to ``end``."""
    have = {r["steps"] for r in run["curve"]}
    need = {max(1, round(level * spec["derived"].get(v, [v, 1.0])[1] / spec["batch_size"]))
            for v in spec["variants"] if spec["derived"].get(v, [v])[0] == run["variant"]
            for level in grid if level <= end}
    return need <= have


def _cost(runs) -> dict:
    """Images/s (per run: what one process of ``threads`` threads trains) and CPU hours (training and evaluation,
    seconds × threads) of a part's runs so far."""
    images = sum(r["images"] for r in runs)
    seconds = sum(r["train_seconds"] for r in runs)
    cpu = 0.0
    for r in runs:
        last_seconds, threads = 0.0, 1
        for rec in r["curve"]:
            threads = rec.get("threads", 1)
            cpu += (rec["train_seconds"] - last_seconds) * threads + rec.get("eval_seconds", 0.0) * threads
            last_seconds = rec["train_seconds"]
        cpu += max(0.0, r["train_seconds"] - last_seconds) * threads
    threads = sorted({rec.get("threads", 1) for r in runs for rec in r["curve"]})
    return {"images_seen": images, "train_seconds": seconds, "images_per_s": images / seconds if seconds else None,
            "threads_per_run": threads, "cpu_hours": cpu / 3600}


def stopping_rule(curves: dict[str, dict[int, dict]], grid: list[int], psnr_db: float = RULE["psnr_db"],
                  rfd_fraction: float = RULE["rfd_fraction"], floor: int = FLOOR_IMAGES) -> dict:
    """Whether a part's curves may stop (module docstring), read level by level on ``curves`` (variant → level →
    an entry with ``test_psnr_mean`` and, where measured, the rFD's mean) at the levels every variant has.
    Returns ``holds``, ``reason`` (``flattened``, ``floor`` or ``None``), ``level`` (where it first held, else the
    last complete level), and per complete level the best variants, their gains over the level before, and whether
    the rule holds there (``levels``)."""
    complete = [lv for lv in grid if curves and all(lv in c for c in curves.values())]
    rows = []
    for prev, level in zip([None, *complete], complete):
        at = {v: c[level] for v, c in curves.items()}
        best_psnr = max(at, key=lambda v: at[v]["test_psnr_mean"])
        fd = next((k for k in ("fid_mean", "fd_effnet_mean") if all(k in e for e in at.values())), None)
        row = {"level": level, "best_psnr": best_psnr, "psnr": at[best_psnr]["test_psnr_mean"], "psnr_gain": None,
               "best_rfd": None, "rfd_gain": None, "flattened": False, "floor": level >= floor}
        if fd:
            row["best_rfd"] = min(at, key=lambda v: at[v][fd])
            row["rfd"] = at[row["best_rfd"]][fd]
        if prev is not None and prev == _before(grid, level):
            row["psnr_gain"] = at[best_psnr]["test_psnr_mean"] - curves[best_psnr][prev]["test_psnr_mean"]
            if fd:
                before = curves[row["best_rfd"]][prev][fd]
                row["rfd_gain"] = (before - row["rfd"]) / before
            row["flattened"] = (row["psnr_gain"] < psnr_db
                                and (row["rfd_gain"] is None or row["rfd_gain"] < rfd_fraction))
        rows.append(row)
    first = next((r for r in rows if r["flattened"] or r["floor"]), None)
    if first:
        return {"holds": True, "reason": "flattened" if first["flattened"] else "floor", "level": first["level"],
                "levels": rows}
    return {"holds": False, "reason": None, "level": complete[-1] if complete else None, "levels": rows}


def _before(grid: list[int], level: int) -> int | None:
    i = grid.index(level)
    return grid[i - 1] if i else None


@contextlib.contextmanager
def _lock(root: Path):
    """An exclusive lock on ``root`` while the results are rebuilt and written (workers publish too)."""
    try:
        import fcntl
    except ImportError:  # not on a POSIX system: one writer at a time is then the caller's care
        yield
        return
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".publish.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def publish(root: str | Path, out_file: str | Path, figure_too: bool = True) -> dict:
    """Rebuild the results from ``root`` (:func:`collect`) and write them to ``out_file`` (and the figure beside it,
    ``.png``), atomically and under a lock; returns them."""
    root, out_file = Path(root), Path(out_file)
    with _lock(root):
        results = collect(root)
        results["written_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
        write_json(out_file, results)
        if figure_too and any(c for p in results["parts"].values() for c in p["curves"].values()):
            import matplotlib.pyplot as plt

            fig = figure(results)
            atomic_write(out_file.with_suffix(".png"), lambda tmp: fig.savefig(tmp, format="png", dpi=110,
                                                                               bbox_inches="tight"))
            plt.close(fig)
    return results
