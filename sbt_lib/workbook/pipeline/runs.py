"""Run folders: where a notebook writes, where each (variant, seed) run of a study lives, its
``metrics.json`` with the few headline rows the results page shows (with when and on what machine it
was written), and loading a trained tokenizer or objective back from a folder."""
from __future__ import annotations

import json
import platform
import re
import time
from pathlib import Path

import torch

from ...checkpoint import load_checkpoint, unprefixed
from ...data.cache import FeatureCache
from ...files import REPO, write_json
from ...generation.transport import TokenNormalizer
from ...models.sit import SiT, SiTConfig
from ...models.tokenizer import SelfBootTok
from ...models.tokenizer_config import TokenizerConfig
from ...objective.objective import Objective, ObjectiveConfig


def run_dir(out_dir: str | None, notebook: str) -> Path:
    """The folder a notebook writes to: ``out_dir`` if given, else ``<repo>/runs/<notebook>``."""
    path = Path(out_dir) if out_dir else REPO / "runs" / notebook
    path.mkdir(parents=True, exist_ok=True)
    return path


def slug(name: str) -> str:
    """A folder name for a variant: ``G+L1+L2 (shared codebook)`` → ``G+L1+L2_shared_codebook``."""
    return re.sub(r"[^A-Za-z0-9+.-]+", "_", name).strip("_")


def variant_run(out: str | Path, variant: str, seed: int) -> Path:
    """The run folder of one (variant, seed) pair of a study in notebook folder ``out``."""
    return Path(out) / "runs" / slug(variant) / f"seed{seed}"


def _cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine() -> dict:
    """Where this process runs: platform, CPU model, torch's thread count, torch version, GPU (or None).
    No host name."""
    return {"platform": platform.platform(), "processor": _cpu_name(),
            "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def headline(label: str, value, anchor: str | None = None, note: str = "") -> dict:
    """One row of the workbook summary: what was measured, its value (a number or 'mean ± std'),
    the anchor it is read against, and a few words."""
    return {"label": label, "value": value, "anchor": anchor, "note": note}


def write_metrics(out_dir: Path, metrics: dict, headlines: list[dict] | None = None,
                  verdicts: list[str] | None = None) -> Path:
    """Write ``metrics.json`` (what the tests and the results page read); ``headlines`` are the
    rows (:func:`headline`) the page shows for this notebook, beside when and on what :func:`machine`;
    ``verdicts`` its claims read against the seed spread, one markdown line each (the page lists them)."""
    path = Path(out_dir) / "metrics.json"
    write_json(path, {**metrics, "headlines": headlines or [], "verdicts": verdicts or [],
                      "written_at": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine()})
    return path


def read_metrics(out_dir: Path) -> dict:
    return json.loads((Path(out_dir) / "metrics.json").read_text())


def load_tokenizer(run: str | Path, ema: bool = True) -> SelfBootTok:
    """The tokenizer saved in a run folder (its EMA weights when there are some and ``ema``)."""
    tensors, meta = load_checkpoint(Path(run) / "checkpoint")
    model = SelfBootTok(TokenizerConfig.from_dict(meta["tokenizer"]))
    prefix = "ema" if ema and any(k.startswith("ema.") for k in tensors) else "model"
    model.load_state_dict(unprefixed(prefix, tensors))
    return model.eval()


def load_objective(run: str | Path, model: SelfBootTok, latents_2d: FeatureCache | None = None) -> Objective:
    """The objective saved in a run folder, with its learned parts (the OT projector) restored.
    ``latents_2d`` is needed when the run used the OT term."""
    tensors, meta = load_checkpoint(Path(run) / "checkpoint")
    objective = Objective(ObjectiveConfig.from_dict(meta["objective"]), model.cfg, latents_2d=latents_2d)
    objective.load_state_dict(unprefixed("loss", tensors))
    return objective.eval()


def load_generator(run: str | Path, ema: bool = True) -> tuple[SiT, TokenNormalizer]:
    """The generator saved in a run folder (its EMA weights when there are some and ``ema``) and the
    token normaliser it was trained with."""
    tensors, meta = load_checkpoint(Path(run) / "checkpoint")
    model = SiT(SiTConfig.from_dict(meta["generator"]))
    prefix = "ema" if ema and any(k.startswith("ema.") for k in tensors) else "model"
    model.load_state_dict(unprefixed(prefix, tensors))
    normalizer = TokenNormalizer(model.cfg.token_dim)
    normalizer.load_state_dict(unprefixed("loss.normalizer", tensors))
    return model.eval(), normalizer
