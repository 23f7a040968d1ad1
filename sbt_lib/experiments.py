"""The steps every notebook shares: data, model and training from a parameter dict, and evaluation.

A parameter dict is what :func:`sbt_lib.scales.resolve` returns; the functions here pick the
keys they need, so the notebooks stay a page of narrative, calls and plots.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import fields
from pathlib import Path

import torch

from .data import load_dataset, to_uint8
from .features import FeatureCache
from .losses import Objective, ObjectiveConfig
from .metrics import bicubic_roundtrip, bicubic_side, psnr, ssim
from .quantizer import codebook_usage
from .tokenizer import SelfBootTok, TokenizerConfig
from .train import TrainConfig, TrainResult, resolve_device, train
from .vae2d import VAE2D, VAE2DConfig, train_vae2d

REPO = Path(__file__).resolve().parents[1]


def run_dir(out_dir: str | None, notebook: str) -> Path:
    """The folder a notebook writes to: ``out_dir`` if given, else ``<repo>/runs/<notebook>``."""
    path = Path(out_dir) if out_dir else REPO / "runs" / notebook
    path.mkdir(parents=True, exist_ok=True)
    return path


def _pick(cls, params: dict) -> dict:
    return {f.name: params[f.name] for f in fields(cls) if f.name in params}


def load_data(params: dict):
    """(train, test) datasets of ``params['dataset']`` at ``params['image_size']``.

    ``auto`` is resolved here once (CIFAR-10 when it can be had, else the built-in photos): the
    name actually used replaces it in ``params``, and ``params['dataset_note']`` says why when it
    fell back, so the run's metrics record which data it trained on."""
    from .data import resolve_dataset_name

    name, note = resolve_dataset_name(params["dataset"])
    params["dataset"], params["dataset_note"] = name, note
    if note:
        print(note)
    kw = dict(image_size=params["image_size"], seed=params.get("seed", 0))
    train = load_dataset(name, "train", size=params.get("train_size"), **kw)
    test = load_dataset(name, "test", size=params.get("test_size"), **kw)
    return train, test


def tokenizer_config(params: dict) -> TokenizerConfig:
    """The tokenizer's sizes and switches among ``params``."""
    return TokenizerConfig.from_dict(_pick(TokenizerConfig, params))


def build_tokenizer(params: dict, train_set=None) -> SelfBootTok:
    """A tokenizer with the sizes in ``params``; the seed fixes its initial weights.  With a linear
    path, ``train_set`` is needed: the path starts at its principal components (fitted on at most
    10,000 evenly spaced training images)."""
    torch.manual_seed(params.get("seed", 0))
    model = SelfBootTok(tokenizer_config(params))
    if model.linear_path is not None:
        if train_set is None:
            raise ValueError("a tokenizer with linear_path=True starts at the training set's principal components: "
                             "pass train_set to build_tokenizer")
        n = len(train_set)
        model.fit_linear_path(train_set.batch(torch.linspace(0, n - 1, min(n, 10_000)).round().long())[0])
    return model


def train_config(params: dict, **overrides) -> TrainConfig:
    return TrainConfig.from_dict({**_pick(TrainConfig, params), **overrides})


@torch.no_grad()
def reconstruct_with_codes(model: SelfBootTok, images: torch.Tensor, batch_size: int = 250):
    """Reconstructions of ``images`` (clamped to [-1, 1]) and their global soft code assignments,
    computed in batches on the model's device, returned on the CPU."""
    model.eval()
    device = next(model.parameters()).device
    recon, probs = [], []
    for i in range(0, len(images), batch_size):
        r, enc = model.reconstruct(images[i : i + batch_size].to(device))
        recon.append(r.clamp(-1, 1).float().cpu())
        probs.append(enc.probs["global"].float().cpu())
    return torch.cat(recon), torch.cat(probs)


def reconstruct(model: SelfBootTok, images: torch.Tensor, batch_size: int = 250) -> torch.Tensor:
    """Reconstructions of ``images``, clamped to [-1, 1]."""
    return reconstruct_with_codes(model, images, batch_size)[0]


def held_out_images(dataset, limit: int | None = None) -> torch.Tensor:
    """The images of ``dataset``, or ``limit`` of them evenly spaced (so class-sorted folders are covered)."""
    n = min(limit or len(dataset), len(dataset))
    return dataset.batch(torch.linspace(0, len(dataset) - 1, n).round().long())[0]


def anchor_metrics(train_set, images: torch.Tensor, values: int) -> dict[str, dict[str, float]]:
    """The two anchors every reconstruction table shows, at ``values`` numbers per image, on ``images``:
    ``bicubic`` (down to the largest thumbnail of that many numbers and back up) and ``PCA`` (that many
    principal components of ``train_set``, the best linear code).  PSNR, SSIM and the values used."""
    from .pca import pca_anchor

    recon = {"bicubic": bicubic_roundtrip(images, values),
             "PCA": pca_anchor(held_out_images(train_set, 10_000), images, values)}
    used = {"bicubic": 3 * bicubic_side(values) ** 2, "PCA": min(values, len(train_set) - 1)}
    return {k: {"psnr": psnr(r, images).mean().item(), "ssim": ssim(r, images).mean().item(), "values": used[k]}
            for k, r in recon.items()}


def evaluate_tokenizer(model: SelfBootTok, dataset, limit: int | None = None, batch_size: int = 250,
                       fd_size: int | None = None, train_set=None) -> dict:
    """Held-out PSNR/SSIM of ``model`` on ``dataset`` and codebook usage, plus the bicubic anchor
    (and, given ``train_set``, the PCA anchor).  With ``limit``, an evenly spaced subset.

    With ``fd_size``, also the distribution distance between reconstructions and originals
    (rFID-style) from :func:`~sbt_lib.feature_metrics.feature_metrics`: ``fid``/``kid`` when the
    Inception weights resolve, else ``fd_effnet``/``kid_effnet`` with EfficientNet-Lite0 at
    ``fd_size`` px (its ``feature_space`` says which); and ``test_lpips`` when LPIPS resolves."""
    images = held_out_images(dataset, limit)
    recon, probs = reconstruct_with_codes(model, images, batch_size)
    usage = codebook_usage(probs)
    extra = {}
    if fd_size:
        from .feature_metrics import feature_metrics, lpips_available, lpips_metric

        digest = hashlib.sha1(to_uint8(images).numpy().tobytes()).hexdigest()[:16]
        fm = feature_metrics(images, recon, effnet_size=fd_size, real_cache_name=f"{dataset.name}-{digest}")
        extra = {k: v for k, v in fm.items() if k not in ("num_real", "num_fake")}
        if lpips_available():
            extra["test_lpips"] = lpips_metric(recon, images).mean().item()
    bicubic = bicubic_roundtrip(images, model.cfg.token_values)
    if train_set is not None:
        pca = anchor_metrics(train_set, images, model.cfg.token_values)["PCA"]
        extra.update(pca_psnr=pca["psnr"], pca_ssim=pca["ssim"], pca_values=pca["values"])
    return {**extra,
        "test_psnr": psnr(recon, images).mean().item(),
        "test_ssim": ssim(recon, images).mean().item(),
        "bicubic_psnr": psnr(bicubic, images).mean().item(),
        "bicubic_ssim": ssim(bicubic, images).mean().item(),
        "bicubic_side": bicubic_side(model.cfg.token_values),
        "bicubic_values": 3 * bicubic_side(model.cfg.token_values) ** 2,
        "codebook_perplexity": usage["perplexity"],
        "codebook_used_fraction": usage["used_fraction"],
        "codebook_assignment_entropy": usage["assignment_entropy"],
        "codebook_size": model.cfg.codebook_size,
        "test_images": len(images),
    }


def train_2d_vae(params: dict, train_set, progress: bool = True) -> VAE2D:
    """The 2D VAE of the OT term for ``train_set`` (trained once, then loaded from the cache).
    Its settings are the ``vae_*`` parameters."""
    cfg = VAE2DConfig(image_size=params["image_size"], downsample=params["vae_downsample"],
                      latent_channels=params["vae_latent_channels"], channels=params["vae_channels"])
    return train_vae2d(train_set, cfg, steps=params["vae_steps"], batch_size=params["vae_batch_size"],
                       seed=params.get("seed", 0), progress=progress)


def latents_2d_cache(params: dict, train_set, progress: bool = True) -> FeatureCache:
    """The 2D latents of every training image under the (cached) 2D VAE, computed once on the
    training device."""
    device = resolve_device(params.get("device", "auto"))
    vae = train_2d_vae(params, train_set, progress).to(device)
    return FeatureCache(vae.latents, train_set, f"vae2d-{vae.fingerprint()}", device=device, progress=progress)


def teacher_cache(name: str, params: dict, train_set, num_tokens: int, progress: bool = True) -> FeatureCache:
    """The features of every training image under the frozen teacher ``name``
    (:func:`~sbt_lib.teachers.load_teacher`), already pooled to the ``num_tokens`` tokens they are
    aligned with (N×C, see :func:`~sbt_lib.repa.patches_to_tokens`; the pooling is linear, so
    caching pooled features is exact and takes P/N times less memory), computed once and cached."""
    from .repa import patches_to_tokens, teacher_tokens
    from .teachers import load_teacher

    device = resolve_device(params.get("device", "auto"))
    teacher = load_teacher(name, params["image_size"]).to(device)
    return FeatureCache(lambda images: patches_to_tokens(teacher_tokens(teacher(images)), num_tokens), train_set,
                        f"{teacher.cache_name}-pooled{num_tokens}", device=device, progress=progress)


def build_objective(params: dict, model: SelfBootTok, train_set, progress: bool = True) -> Objective:
    """Eq. 4-5 with the weights in ``params``; the frozen inputs its terms need (2D latents,
    teacher features of the training images) are computed and cached first."""
    cfg = ObjectiveConfig.from_dict(_pick(ObjectiveConfig, params))
    latents = latents_2d_cache(params, train_set, progress) if cfg.ot_weight else None
    tokens = {"global": model.cfg.num_tokens, "local": model.cfg.num_group_tokens(cfg.repa_local_group)}
    teachers = {which: teacher_cache(name, params, train_set, tokens[which], progress)
                for which, weight, name in (("global", cfg.repa_global_weight, cfg.repa_global_teacher),
                                            ("local", cfg.repa_local_weight, cfg.repa_local_teacher)) if weight}
    return Objective(cfg, model.cfg, latents_2d=latents, teacher_features=teachers)


def train_tokenizer(params: dict, train_set, test_set, out_dir: Path, progress: bool = True,
                    evaluate: bool = True) -> TrainResult:
    """Train the tokenizer of ``params`` on ``train_set`` with the objective of ``params``;
    held-out PSNR on ``test_set`` is logged every ``eval_every`` steps and at the end
    (``evaluate=False``: never, for callers that evaluate themselves).  Checkpoints land in
    ``out_dir``; a rerun resumes from them."""
    model = build_tokenizer(params, train_set)
    objective = build_objective(params, model, train_set, progress)
    eval_size = params.get("eval_size")

    def eval_fn(m):
        r = evaluate_tokenizer(m, test_set, limit=eval_size)
        return {"psnr": r["test_psnr"], "ssim": r["test_ssim"], "perplexity": r["codebook_perplexity"]}

    cfg = train_config(params, progress=progress)
    data = {k: params.get(k) for k in ("dataset", "image_size", "train_size", "seed")}
    meta = {"tokenizer": model.cfg.to_dict(), "data": data, "objective": objective.cfg.to_dict()}
    return train(model, objective, train_set, cfg, out_dir=out_dir, eval_fn=eval_fn if evaluate else None, meta=meta)


@torch.no_grad()
def encode_groups(model: SelfBootTok, images: torch.Tensor, batch_size: int = 250) -> dict[str, torch.Tensor]:
    """Every group's (soft-quantized) tokens for ``images``, batched on the model's device, on the CPU."""
    model.eval()
    device = next(model.parameters()).device
    parts: dict[str, list] = {g: [] for g in model.cfg.groups}
    for i in range(0, len(images), batch_size):
        enc = model.encode(images[i : i + batch_size].to(device))
        for g in parts:
            parts[g].append(enc.tokens[g].float().cpu())
    return {g: torch.cat(v) for g, v in parts.items()}


@torch.no_grad()
def decode_groups(model: SelfBootTok, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """What each group carries inside one trained model: ``images`` decoded with all groups, and
    with groups removed (scaled to 0 before fusion).  Keys are labels; values are clamped images."""
    model.eval()
    groups = model.cfg.groups
    settings = {"all groups": {}}
    for g in groups[1:]:
        settings[f"without {g}"] = {g: 0.0}
    if len(groups) > 2:
        settings["global only"] = {g: 0.0 for g in groups[1:]}
    if len(groups) > 1:
        settings["local only"] = {"global": 0.0}
    enc = model.encode(images)
    return {label: model.decode(enc, scales=sc).clamp(-1, 1) for label, sc in settings.items()}


def probe_groups(model: SelfBootTok, train_set, test_set, reference: bool = True) -> dict[str, dict[str, float]]:
    """Linear-probe accuracy from every token group to every ground-truth factor of ``train_set``
    (``shapes``), fit on ``train_set`` and scored on ``test_set``; with the chance level per factor.

    ``reference`` adds the row ``pixels (PCA)``: the same probe on as many principal components of the
    pixels as the tokenizer has values.  It is what a linear code of that size makes linearly readable,
    the reference for tokens that start as such a code (the linear path)."""
    from .pca import PCA
    from .probes import probe_table

    if train_set.factors is None or test_set.factors is None:
        raise ValueError(f"linear probes need ground-truth factors; dataset {train_set.name!r} has none (use 'shapes')")
    images = [d.batch(torch.arange(len(d)))[0] for d in (train_set, test_set)]
    feats = [encode_groups(model, x) for x in images]
    if reference:
        pca = PCA.fit(images[0], model.cfg.token_values)
        for f, x in zip(feats, images):
            f["pixels (PCA)"] = pca.encode(x)
    factors = [{k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in d.factors.items()}
               for d in (train_set, test_set)]
    return probe_table(feats[0], feats[1], factors[0], factors[1])


def cost_table(model: SelfBootTok) -> dict[str, dict]:
    """Parameters and forward MFLOPs per image of every part of the tokenizer, and the total."""
    from .flops import flops_by_module, num_params

    parts = ("encoder", "quantizers", "aligner_1d", "aligner_2d", "fusion", "decoder")
    device = next(model.parameters()).device
    s = model.cfg.image_size
    flops = flops_by_module(model, torch.zeros(1, 3, s, s, device=device), parts=parts)
    table = {p: {"params": num_params(getattr(model, p)), "mflops": flops[p] / 1e6} for p in parts}
    table["total"] = {"params": num_params(model), "mflops": flops["total"] / 1e6}
    return table


def load_objective(run: str | Path, model: SelfBootTok, latents_2d: FeatureCache | None = None) -> Objective:
    """The objective saved in a run folder, with its learned parts (the OT projector) restored.
    ``latents_2d`` is needed when the run used the OT term."""
    from .checkpoint import load_checkpoint, unprefixed

    tensors, meta = load_checkpoint(Path(run) / "checkpoint")
    objective = Objective(ObjectiveConfig.from_dict(meta["objective"]), model.cfg, latents_2d=latents_2d)
    objective.load_state_dict(unprefixed("loss", tensors))
    return objective.eval()


def load_tokenizer(run: str | Path, ema: bool = True) -> SelfBootTok:
    """The tokenizer saved in a run folder (its EMA weights when there are some and ``ema``)."""
    from .checkpoint import load_checkpoint, unprefixed

    tensors, meta = load_checkpoint(Path(run) / "checkpoint")
    model = SelfBootTok(TokenizerConfig.from_dict(meta["tokenizer"]))
    prefix = "ema" if ema and any(k.startswith("ema.") for k in tensors) else "model"
    model.load_state_dict(unprefixed(prefix, tensors))
    return model.eval()


def write_metrics(out_dir: Path, metrics: dict) -> Path:
    """Write ``metrics.json`` (what the tests and the reproduce summary read)."""
    from .checkpoint import write_json

    path = Path(out_dir) / "metrics.json"
    write_json(path, {**metrics, "written_at": time.strftime("%Y-%m-%d %H:%M:%S")})
    return path


def read_metrics(out_dir: Path) -> dict:
    return json.loads((Path(out_dir) / "metrics.json").read_text())
