"""Shared fixtures: small models and datasets at the ``tiny`` scale."""
import pytest
import torch

from sbt_lib.data import load_dataset
from sbt_lib.scales import resolve
from sbt_lib.tokenizer import SelfBootTok, TokenizerConfig

TINY = resolve("01_decomposition", "tiny")


@pytest.fixture
def tiny_config() -> TokenizerConfig:
    return TokenizerConfig.from_dict({k: TINY[k] for k in TokenizerConfig().to_dict() if k in TINY})


@pytest.fixture
def tiny_model(tiny_config) -> SelfBootTok:
    torch.manual_seed(0)
    return SelfBootTok(tiny_config)


@pytest.fixture(scope="session")
def tiny_shapes():
    return load_dataset("shapes", "train", image_size=16, size=128, seed=0)
