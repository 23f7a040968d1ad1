"""Shared fixtures: small models and datasets at the ``tiny`` scale."""
import pytest
import torch

import copy

from sbt_lib.data.datasets import load_dataset
from sbt_lib.models.tokenizer import SelfBootTok
from sbt_lib.models.tokenizer_config import TokenizerConfig
from sbt_lib.workbook.config.params import resolve

TINY = resolve("04_aligner_scaling", "tiny")  # a tiny bundle: the base recipe's tokenizer with the on-base training settings


@pytest.fixture
def tiny_config() -> TokenizerConfig:
    return copy.deepcopy(TINY.tokenizer)


@pytest.fixture
def tiny_model(tiny_config) -> SelfBootTok:
    torch.manual_seed(0)
    return SelfBootTok(tiny_config)


@pytest.fixture(scope="session")
def tiny_shapes():
    return load_dataset("shapes", "train", image_size=16, size=128, seed=0)


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """No $SBT_WEIGHTS, empty torch hub and Hugging Face caches, downloads off: only what ships
    with the packages (EfficientNet-Lite0) resolves."""
    from sbt_lib import weights

    monkeypatch.delenv("SBT_WEIGHTS", raising=False)
    monkeypatch.setenv("SBT_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(weights, "_hf_cached", lambda repo, name: None)
    return tmp_path
