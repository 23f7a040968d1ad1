"""Distribution metrics (FID / KID) through torch-fidelity, labelled by the feature space used;
and LPIPS.

:func:`feature_metrics` compares two image sets.  rFID-style numbers (reconstructions against
their originals) and gFID-style numbers (samples against data) both come from it.  The Fréchet
distance and KID themselves are torch-fidelity's (``calculate_metrics``); this module only picks
the feature space and names the result honestly:

* with the FID Inception weights resolvable (torch-fidelity's
  ``weights-inception-2015-12-05-6726825d.pth``, found or downloaded by
  :func:`sbt_lib.weights.resolve_weights` and handed to torch-fidelity as
  ``feature_extractor_weights_path``): keys ``fid``, ``kid``, ``kid_std`` -- comparable with
  published numbers when the sets are large (FID is biased at small N);
* otherwise (offline machines): the pooled 1280-d penultimate features of EfficientNet-Lite0
  (ImageNet weights from the pip package, ImageNet normalisation, input resized to 224 px, the
  resolution it was trained at), registered with torch-fidelity as a feature extractor; keys
  ``fd_effnet``, ``kid_effnet``, ``kid_effnet_std`` (``effnet_size`` sets another input size).
  Never called FID: its values are on a different scale and not comparable with Inception FIDs.

The result also says ``feature_space`` (a human-readable label), ``num_real`` and ``num_fake``.

:func:`lpips_metric` is per-image LPIPS (the ``lpips`` package, which ships its linear layers;
the VGG16 / AlexNet backbone is torchvision's ImageNet file, resolved like every other weight).
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

import torch.nn.functional as F
import torch_fidelity
from torch.utils.data import Dataset
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from ..data.datasets import to_uint8
from ..models.teachers import IMAGENET_MEAN, IMAGENET_STD, build_effnet_lite0, resolve_effnet_weights
from ..models.lpips_net import lpips_network
from ..weights import MissingWeightsError, resolve_weights

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + INCEPTION_FILE
INCEPTION_EXTRACTOR = "inception-v3-compat"  # torch-fidelity's own name
EFFNET_EXTRACTOR = "sbt-effnet-lite0"
EFFNET_SIZE = 224
FEATURE_SPACES = {
    INCEPTION_EXTRACTOR: ("fid", "kid", "kid_std", "FID (Inception-v3, torch-fidelity, 2048-d pool3)"),
    EFFNET_EXTRACTOR: ("fd_effnet", "kid_effnet", "kid_effnet_std",
                       "FD-EffNetLite0 (ImageNet, 1280-d pooled, {size} px)"),
}

# ----------------------------------------------------------------------------- the EffNet feature space

class EffNetLite0Extractor(FeatureExtractorBase):
    """torch-fidelity feature extractor: EfficientNet-Lite0 pooled penultimate features ('1280')
    or ImageNet logits ('logits') of uint8 B×3×H×W images, resized (bilinear, antialiased) to
    ``sbt_effnet_size`` px (default 224, the resolution the network was trained at)."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None,
                 sbt_effnet_size=EFFNET_SIZE, **kwargs):
        super().__init__(name, features_list)
        self.size = int(sbt_effnet_size)
        self.net = build_effnet_lite0(feature_extractor_weights_path)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @staticmethod
    def get_provided_features_list():
        return "1280", "logits"

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return "1280"

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 3, EFFNET_SIZE, EFFNET_SIZE, dtype=torch.uint8)

    def forward(self, x):
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected uint8 images B×3×H×W, got {x.dtype} {tuple(x.shape)}")
        x = F.interpolate(x.float() / 255, size=(self.size, self.size), mode="bilinear",
                          antialias=True, align_corners=False)
        pooled = self.net.forward_head(self.net.forward_features((x - self.mean) / self.std), pre_logits=True)
        features = {"1280": pooled}
        if "logits" in self.features_list:
            features["logits"] = self.net.classifier(pooled)
        return tuple(features[name] for name in self.features_list)

def _register_effnet() -> None:
    if EFFNET_EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:
        torch_fidelity.register_feature_extractor(EFFNET_EXTRACTOR, EffNetLite0Extractor)

def resolve_inception_weights(download: bool | None = None) -> Path:
    """torch-fidelity's FID Inception-v3 weights (explicit → $SBT_WEIGHTS → torch hub cache → download)."""
    return resolve_weights(INCEPTION_FILE, url=INCEPTION_URL, download=download,
                           what="Inception-v3 weights for FID/KID (torch-fidelity)")

def choose_feature_space(feature_extractor: str = "auto", download: bool | None = None) -> tuple[str, Path]:
    """(torch-fidelity extractor name, weight path) for ``'inception'``, ``'effnet'`` or ``'auto'``
    (Inception when its weights resolve, else EfficientNet-Lite0)."""
    if feature_extractor not in ("auto", "inception", "effnet"):
        raise ValueError(f"feature_extractor must be 'auto', 'inception' or 'effnet', got {feature_extractor!r}")
    if feature_extractor in ("auto", "inception"):
        try:
            return INCEPTION_EXTRACTOR, resolve_inception_weights(download)
        except MissingWeightsError:
            if feature_extractor == "inception":
                raise
    return EFFNET_EXTRACTOR, resolve_effnet_weights(download=download)

# ----------------------------------------------------------------------------- inputs

class _Images(Dataset):
    """uint8 N×3×H×W tensor as the Dataset torch-fidelity reads (one 3×H×W uint8 image per item)."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i]

def as_uint8(images, what: str = "images") -> torch.Tensor:
    """uint8 N×3×H×W (CPU) from a uint8 or [-1, 1] float tensor, or from a callable / iterable
    yielding such batches (or (images, labels) pairs)."""
    if callable(images) and not isinstance(images, torch.Tensor):
        images = images()
    if not isinstance(images, torch.Tensor):
        if not isinstance(images, Iterable):
            raise TypeError(f"{what}: expected a tensor N×3×H×W, or a callable/iterable of batches, "
                            f"got {type(images)}")
        batches = [as_uint8(b[0] if isinstance(b, (tuple, list)) else b, what) for b in images]
        if not batches:
            raise ValueError(f"{what}: no images")
        images = torch.cat(batches)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"{what}: expected images N×3×H×W, got shape {tuple(images.shape)}")
    images = images.detach().cpu()
    return images if images.dtype == torch.uint8 else to_uint8(images)

# ----------------------------------------------------------------------------- FID / KID

def _feature_batch(batch_size: int | None, device: torch.device) -> int:
    """Images per forward of the feature network: 64 on a GPU; 16 on a CPU, where a small batch's activations
    stay in the CPU's cache."""
    return batch_size or (64 if device.type == "cuda" else 16)


def _kid_subsets(subset: int, n_real: int, n_fake: int, kid_subsets: int) -> int:
    """KID's subsets to draw: one when a subset is every image of both sets.  torch-fidelity draws each subset
    without replacement, so every subset would then be the whole set in another order, and the unbiased MMD
    is the same for each (the mean is unchanged, the std is 0): the other draws only cost time."""
    return 1 if subset == n_real == n_fake else kid_subsets


def feature_metrics(real, fake, *, kid_subset_size: int | None = None, kid_subsets: int = 100,
                    batch_size: int | None = None, feature_extractor: str = "auto", effnet_size: int = EFFNET_SIZE,
                    device: str | torch.device | None = None, seed: int = 2020,
                    download: bool | None = None, real_cache_name: str | None = None) -> dict:
    """Fréchet distance and KID between ``real`` and ``fake`` (see the module docstring for the
    feature spaces and key names).  Inputs: uint8 or [-1, 1] float tensors N×3×H×W, or callables /
    iterables yielding batches.  KID uses ``kid_subsets`` subsets of ``kid_subset_size`` (default
    min(1000, N_real, N_fake)) images drawn with ``seed``: the numbers are deterministic.  KID is
    torch-fidelity's unbiased estimate, which can be negative (for two identical sets it is: the
    cross term pairs each image with itself).
    ``effnet_size`` is the input resolution of the EfficientNet feature space (part of its label;
    smaller is cheaper on a CPU).  ``device`` defaults to CUDA when available.
    ``real_cache_name`` names the ``real`` set so that torch-fidelity caches its features (under
    ``<cache>/fidelity``) and a later call with the same name skips them: for a fixed test set
    compared against many models' reconstructions.  The name must identify the images."""
    real, fake = as_uint8(real, "real"), as_uint8(fake, "fake")
    n_real, n_fake = len(real), len(fake)
    if min(n_real, n_fake) < 2:
        raise ValueError(f"FD/KID need at least 2 images in each set, got {n_real} real and {n_fake} fake")
    subset = min(kid_subset_size or 1000, n_real, n_fake)
    if subset < 2:
        raise ValueError(f"kid_subset_size must be at least 2, got {kid_subset_size}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    extractor, path = choose_feature_space(feature_extractor, download)
    _register_effnet()
    caching = {}
    if real_cache_name:  # the extractor's name, not its input size, is in torch-fidelity's key: add both
        from ..files import cache_dir

        caching = dict(cache=True, cache_root=str(cache_dir() / "fidelity"),
                       input2_cache_name=f"{real_cache_name}-{extractor}-{effnet_size}px-{Path(path).stem}")
    raw = torch_fidelity.calculate_metrics(
        input1=_Images(fake), input2=_Images(real), fid=True, kid=True,
        feature_extractor=extractor, feature_extractor_weights_path=str(path),
        kid_subset_size=subset, kid_subsets=_kid_subsets(subset, n_real, n_fake, kid_subsets),
        batch_size=_feature_batch(batch_size, device), rng_seed=seed,
        cuda=device.type == "cuda", save_cpu_ram=True, verbose=False, sbt_effnet_size=effnet_size,
        **{"cache": False, **caching})
    fd_key, kid_key, kid_std_key, label = FEATURE_SPACES[extractor]
    return {fd_key: raw[torch_fidelity.KEY_METRIC_FID], kid_key: raw[torch_fidelity.KEY_METRIC_KID_MEAN],
            kid_std_key: raw[torch_fidelity.KEY_METRIC_KID_STD], "feature_space": label.format(size=effnet_size),
            "num_real": n_real, "num_fake": n_fake, "kid_subset_size": subset}

# ----------------------------------------------------------------------------- from features (sharded evaluation)

def image_features(images, *, feature_extractor: str = "auto", effnet_size: int = EFFNET_SIZE, batch_size: int | None = None,
                   device: str | torch.device | None = None, download: bool | None = None) -> tuple[torch.Tensor, str]:
    """The feature vectors FD and KID compare (N×D), by torch-fidelity's own extractor and loader, and the
    extractor's name: what :func:`metrics_from_features` takes.  For evaluation split over processes: each
    computes the features of its shard, the shards are gathered, one process computes the metrics."""
    images = as_uint8(images)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    extractor, path = choose_feature_space(feature_extractor, download)
    _register_effnet()
    layer = FEATURE_EXTRACTORS_REGISTRY[extractor].get_default_feature_layer_for_metric("fid")
    cuda = device.type == "cuda"
    fe = torch_fidelity.utils.create_feature_extractor(extractor, [layer], cuda=cuda,
                                                       feature_extractor_weights_path=str(path),
                                                       sbt_effnet_size=effnet_size, verbose=False)
    features = torch_fidelity.utils.get_featuresdict_from_dataset(_Images(images), fe, _feature_batch(batch_size, device),
                                                                  cuda, True, False)
    return features[layer], extractor


def metrics_from_features(real: torch.Tensor, fake: torch.Tensor, extractor: str, *, effnet_size: int = EFFNET_SIZE,
                          kid_subset_size: int | None = None, kid_subsets: int = 100, seed: int = 2020) -> dict:
    """:func:`feature_metrics`' result from features of :func:`image_features` (torch-fidelity's FD and KID on
    them: the same numbers as :func:`feature_metrics` on the images)."""
    from torch_fidelity.metric_fid import fid_featuresdict_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_kid import kid_featuresdict_to_metric

    subset = min(kid_subset_size or 1000, len(real), len(fake))
    if subset < 2:
        raise ValueError(f"FD/KID need at least 2 images in each set, got {len(real)} real and {len(fake)} fake")
    fake_d, real_d = {"f": fake}, {"f": real}
    fd = fid_statistics_to_metric(fid_featuresdict_to_statistics(fake_d, "f"), fid_featuresdict_to_statistics(real_d, "f"),
                                  verbose=False)
    kid = kid_featuresdict_to_metric(fake_d, real_d, "f", kid_subset_size=subset,
                                     kid_subsets=_kid_subsets(subset, len(real), len(fake), kid_subsets),
                                     rng_seed=seed, verbose=False)
    fd_key, kid_key, kid_std_key, label = FEATURE_SPACES[extractor]
    return {fd_key: fd[torch_fidelity.KEY_METRIC_FID], kid_key: kid[torch_fidelity.KEY_METRIC_KID_MEAN],
            kid_std_key: kid[torch_fidelity.KEY_METRIC_KID_STD], "feature_space": label.format(size=effnet_size),
            "num_real": len(real), "num_fake": len(fake), "kid_subset_size": subset}

# ----------------------------------------------------------------------------- a feature space no loss sees

def hog_distance(real: torch.Tensor, fake: torch.Tensor, cell_size: int = 8) -> float:
    """Fréchet distance between two image sets (N×3×H×W in [-1, 1]) in the space of their colour HOG
    descriptors (9 orientations per channel and ``cell_size`` cell, flattened: 432 values at 32 px with
    8-px cells).  Weight-free, and unlike the EfficientNet feature space no training loss of the
    workbook reads it, so a gain there is not the perceptual loss's network being optimised
    (torch-fidelity's Fréchet distance on the descriptors)."""
    from torch_fidelity.metric_fid import fid_featuresdict_to_statistics, fid_statistics_to_metric

    from ..models.teachers import hog

    if min(len(real), len(fake)) < 2:
        raise ValueError(f"a Fréchet distance needs at least 2 images per set, got {len(real)} and {len(fake)}")
    stats = [fid_featuresdict_to_statistics({"f": hog(x.float(), cell_size).flatten(1).double()}, "f")
             for x in (fake, real)]
    return float(fid_statistics_to_metric(*stats, verbose=False)[torch_fidelity.KEY_METRIC_FID])


# ----------------------------------------------------------------------------- LPIPS

@torch.no_grad()
def lpips_metric(a: torch.Tensor, b: torch.Tensor, net: str = "vgg", batch_size: int = 64) -> torch.Tensor:
    """Per-image LPIPS-``net`` distance between image batches in [-1, 1] (float32, length N).
    Raises :class:`MissingWeightsError` when the backbone's weights do not resolve."""
    if a.shape != b.shape or a.ndim != 4 or a.shape[1] != 3:
        raise ValueError(f"LPIPS needs two image batches of the same shape N×3×H×W, "
                         f"got {tuple(a.shape)} and {tuple(b.shape)}")
    model = lpips_network(net).to(a.device)
    out = [model(a[i:i + batch_size].float(), b[i:i + batch_size].float()).flatten()
           for i in range(0, len(a), batch_size)]
    return torch.cat(out)
