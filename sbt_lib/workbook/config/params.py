"""Typed parameters: one :class:`Params` object per notebook run, with a typed section per part.

A notebook's ``parameters`` cell names each parameter once, by its config field's name (``steps``,
``width``, ``ot_weight``), every one ``None`` unless set; one line turns the cell into a
:class:`Params`: ``P = notebook_params("01_decomposition", globals())``.  The values come from the
notebook's bundle at the chosen scale (:mod:`~sbt_lib.workbook.config.scales`), with every non-``None``
cell value laid over it.

Flat names and sections.  A parameter's name is its field's name; the fields of the sections
that train a model of their own beside the tokenizer are prefixed with the section (``vae_steps``,
``probe_train_size``), so their ``steps`` and ``batch_size`` never collide with the tokenizer's —
stage 2's are ``stage2_steps``, ``stage2_freeze``, the generator's ``generator_steps``, ``generator_lr``.

=============  =========================================================  =======================================
section        config                                                     holds
=============  =========================================================  =======================================
``data``       :class:`DataConfig`                                        data set and its split sizes
``tokenizer``  :class:`~sbt_lib.models.tokenizer_config.TokenizerConfig`  sizes and switches of the tokenizer
``training``   :class:`~sbt_lib.train.TrainConfig`                        optimisation, seed, device
``eval``       :class:`EvalConfig`                                        held-out evaluation sizes
``objective``  :class:`~sbt_lib.objective.objective.ObjectiveConfig`      the weights of Eq. 4-5
``vae``        :class:`VAEConfig`                                         the 2D VAE of the OT term
``probe``      :class:`ProbeConfig`                                       the tokenizer trained for linear probes
``stage2``     :class:`Stage2Config`                                      stage 2 of two-stage aligner scaling
``generator``  :class:`GeneratorConfig`                                   the SiT generator and its sampler
``study``      :class:`StudyConfig`                                       seeds and sweeps of a notebook's study
=============  =========================================================  =======================================

Every section is built with the strict ``from_dict``; an unknown name is an error that lists the valid ones.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields, replace

from ...config import Config
from ...data.datasets import resolve_dataset_name
from ...models.tokenizer_config import TokenizerConfig
from ...objective.objective import ObjectiveConfig
from ...train import TrainConfig
from .scales import NOTEBOOKS


@dataclass
class DataConfig(Config):
    """The data set (``auto``: CIFAR-10 where it can be had, else the built-in photos; ``photos``,
    ``shapes``, ``cifar10`` or an ImageFolder path) and how many images of each split (``None``: all)."""

    dataset: str = "auto"
    train_size: int | None = None
    test_size: int | None = None
    note: str | None = None  # set by :func:`resolve`: why ``auto`` fell back to the photos


@dataclass
class EvalConfig(Config):
    """Held-out evaluation: images per evaluation during training, and the input size of the
    EfficientNet-Lite0 feature space of the rFID-style distance (part of that metric's label)."""

    eval_size: int | None = 1000
    fd_size: int = 112


@dataclass
class VAEConfig(Config):
    """The small 2D KL-VAE of the OT term (notebook 03), trained once per data set and cached."""

    downsample: int = 2
    latent_channels: int = 4
    channels: int = 16
    steps: int = 300
    batch_size: int = 32


@dataclass
class ProbeConfig(Config):
    """The tokenizer that notebook 01 trains on ``shapes`` for the linear probes."""

    steps: int = 300
    train_size: int = 3000
    test_size: int = 1000


@dataclass
class Stage2Config(Config):
    """Two-stage aligner scaling (notebook 04): the 2D aligner sizes grown in stage 2 (presets of
    :data:`~sbt_lib.models.aligners.ALIGNER_2D_PRESETS`), what stays frozen (``encoder`` or ``all``,
    :mod:`~sbt_lib.models.two_stage`), and the stage-2 steps per size; and the refine stage (a pixel refiner trained
    after the tokenizer with the rest frozen, :func:`~sbt_lib.models.two_stage.refined_tokenizer`,
    :func:`~sbt_lib.workbook.pipeline.trainers.train_refiner`)."""

    aligners: list[str] = field(default_factory=lambda: ["xs", "s", "m", "l", "xl"])
    freeze: str = "encoder"
    steps: int = 200
    refiner: int = 0  # channels of the pixel refiner trained after the tokenizer (0: no refine stage)
    refiner_steps: int = 0
    refiner_images: int | None = 10_000  # training images the refiner learns from (None: all)
    refiner_lr: float | None = None  # the refiner's peak learning rate (None: the tokenizer's, ``lr``)


@dataclass
class GeneratorConfig(Config):
    """The SiT generator over a frozen tokenizer's tokens (notebook 05): its size preset
    (:data:`~sbt_lib.models.sit.SIT_PRESETS`), training on cached tokens from zero velocity (or from the tokens'
    class-conditional Gaussian, ``prior="gaussian"``: the anchor, as an option), how it samples, and the smaller
    SiTs of notebook 05's equal-compute comparison (``compare_*``)."""

    size: str = "cpu"
    steps: int = 2000
    batch_size: int = 128
    lr: float = 3e-4
    ema: float = 0.0  # EMA decay of the weights it samples with (0: the raw weights)
    # a second cosine cycle (a warm restart, as SGDR): restart_steps more steps at peak restart_lr, from the first
    # cycle's EMA weights with a fresh optimizer, so that a long training is two shorter runs (0: one cycle)
    restart_steps: int = 0
    restart_lr: float = 3e-4
    class_dropout: float = 0.1
    prior: str = "none"  # none | gaussian: start from the tokens' class-conditional Gaussian (GaussianFlow)
    time_sampling: str = "uniform"  # uniform | logit_normal
    patch: int = 1  # consecutive tokens joined into one element of the SiT's sequence (its patch size, in 1D)
    sampler: str = "heun"  # euler | heun | dopri5 | sde
    sampling_steps: int = 20
    guidance: float = 2.0  # classifier-free guidance scale (1: none)
    guidance_from: float = 0.0  # guidance only for t ≥ this (t = 0 noise, 1 tokens): a guidance interval
    gaussian_guidance: float = 2.0  # the Gaussian anchor's guidance scale and start: its own best, so that the
    gaussian_guidance_from: float = 0.0  # SiT is never measured against an anchor sampled in a way that suits it less
    samples: int = 500  # generated images per distribution metric (its label says the count: FD@500)
    # the shipped generator's record also measures its quality at this many samples, each against as many test
    # images (0: only at ``samples``): FD's bias from a finite count is shared by every row and shrinks as the count
    # grows, so the ratio of two rows reads truer there
    record_samples: int = 0
    compare_size: str = "mini"  # notebook 05's (a)/(b)/(c): SiTs of this size trained from zero velocity,
    compare_steps: int = 400  # for this many steps of (a) (the others at (a)'s FLOPs),
    compare_lr: float = 1e-3  # at this learning rate, without EMA,
    compare_batch_size: int = 128  # on batches of this size (patch 1: each SiT's sequence is its tokens),
    compare_time_sampling: str = "uniform"  # with these training times, sampled with guidance
    compare_guidance: float = 2.0  # at this scale over the whole path


@dataclass
class StudyConfig(Config):
    """What a notebook sweeps: seeds per variant, the local teachers of Table 2 and their REPA
    weight μ2, the batch of the OT solver benchmark, and the weights of the related methods' terms in
    notebook 06 (CRT's at each of ``crt_weights``; GloTok's histogram relation and residual terms); and how many
    of a sweep's runs train at once (``workers``; 0: one per CPU thread on a CPU, one on a GPU; see
    :mod:`~sbt_lib.workbook.pipeline.pool`)."""

    seeds: int = 1
    workers: int = 0
    local_teachers: list[str] = field(default_factory=lambda: ["hog"])
    local_teacher_weight: float = 0.1
    bench_batch: int = 64
    crt_weights: list[float] = field(default_factory=lambda: [0.1, 1.0])
    # (histogram relation, residual regression): the relation's KL is about an order of magnitude above the
    # reconstruction MSE on CIFAR-10 at cpu, so 0.1 puts the two on one scale (notebook 06 logs both terms); the
    # residual regression is an MSE on the token scale already
    glotok_weights: list[float] = field(default_factory=lambda: [0.1, 1.0])  # a list: papermill passes lists, not tuples


SECTIONS = {"data": DataConfig, "tokenizer": TokenizerConfig, "training": TrainConfig, "eval": EvalConfig,
            "objective": ObjectiveConfig, "vae": VAEConfig, "probe": ProbeConfig, "stage2": Stage2Config,
            "generator": GeneratorConfig, "study": StudyConfig}
PREFIXED = ("vae", "probe", "stage2", "generator")  # sections whose flat names are ``<section>_<field>``
RUN_NAMES = ("scale", "out_dir")  # not in a section: which bundle, and where the run writes


def _flat_names() -> dict[str, tuple[str, str]]:
    """flat name → (section, field), by the rule of the module docstring; a collision is a bug here."""
    names: dict[str, tuple[str, str]] = {}
    for section, cls in SECTIONS.items():
        for f in fields(cls):
            name = f"{section}_{f.name}" if section in PREFIXED else f.name
            if name in names or name in RUN_NAMES:
                raise TypeError(f"parameter name {name!r} of section {section!r} is already {names.get(name)}")
            names[name] = (section, f.name)
    return names


FLAT_NAMES = _flat_names()


@dataclass
class Params:
    """Everything one notebook run is configured by: its bundle at a scale, overridden name by name."""

    notebook: str
    scale: str
    out_dir: str | None
    data: DataConfig
    tokenizer: TokenizerConfig
    training: TrainConfig
    eval: EvalConfig
    objective: ObjectiveConfig
    vae: VAEConfig
    probe: ProbeConfig
    stage2: Stage2Config
    generator: GeneratorConfig
    study: StudyConfig

    def replace(self, **flat) -> "Params":
        """A copy with the given flat names set (``None`` values too: use it to clear a field).  Each
        section that changes is rebuilt through its strict ``from_dict``, so its own checks run."""
        new = copy.deepcopy(self)
        changes: dict[str, dict] = {}
        for name, value in flat.items():
            if name in RUN_NAMES:
                setattr(new, name, value)
                continue
            if name not in FLAT_NAMES:
                raise TypeError(f"unknown parameter {name!r}; valid: {sorted(FLAT_NAMES) + list(RUN_NAMES)}")
            section, fld = FLAT_NAMES[name]
            changes.setdefault(section, {})[fld] = value
        for section, values in changes.items():
            setattr(new, section, SECTIONS[section].from_dict({**getattr(new, section).to_dict(), **values}))
        return new

    def flat(self) -> dict:
        """Every parameter by its flat name."""
        out = {"scale": self.scale, "out_dir": self.out_dir}
        for name, (section, fld) in FLAT_NAMES.items():
            out[name] = getattr(getattr(self, section), fld)
        return out

    @property
    def seed(self) -> int:
        """The run's seed: initial weights, batch order and the data subsets."""
        return self.training.seed

    @property
    def seeds(self) -> list[int]:
        """The seeds of a study: ``seed``, ``seed + 1``, … (``study.seeds`` of them)."""
        return [self.training.seed + i for i in range(self.study.seeds)]


def resolve(notebook: str, scale: str = "cpu", **overrides) -> Params:
    """The parameters of ``notebook`` at ``scale`` with every non-``None`` override applied.

    Names are flat (see the module docstring) and case-insensitive.  An unknown notebook, scale or
    name is an error that lists the valid ones.  A dataset of ``auto`` is resolved here, once: the name
    used replaces it and ``data.note`` says why where it fell back, so that nothing downstream changes
    the parameters and a run's metrics record the data it trained on."""
    if notebook not in NOTEBOOKS:
        raise KeyError(f"unknown notebook {notebook!r}; known: {sorted(NOTEBOOKS)}")
    if scale not in NOTEBOOKS[notebook]:
        raise ValueError(f"unknown scale {scale!r}; valid: {list(NOTEBOOKS[notebook])}")
    given = {k.lower(): v for k, v in overrides.items() if v is not None}
    given.pop("scale", None)
    unknown = sorted(set(given) - set(FLAT_NAMES) - set(RUN_NAMES))
    if unknown:
        raise TypeError(f"unknown parameter(s) {unknown} for {notebook}; valid: {sorted(FLAT_NAMES) + list(RUN_NAMES)}")
    bundle = dict(NOTEBOOKS[notebook][scale])
    bad = sorted(set(bundle) - set(FLAT_NAMES))
    if bad:  # a bundle in scales.py names a field that does not exist
        raise TypeError(f"the {scale} bundle of {notebook} has unknown parameter(s) {bad}")
    sections = {s: {} for s in SECTIONS}
    for name, value in bundle.items():
        section, fld = FLAT_NAMES[name]
        sections[section][fld] = value
    params = Params(notebook=notebook, scale=scale, out_dir=None,
                    **{s: SECTIONS[s].from_dict(d) for s, d in sections.items()}).replace(**given)
    if params.data.dataset == "auto":
        name, note = resolve_dataset_name("auto")
        params.data = replace(params.data, dataset=name, note=note)  # a fresh object, not yet handed out
    return params


def notebook_params(notebook: str, namespace: dict) -> Params:
    """The :class:`Params` of a notebook's ``parameters`` cell: ``namespace`` is the notebook's
    ``globals()``, from which every flat parameter name (and ``scale``, ``out_dir``) is read."""
    cell = {k: v for k, v in namespace.items() if k in FLAT_NAMES or k in RUN_NAMES}
    return resolve(notebook, cell.pop("scale", "cpu"), **cell)
