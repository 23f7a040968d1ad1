"""LPIPS (Zhang et al. 2018) as a frozen network: the ``lpips`` package's own linear layers on a
torchvision ImageNet backbone (VGG16 or AlexNet) resolved like every other weight file
(:func:`sbt_lib.weights.resolve_weights`).  The perceptual loss and the LPIPS metric both build it here."""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from ..weights import MissingWeightsError, resolve_weights

LPIPS_BACKBONES = {
    "vgg": ("vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth"),
    "alex": ("alexnet-owt-7be5be79.pth", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"),
}
_LOADED: dict[tuple[str, str], nn.Module] = {}


def resolve_lpips_weights(net: str = "vgg", weights=None, download: bool | None = None) -> Path:
    """torchvision's ImageNet backbone file for LPIPS-``net`` ('vgg' or 'alex')."""
    if net not in LPIPS_BACKBONES:
        raise ValueError(f"LPIPS net must be one of {sorted(LPIPS_BACKBONES)}, got {net!r}")
    filename, url = LPIPS_BACKBONES[net]
    return resolve_weights(filename, weights, url=url, download=download,
                           what=f"torchvision {net} ImageNet backbone of LPIPS")


def lpips_available(net: str = "vgg", download: bool = False) -> bool:
    """Whether LPIPS-``net`` can be built (by default: from local files only, no download)."""
    try:
        resolve_lpips_weights(net, download=download)
        return True
    except MissingWeightsError:
        return False


def load_lpips(net: str = "vgg", weights=None, download: bool | None = None) -> nn.Module:
    """A frozen ``lpips.LPIPS(net=net)``: the package's own linear layers, the torchvision backbone
    loaded from the resolved file (``features.<i>`` → LPIPS's ``slice<k>.<i>``)."""
    import lpips

    path = resolve_lpips_weights(net, weights, download)
    with warnings.catch_warnings():  # lpips calls torchvision with the deprecated `pretrained=`
        warnings.simplefilter("ignore")
        model = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)
    source = torch.load(path, map_location="cpu", weights_only=True)
    state = {}
    for key in model.net.state_dict():
        index, kind = re.fullmatch(r"slice\d+\.(\d+)\.(weight|bias)", key).groups()
        if f"features.{index}.{kind}" not in source:
            raise RuntimeError(f"{path} has no 'features.{index}.{kind}': not torchvision's {net} ImageNet weights")
        state[key] = source[f"features.{index}.{kind}"]
    model.net.load_state_dict(state, strict=True)
    return model.requires_grad_(False).eval()


def lpips_network(net: str = "vgg") -> nn.Module:
    """The frozen LPIPS-``net`` of the resolved backbone file, built once per process and file."""
    path = resolve_lpips_weights(net)
    key = (net, str(path))
    if key not in _LOADED:
        _LOADED[key] = load_lpips(net, path)
    return _LOADED[key]
