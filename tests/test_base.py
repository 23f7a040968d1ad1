"""The base tokenizer: its save_pretrained / from_pretrained folder, the `train base` command, and the shipped file."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sbt_lib.models.tokenizer import SelfBootTok
from sbt_lib.models.tokenizer_config import TokenizerConfig
from sbt_lib.workbook.cli.launch import train_command
from sbt_lib.workbook.pipeline.base import RECORD, base_folder, check_psnr, load_base, read_record

TINY = TokenizerConfig(image_size=16, patch_size=4, width=32, encoder_depth=1, decoder_depth=1, num_heads=2,
                       num_tokens=8, token_dim=4, codebook_size=64, conv_channels=8, trunk="conv", local_1d=True,
                       local_2d="xs")


def test_save_pretrained_stores_float16_and_loads_back_the_same_model(tmp_path):
    torch.manual_seed(0)
    model = SelfBootTok(TINY).eval()
    model.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}
    assert dtypes == {torch.float16}
    assert json.loads((tmp_path / "config.json").read_text())["cfg"] == TINY.to_dict()
    loaded = SelfBootTok.from_pretrained(str(tmp_path))
    assert loaded.cfg == model.cfg and not loaded.training
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    images = torch.rand(4, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        diff = (model(images)[0] - loaded(images)[0]).abs().max().item()
    assert 0 < diff < 1e-2  # float16 rounding, nothing more


def test_from_pretrained_refuses_a_file_that_does_not_fit_the_config(tmp_path):
    SelfBootTok(TINY).save_pretrained(tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    tensors.pop(next(k for k in tensors if k.startswith("decoder.")))  # a stale file: one tensor missing
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(RuntimeError, match="Missing key"):
        SelfBootTok.from_pretrained(str(tmp_path))


def test_load_base_says_how_to_make_a_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m sbt_lib train base"):
        load_base(tmp_path / "nothing")


def test_train_base_exports_a_folder_that_reproduces_its_record(tmp_path):
    export = tmp_path / "pretrained"
    results = train_command("base", "tiny", "shapes", tmp_path / "runs", {"steps": 4, "eval_every": 2, "fd_size": 64,
                                                                         "test_size": 16, "eval_size": 16},
                            export=export)
    history = results["base"].history
    assert [h["step"] for h in history if "eval_fd_effnet" in h] == [2, 4]  # the curve has the distance
    record = read_record(export)
    assert record["steps"] == 4 and record["images_seen"] == 4 * record["batch_size"]
    assert record["command"].startswith("python -m sbt_lib train base --scale tiny --dataset shapes")
    assert {"PCA", "bicubic"} <= set(record["anchors"]) and "fd_effnet" in record["anchors"]["PCA"]
    assert {"fd_effnet", "fd_hog", "swapped_local_psnr"} <= set(record["test"]) and record["values_per_image"] == 8 * 4
    assert {"fd_effnet", "fd_hog"} <= set(record["anchors"]["bicubic"])
    again = check_psnr(load_base(export))
    assert again == pytest.approx(record["check_psnr"], abs=1e-4)


def test_train_base_is_deterministic_on_a_cpu(tmp_path):
    """Retraining gives the same weights, hence the same numbers (what the shipped record relies on)."""
    overrides = {"steps": 3, "eval_every": 0, "test_size": 16, "eval_size": 16}
    a, b = (train_command("base", "tiny", "shapes", tmp_path / name, overrides)["base"] for name in ("a", "b"))
    for (k, x), y in zip(a.best_model.state_dict().items(), b.best_model.state_dict().values()):
        assert torch.equal(x, y), k


def test_the_shipped_base_tokenizer_reconstructs_its_check_batches_as_recorded():
    """A broken, stale or re-exported-without-its-record file fails here."""
    folder = base_folder("cifar10")
    assert (folder / "model.safetensors").exists(), f"the shipped base tokenizer is missing from {folder}"
    assert (folder / "model.safetensors").stat().st_size < 25 * 2**20
    record = read_record(folder)
    model = load_base(folder)
    assert model.cfg.token_values <= 64 and not model.cfg.linear_path
    measured = check_psnr(model)
    assert "photos" in measured
    for name, value in measured.items():
        assert value == pytest.approx(record["check_psnr"][name], abs=0.02), name
    assert (folder / RECORD).exists()


@pytest.mark.parametrize("notebook", ["01_decomposition", "02_bootstrapping", "04_aligner_scaling"])
def test_the_notebooks_at_cpu_and_gpu_stand_on_the_shipped_base(notebook, tmp_path):
    """The shipped folder is the ``base`` bundle's (read as a config: fields added since it was saved take their
    defaults), so a notebook loads it instead of training the base for hours."""
    from sbt_lib.workbook.config.params import resolve
    from sbt_lib.workbook.pipeline.base import notebook_base_folder

    for scale in ("cpu", "gpu"):
        assert notebook_base_folder(resolve(notebook, scale), tmp_path) == base_folder("cifar10"), scale
    assert notebook_base_folder(resolve(notebook, "tiny"), tmp_path) == tmp_path / "base" / "tokenizer"
