"""Named bundles of defaults — the workbook's only 'configuration'.

A bundle is a flat dict of parameter names (:mod:`~sbt_lib.workbook.config.params` says how a name maps
onto its typed section).  Each notebook has a ``parameters`` cell with ``scale`` and the parameters it
exposes, all ``None`` by default; :func:`~sbt_lib.workbook.config.params.resolve` starts from the notebook's
bundle at that scale and overrides every parameter that was set, so any single value can be changed
without touching the rest.

- ``tiny``: for the tests; each notebook in seconds, numbers meaningless.
- ``cpu`` (default): minutes on a 2-core laptop; big enough that the effects are visible.
- ``gpu``: one GPU, about an hour per notebook (CIFAR-10 or an ImageNet-64 folder).
- ``paper``: the paper's setting (§4 and the appendix), for ``torchrun`` on many GPUs: ImageNet at 256 px
  (``$SBT_DATA/imagenet``), a DINOv2-B-sized encoder started from DINOv2 (64 tokens × 32), 2D aligners of
  10M-600M, 50 epochs of stage 1 and 50 of stage 2, SiT-XL for 800K steps, 50,000 samples for gFID.  Where
  the paper does not give a value (loss weights, learning rates, codebook size) the choice is ours and
  marked so below.  See the README's "From the notebook to torchrun".
"""
from __future__ import annotations

SCALE_NAMES = ("tiny", "cpu", "gpu", "paper")

IMAGENET_TRAIN = 1_281_167  # images in ILSVRC-2012's training split


def epochs(n: float, batch_size: int, images: int = IMAGENET_TRAIN) -> int:
    """Optimizer steps of ``n`` epochs at a global batch of ``batch_size``."""
    return round(n * images / batch_size)



# The recipe that learns in minutes on 2 cores (benchmarks/tokenizer_quality.py and base_recipe.py measure it):
# a conv trunk that halves the image down to the token grid (GigaTok), gain-shape SoftVQ (the codebook
# quantizes each token's direction, its length is kept) at a soft τ, a fixed linear path started at the
# training set's principal components, so training starts at the best linear code and learns the rest, and
# codebooks started at the k-means centroids of the training tokens, so quantization starts near that code.
_RECIPE = dict(trunk="conv", linear_path=True, keep_norm=True, tau=0.3, codebook_init="kmeans")

# Tokenizer sizes per scale (field names of TokenizerConfig).
_TOKENIZER = {
    "tiny": dict(image_size=16, patch_size=4, width=32, encoder_depth=1, decoder_depth=1, num_heads=2,
                 num_tokens=8, token_dim=4, codebook_size=64, conv_channels=8, **_RECIPE),
    # 32×32 images, 32 tokens × 8 = 256 values: 1/12 of the 3072 pixel values.
    "cpu": dict(image_size=32, patch_size=4, width=128, encoder_depth=4, decoder_depth=4, num_heads=4,
                num_tokens=32, token_dim=8, codebook_size=1024, conv_channels=32, **_RECIPE),
    "gpu": dict(image_size=32, patch_size=2, width=384, encoder_depth=8, decoder_depth=8, num_heads=6,
                num_tokens=32, token_dim=8, codebook_size=4096, conv_channels=64, **_RECIPE),
    # The paper: a DINOv2-B ViT (patch 16 at 256 px: a 16×16 grid) started from DINOv2's weights, 64 tokens
    # × 32.  The decoder mirrors the encoder.  Codebook size and τ are not given: SoftVQ-VAE's are our choice.
    "paper": dict(image_size=256, patch_size=16, width=768, encoder_depth=12, decoder_depth=12, num_heads=12,
                  num_tokens=64, token_dim=32, codebook_size=8192, conv_channels=0, trunk="patch",
                  linear_path=False, keep_norm=False, tau=0.07, encoder_init="dinov2_b"),
}

# Training and data per scale (field names of TrainConfig, plus the data settings).  ``auto`` is
# CIFAR-10 where it can be had ($SBT_DATA/cifar10, else torchvision's download), else the built-in photos.
_TRAINING = {
    "tiny": dict(dataset="shapes", train_size=256, test_size=64, steps=20, batch_size=16, lr=2e-3, warmup=5,
                 betas=(0.9, 0.99), ema=0.0, eval_every=10, eval_size=64, seed=0, log_every=2, ckpt_every=0,
                 fd_size=32),
    # A notebook's minutes on 2 cores, where the held-out PSNR has flattened (benchmarks/tokenizer_quality.py
    # --steps 400 draws the curve).  lr 1e-3 rather than 2e-3: at 2e-3 a seed can spike just after the warm-up (the
    # encoder's token head) and recover only later; at 1e-3 the end is the same without the spike
    # (benchmarks/tokenizer_quality.py over 3 seeds compares the two).
    "cpu": dict(dataset="auto", train_size=None, test_size=2000, steps=200, batch_size=32, lr=1e-3, warmup=50,
                betas=(0.9, 0.99), ema=0.0, eval_every=100, eval_size=1000, seed=0, log_every=10, ckpt_every=100,
                fd_size=112),
    "gpu": dict(dataset="cifar10", train_size=None, test_size=None, steps=40_000, batch_size=256, lr=1e-3,
                warmup=1000, betas=(0.9, 0.99), ema=0.999, eval_every=2000, eval_size=2000, seed=0, log_every=50,
                ckpt_every=2000, fd_size=224),
    # 50 epochs of ImageNet at a global batch of 256 (32 per GPU on 8); lr and warm-up: our choice.
    "paper": dict(dataset="imagenet", train_size=None, test_size=None, steps=epochs(50, 256), batch_size=256,
                  lr=1e-4, warmup=5000, betas=(0.9, 0.95), ema=0.9999, eval_every=10_000, eval_size=5000, seed=0,
                  log_every=100, ckpt_every=2500, fd_size=224),
}
# The objective of Eq. 4-5 at the paper scale: LPIPS, the GAN (SoftVQ's recipe: StyleGAN-like discriminator,
# LeCAM, consistency regularisation), REPA of the global tokens to DINOv2 and of the local 1D tokens to I-JEPA
# (Table 3's best).  The paper gives no weights: these are our choice.
_PAPER_OBJECTIVE = dict(perceptual_weight=1.0, adv_weight=0.1, adv_start=epochs(20, 256), repa_global_weight=0.5,
                        repa_global_teacher="dinov2_b", repa_local_weight=0.5, repa_local_teacher="ijepa",
                        repa_local_group="local_1d")

# The switches of the full SelfBootTok per scale: the 2D aligner's preset and the decoder.
_SELFBOOTTOK = {
    "tiny": dict(local_1d=True, local_2d="xs", decoder="cross"),
    "cpu": dict(local_1d=True, local_2d="xs", decoder="cross"),
    "gpu": dict(local_1d=True, local_2d="m", decoder="cross"),
    "paper": dict(local_1d=True, local_2d="10M", decoder="cross"),  # stage 1 with the small (10M) aligner
}

# ``fd_size``: the input size of EfficientNet-Lite0 for the rFID-style distance (FD-EffNet) when the
# Inception weights of FID are not available; part of the metric's label.

# Notebook 02, Table 2: local REPA (weight μ2) to each local teacher; the ViT teachers run only
# where their weights resolve (and their features of the training set are cached once).
_TABLE2 = {
    "tiny": dict(local_teachers=["hog"], local_teacher_weight=0.1),
    "cpu": dict(local_teachers=["hog", "effnet_lite0"], local_teacher_weight=0.1),
    "gpu": dict(local_teachers=["hog", "effnet_lite0", "dinov2_s", "siglip2", "ijepa"], local_teacher_weight=0.1),
    "paper": dict(local_teachers=["ijepa", "dinov2_b", "siglip2"], local_teacher_weight=0.5),  # Table 3's three
}

# Notebook 01's linear probes on `shapes`: the base applied to that many training and test images.
_PROBES = {
    "tiny": dict(probe_steps=20, probe_train_size=256, probe_test_size=128),
    "cpu": dict(probe_steps=100, probe_train_size=3000, probe_test_size=1000),
    "gpu": dict(probe_steps=4000, probe_train_size=10_000, probe_test_size=2000),
    "paper": dict(probe_steps=4000, probe_train_size=10_000, probe_test_size=2000),
}

# The small 2D KL-VAE of the OT term (notebook 03), trained once per data set and cached.
_VAE = {
    "tiny": dict(vae_downsample=2, vae_latent_channels=4, vae_channels=8, vae_steps=20, vae_batch_size=16),
    "cpu": dict(vae_downsample=2, vae_latent_channels=4, vae_channels=16, vae_steps=300, vae_batch_size=32),
    "gpu": dict(vae_downsample=2, vae_latent_channels=4, vae_channels=64, vae_steps=2000, vae_batch_size=256),
    "paper": dict(vae_downsample=16, vae_latent_channels=32, vae_channels=128, vae_steps=50_000, vae_batch_size=256),
}
# Notebook 03: the full model of notebook 02, trained with and without L_OT (μ3 = ot_weight).
_OT = {
    "tiny": dict(seeds=1, ot_weight=0.1, ot_eps=0.05, bench_batch=8),
    "cpu": dict(seeds=3, ot_weight=0.1, ot_eps=0.05, bench_batch=64),
    "gpu": dict(seeds=3, ot_weight=0.1, ot_eps=0.05, bench_batch=64),
    "paper": dict(seeds=1, ot_weight=0.1, ot_eps=0.05, bench_batch=64),
}

# Notebook 04: the base is stage 1; stage 2 trains the decoder side on it with a 2D aligner of each size (notebook
# 02's recipe on the base), and the smallest aligner at each larger size's FLOPs is the control.  Notebook 05 decodes
# one generator through every size.  ``stage2_steps`` is the length of stage 2 grown from a tokenizer trained end to
# end (sbt_lib.workbook.pipeline.trainers.train_stage2, e.g. at the paper scale); on a base, ``steps`` is.
_STAGE2 = {
    "tiny": dict(stage2_aligners=["xs", "s", "m", "l"], stage2_steps=10, seeds=2),
    "cpu": dict(stage2_aligners=["xs", "m", "l", "xl"], stage2_steps=100, seeds=3, test_size=500),
    "gpu": dict(stage2_aligners=["m", "xl", "10M", "50M"], stage2_steps=5000, seeds=2),
    # The paper's sweep, 50 more epochs each with the encoder frozen (its 100M/200M/400M are our 150M/300M).
    "paper": dict(stage2_aligners=["10M", "150M", "300M", "600M"], stage2_steps=epochs(50, 256), seeds=1),
}

# Notebook 05: a SiT on the global tokens of the base, trained from zero velocity once and reused (the ``generator``
# bundle, sbt_lib.workbook.pipeline.base_generator; shipped at cpu).  At cpu, SiT-cpu with patch 16: the 16 global
# tokens of 4 numbers are joined into one sequence element of 64 (``generator_patch``), so a token set costs about a
# third of SiT-mini's training time over 16 elements while the network is three times larger; for the same training
# time it reaches a far lower gFD (benchmarks/generator_quality_cpu_sit-cpu-patch16.json against
# ..._sit-mini.json, SiT-mini over 16 elements).  50,000 steps of 256 on all 50,000 training images' tokens at lr
# 1e-3 with logit-normal training times (lower gFD than uniform ones at every point of the same curve:
# generator_quality_cpu_logit-normal.json), sampled with its EMA weights; guidance only over the later part of the
# path (``generator_guidance_from``), and the Gaussian anchor at its own best (``generator_gaussian_guidance*``): the
# guidance sweep of the SiT and the Gaussian over scales and starts chose both (generator_guidance_cpu.json).
# benchmarks/generator_quality.py measures gFD against images seen, and against the guidance scale, with the Gaussian
# anchor beside it.  The curve still falls at the end of those 50,000 steps, so a second cosine cycle follows
# (``generator_restart_*``: 40,000 steps at a lower peak, from the first cycle's EMA weights): each cycle is one run
# that fits a sitting, and ``train generator --init DIR`` trains only the second on a folder of the first.  Its
# record measures the samples at 2000 (as notebook 05 does) and at 10,000 against the whole test split
# (``generator_record_samples``), where FD's bias from the count, shared by every row, is smaller.
# (a)/(b)/(c) train SiT-<compare_size> from zero at equal FLOPs: at cpu (a) gets 5,540 steps of
# 128 (about ten minutes, where SiT-mini has clearly learned: benchmarks/generator_size_cpu.json), so three seeds of
# the three rows fit one sitting of benchmarks/generator_compare.py.
_GENERATOR = {
    "tiny": dict(generator_size="tiny", generator_steps=30, generator_batch_size=32, generator_lr=1e-3,
                 generator_sampling_steps=4, generator_guidance_from=0.4, generator_samples=64,
                 generator_compare_size="tiny", generator_compare_steps=20, generator_compare_batch_size=32),
    "cpu": dict(generator_size="cpu", generator_patch=16, generator_steps=50_000, generator_batch_size=256,
                generator_lr=1e-3, generator_restart_steps=40_000, generator_restart_lr=3e-4,
                generator_ema=0.999, generator_time_sampling="logit_normal",
                generator_sampling_steps=10, generator_samples=2000, generator_record_samples=10_000,
                generator_guidance=5.0, generator_guidance_from=0.5, generator_gaussian_guidance=4.0,
                generator_gaussian_guidance_from=0.5,
                generator_compare_size="mini", generator_compare_steps=5540, generator_compare_lr=1e-3),
    "gpu": dict(generator_size="B", generator_steps=50_000, generator_batch_size=256, generator_lr=1e-4,
                generator_ema=0.9999, generator_sampling_steps=50, generator_samples=10_000,
                generator_compare_size="S", generator_compare_steps=5000, generator_compare_lr=3e-4,
                generator_compare_batch_size=256),
    # SiT-XL, 800K steps at SiT's batch of 256 and lr 1e-4; SiT's 250-step SDE sampler; 50,000 samples.
    "paper": dict(generator_size="XL", generator_steps=800_000, generator_batch_size=256, generator_lr=1e-4,
                  generator_ema=0.9999, generator_sampler="sde", generator_sampling_steps=250,
                  generator_samples=50_000, generator_compare_size="XL", generator_compare_steps=400_000,
                  generator_compare_lr=1e-4, generator_compare_batch_size=256),
}
# The generator bundle trains on every training image's tokens (notebook 05's stage 2 uses a 10,000-image subset),
# with a checkpoint every 2,000 steps: its training is long, and a crash then costs little of it.
_GENERATOR_DATA = {"tiny": {}, "cpu": dict(dataset="cifar10", train_size=None, test_size=2000, ckpt_every=2000),
                   "gpu": dict(dataset="cifar10", train_size=None, test_size=10_000, ckpt_every=2000), "paper": {}}
# Notebook 05 measures its samples against as many test images as it draws (generator_samples).
_GENERATION_TEST = {"tiny": {}, "cpu": dict(test_size=2000), "gpu": dict(test_size=10_000), "paper": {}}

# Notebook 06: six tokenizers × 3 seeds at notebook 02's size, 500 held-out images for the tokenizers, each run with a
# SiT-mini from zero velocity for the same steps (equal compute): 2,770 steps of 128, half of notebook 05's (a), enough
# for it to learn its tokens, measured with 2000 samples.  Eighteen such runs take far longer than the notebook's ten
# minutes: benchmarks/tokenizers_compared.py trains them in chunks and commits them (with the time of each), and the
# notebook reads them where the recipe is its own (and trains them itself otherwise).
_COMPARE = {  # patch 1, uniform times, guidance 2 over the whole path: the SiT-minis of the committed study
    "tiny": dict(generator_patch=1, generator_guidance=2.0, generator_guidance_from=0.0, seeds=2,
                 crt_weights=[0.1, 1.0], generator_steps=20, generator_samples=64),
    "cpu": dict(generator_patch=1, generator_guidance=2.0, generator_guidance_from=0.0,
                generator_time_sampling="uniform", seeds=3, crt_weights=[0.1, 1.0], test_size=500,
                generator_size="mini", generator_steps=2770, generator_batch_size=128, generator_lr=1e-3,
                generator_ema=0.0, generator_samples=2000),
    "gpu": dict(generator_patch=1, seeds=2, crt_weights=[0.1, 0.3, 1.0], generator_size="S", generator_steps=20_000,
                generator_lr=3e-4, generator_ema=0.0, generator_samples=10_000),
    "paper": dict(generator_patch=1, seeds=1, crt_weights=[0.1, 1.0], generator_steps=400_000,
                  generator_samples=50_000),
}

# Notebook 06: every tokenizer starts from the base and fine-tunes all of its weights for the same steps with the
# same seeds: CRT and GloTok act on the encoder, so a frozen base would leave them nothing to change.  MSE only, as
# on the base in notebooks 02-04, at a lower learning rate than a fresh decoder side gets.  The SelfBootTok rows
# keep the base's own local tokens (gain-shape, its aligner), so that "SelfBootTok" starts as the base itself.
_FINETUNE = {
    "tiny": dict(local_keep_norm=None, local_scale=1.0),
    "cpu": dict(steps=100, lr=5e-4, warmup=10, local_keep_norm=None, local_scale=1.0),
    "gpu": dict(steps=2000, lr=2e-4, warmup=100, local_keep_norm=None, local_scale=1.0),
    "paper": dict(),
}

# The base tokenizer: learned once, at a budget where a learned code overtakes the linear one, and shipped
# (weights/, sbt_lib.workbook.pipeline.base); the notebooks' experiments stand on it as the paper's stage 2 stands on
# stage 1.  16 global tokens × 4 = 64 values per 32×32 image (48×; the paper: 64 × 32 at 256 px, 96×), no linear path:
# the networks carry the code.  Patch 8 (the conv trunk works down to a 4×4 grid, so the transformer is cheap), 16 conv
# channels, and the dense path beside the latent tokens: the choices benchmarks/base_recipe.py measures (images/s
# and held-out PSNR / rFD at equal images seen).  MSE + the perceptual loss, the GAN from half-way, EMA weights.
_BASE_TOKENIZER = dict(_TOKENIZER["cpu"], patch_size=8, width=128, encoder_depth=2, decoder_depth=2, num_heads=4,
                       num_tokens=16, token_dim=4, codebook_size=1024, conv_channels=16, linear_path=False,
                       dense_path=True, local_1d=True, local_2d="xs", decoder="cross")
_BASE_CPU = dict(dataset="cifar10", train_size=None, test_size=2000, steps=9000, batch_size=64, lr=1e-3,
                 warmup=200, betas=(0.9, 0.99), ema=0.999, eval_every=500, eval_size=1000, seed=0, log_every=25,
                 ckpt_every=250, fd_size=112, perceptual_weight=0.5, adv_weight=0.1, adv_start=4500,
                 disc_channels=16, entropy_weight=0.0)
_BASE = {
    "tiny": {**_TRAINING["tiny"], **_TOKENIZER["tiny"], **_SELFBOOTTOK["tiny"], "linear_path": False,
             "perceptual_weight": 0.5, "adv_weight": 0.1, "adv_start": 10, "ema": 0.9, "entropy_weight": 0.0},
    "cpu": {**_BASE_TOKENIZER, **_BASE_CPU},
    "gpu": {**_BASE_TOKENIZER, **_BASE_CPU, "steps": 40_000, "batch_size": 256, "warmup": 1000, "adv_start": 20_000,
            "eval_every": 2000, "ckpt_every": 2000},
    "paper": {**_TRAINING["paper"], **_TOKENIZER["paper"], **_SELFBOOTTOK["paper"], **_PAPER_OBJECTIVE},
}

# Notebook 02 on the base: every variant trains its decoder side (local aligners and codebooks, fusion, decoder) from
# a fresh start on the base's frozen encoder and global codebook, its global tokens read from a cache, so a step runs
# the decoder side only.  At cpu, 9 variants × 3 seeds = 27 runs of 200 steps of 32 (6,400 images each) from a
# 10,000-image class-balanced subset, two at a time; at this budget batch 32 learns more per image than 64
# (benchmarks/table3_budget.py trains the variants at any budget, benchmarks/convergence.py until they flatten).
# MSE only: the variants differ in the decoder, and the perceptual loss would triple a step's cost.
# The local tokens are unit-length codes times 10 (the base's global tokens are of that order of length): with
# gain-shape local tokens the aligners shrink them until the decoder reads z_global alone; at length 10 it reads
# them (notebook 02's swap check measures how much), and longer ones trade PSNR for a larger swap drop.
_ON_BASE_TRAINING = dict(steps=200, batch_size=32, lr=2e-3, warmup=25, ema=0.0, eval_every=0, ckpt_every=0,
                         train_size=10_000, test_size=500, perceptual_weight=0.0, adv_weight=0.0)
_ON_BASE_LOCALS = dict(local_keep_norm=False, local_scale=10.0)
_ON_BASE = {
    "tiny": {**_BASE["tiny"], **_ON_BASE_LOCALS, "steps": 10, "eval_every": 0, "adv_weight": 0.0,
             "perceptual_weight": 0.0, "ema": 0.0},
    "cpu": {**_BASE["cpu"], **_ON_BASE_TRAINING, **_ON_BASE_LOCALS, "dataset": "auto"},
    "gpu": {**_BASE["gpu"], **_ON_BASE_LOCALS, "steps": 5000, "batch_size": 128, "lr": 2e-3, "warmup": 250, "ema": 0.0,
            "eval_every": 0, "perceptual_weight": 0.0, "adv_weight": 0.0, "test_size": 2000},
    "paper": _BASE["paper"],
}

# Notebook 01 loads the base and, for contrast, trains the base recipe from scratch for a notebook's minutes: at cpu
# 200 steps of 64 with MSE + the perceptual loss (no GAN, no EMA at that length; RESULTS.md has its wall time).
_SCRATCH = {
    "tiny": dict(ema=0.0),
    "cpu": dict(dataset="auto", steps=200, warmup=50, ema=0.0, eval_every=50, ckpt_every=100),
    "gpu": dict(dataset="auto", steps=2000, ema=0.0, eval_every=500, ckpt_every=500),
    "paper": dict(),
}

NOTEBOOKS = {
    # Not a notebook: the bundle of ``python -m sbt_lib train base`` (the shipped base tokenizer).
    "base": _BASE,
    "01_decomposition": {
        s: {**_BASE[s], **_PROBES[s], **_SCRATCH[s]} for s in SCALE_NAMES
    },
    "02_bootstrapping": {
        s: {**_ON_BASE[s], **_TABLE2[s], "seeds": 3 if s != "tiny" else 2, "local_2d": _SELFBOOTTOK[s]["local_2d"],
            "decoder": _SELFBOOTTOK[s]["decoder"], "entropy_weight": 0.0}
        for s in SCALE_NAMES
    },
    "03_ot_alignment": {
        s: {**_ON_BASE[s], **_VAE[s], **_OT[s], "local_2d": _SELFBOOTTOK[s]["local_2d"],
            "decoder": _SELFBOOTTOK[s]["decoder"], "entropy_weight": 0.0}
        for s in SCALE_NAMES
    },
    "04_aligner_scaling": {
        s: {**_ON_BASE[s], **_STAGE2[s], "local_1d": True, "local_2d": _STAGE2[s]["stage2_aligners"][0],
            "decoder": _SELFBOOTTOK[s]["decoder"], "entropy_weight": 0.0}
        for s in SCALE_NAMES
    },
    # Not a notebook: the bundle of ``python -m sbt_lib train generator`` (notebook 05's reused generator, shipped).
    "generator": {
        s: {**_ON_BASE[s], **_STAGE2[s], **_GENERATOR[s], **_GENERATOR_DATA[s], "local_1d": True,
            "local_2d": _STAGE2[s]["stage2_aligners"][0], "decoder": _SELFBOOTTOK[s]["decoder"], "entropy_weight": 0.0}
        for s in SCALE_NAMES
    },
    "05_generation": {
        s: {**_ON_BASE[s], **_STAGE2[s], **_GENERATOR[s], **_GENERATION_TEST[s], "local_1d": True,
            "local_2d": _STAGE2[s]["stage2_aligners"][0],
            "decoder": _SELFBOOTTOK[s]["decoder"], "entropy_weight": 0.0}
        for s in SCALE_NAMES
    },
    "06_tokenizers_compared": {
        s: {**_ON_BASE[s], **_FINETUNE[s], **_GENERATOR[s], **_COMPARE[s], "local_2d": _BASE[s]["local_2d"],
            "decoder": _SELFBOOTTOK[s]["decoder"], "entropy_weight": 0.0}
        for s in SCALE_NAMES
    },
}
