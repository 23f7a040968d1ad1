"""The reused generator: its save_pretrained folder, the `train generator --export` command, and the shipped file."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from sbt_lib.generation.transport import TokenNormalizer
from sbt_lib.models.sit import SiT, SiTConfig
from sbt_lib.workbook.pipeline.base import load_base
from sbt_lib.workbook.pipeline.base_generator import (NORMALIZER, check_loss, generator_folder, load_generator_folder,
                                             qualities, read_record, recipe, save_generator, shipped_for)
from sbt_lib.workbook.cli.launch import evaluate_command, train_command
from sbt_lib.workbook.config.params import resolve
from sbt_lib.workbook.pipeline.runs import load_tokenizer

TINY = SiTConfig(num_tokens=8, token_dim=4, num_classes=3, size="tiny")


def _trained_looking(cfg: SiTConfig) -> SiT:
    """A SiT whose zero-initialised output layers are not zero, so that its outputs depend on every weight."""
    torch.manual_seed(0)
    model = SiT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def test_sit_save_pretrained_stores_float16_and_loads_back_the_same_model(tmp_path):
    model = _trained_looking(TINY)
    normalizer = TokenNormalizer(4)
    normalizer.mean.copy_(torch.tensor([0.5, -1.0, 2.0, 0.1]))
    normalizer.std.copy_(torch.tensor([3.0, 0.5, 1.5, 2.0]))
    save_generator(model, normalizer, tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    assert json.loads((tmp_path / "config.json").read_text())["cfg"] == TINY.to_dict()
    loaded, loaded_norm = load_generator_folder(tmp_path)
    assert loaded.cfg == model.cfg and not loaded.training
    assert torch.equal(loaded_norm.mean, normalizer.mean) and torch.equal(loaded_norm.std, normalizer.std)
    x, t, y = torch.randn(5, 8, 4), torch.rand(5), torch.tensor([0, 1, 2, 3, 0])
    with torch.no_grad():
        diff = (model(x, t, y) - loaded(x, t, y)).abs().max().item()
    assert 0 < diff < 1e-2  # float16 rounding, nothing more


def test_load_generator_folder_says_how_to_make_a_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m sbt_lib train generator"):
        load_generator_folder(tmp_path / "nothing")
    _trained_looking(TINY).save_pretrained(tmp_path / "no-normalizer")
    with pytest.raises(FileNotFoundError, match=NORMALIZER.split(".")[0] + "|train generator"):
        load_generator_folder(tmp_path / "no-normalizer")


def test_train_generator_exports_a_folder_that_reproduces_its_record(tmp_path):
    export, runs = tmp_path / "pretrained", tmp_path / "runs"
    train_command("base", "tiny", "shapes", runs, {"steps": 2, "eval_every": 0, "test_size": 16, "eval_size": 16})
    overrides = {"generator_steps": 6, "generator_samples": 20, "fd_size": 64, "test_size": 20}
    results = train_command("generator", "tiny", "shapes", runs, overrides, export=export)
    assert results["generator"].step == 6
    record = read_record(export)
    assert record["steps"] == 6 and record["images_seen"] == 6 * record["batch_size"]
    assert record["command"].startswith("python -m sbt_lib train generator --scale tiny --dataset shapes --export")
    P = resolve("generator", "tiny", dataset="shapes", **overrides)
    assert record["recipe"] == recipe(P)
    q = record["quality"]
    assert q["samples"] == 20 and len(q["seeds"]) == 3
    assert {"SiT", "Gaussian"} <= set(q["rows"]) and len(q["rows"]["SiT"]["gfd"]) == 3
    assert q["rows"]["SiT"]["gfd_std"] > 0  # three sampling seeds, three different sample sets
    assert record["quality_large"] is None  # no record_samples at tiny
    model, normalizer = load_generator_folder(export)
    base = load_tokenizer(runs / "base" / "tokenizer")
    assert check_loss(model, normalizer, base) == pytest.approx(record["check_loss"], abs=1e-5)

    # `evaluate generator --folder`: the same folder measured again, at a second count too, without training
    again = evaluate_command("generator", "tiny", "shapes", runs, {**overrides, "generator_record_samples": 40},
                             folder=export)["generator"]
    assert again == read_record(export)
    assert again["measured_by"].endswith(f"--folder {export} -p generator_steps=6 -p generator_samples=20 "
                                         "-p fd_size=64 -p test_size=20 -p generator_record_samples=40")
    assert {k: again[k] for k in ("command", "recipe", "steps", "training_seconds")} == \
        {k: record[k] for k in ("command", "recipe", "steps", "training_seconds")}  # how it was made: kept
    assert again["quality"] == record["quality"]  # same weights, seeds and images: the same numbers
    large = again["quality_large"]
    assert large["samples"] == 40 and large["label"].endswith("@40") and len(large["rows"]["SiT"]["gfd"]) == 3
    card = (export / "README.md").read_text()
    assert card.count("| SiT |") == 2 and "measured them" in card
    with pytest.raises(ValueError, match="--folder is for"):
        evaluate_command("base", "tiny", "shapes", runs, folder=export)


def test_a_two_cycle_generator_trains_its_second_cycle_from_the_first_or_from_a_folder_of_it(tmp_path):
    """``generator_restart_steps``: a second cosine cycle from the first's EMA weights; ``--init`` lets a folder trained
    by the first cycle's recipe (the shipped one, say) stand in for it, and nothing else."""
    runs = tmp_path / "runs"
    train_command("base", "tiny", "shapes", runs, {"steps": 2, "eval_every": 0, "test_size": 16, "eval_size": 16})
    one = {"generator_steps": 6, "generator_samples": 20, "fd_size": 64, "test_size": 20}
    two = {**one, "generator_restart_steps": 4, "generator_restart_lr": 1e-4}
    train_command("generator", "tiny", "shapes", runs, one, export=tmp_path / "first")
    both = train_command("generator", "tiny", "shapes", runs, two)["generator"]  # the one-cycle run, extended
    assert both.step == 10 and (runs / "05_generation/generators/global/restart/checkpoint.json").exists()
    (tmp_path / "on-first").mkdir()
    (tmp_path / "on-first" / "base").symlink_to(runs / "base")  # the same base, no generator run
    result = train_command("generator", "tiny", "shapes", tmp_path / "on-first", two, export=tmp_path / "second",
                           init=tmp_path / "first")["generator"]
    first, record = read_record(tmp_path / "first"), read_record(tmp_path / "second")
    assert result.step == 10 and record["steps"] == 10 and record["images_seen"] == 10 * record["batch_size"]
    assert [c["steps"] for c in record["cycles"]] == [6, 4] and record["cycles"][1]["lr"] == 1e-4
    assert record["cycles"][0]["seconds"] == first["training_seconds"]
    assert record["training_seconds"] == pytest.approx(sum(c["seconds"] for c in record["cycles"]), abs=0.2)
    assert record["command"] == (f"python -m sbt_lib train generator --scale tiny --dataset shapes --export "
                                 f"{tmp_path / 'second'} --init {tmp_path / 'first'}"
                                 + "".join(f" -p {k}={v!r}" for k, v in two.items()))
    assert record["recipe"] == recipe(resolve("generator", "tiny", dataset="shapes", **two))
    assert not (tmp_path / "on-first/05_generation/generators/global/checkpoint.json").exists()  # no first cycle run
    a, b = load_generator_folder(tmp_path / "first")[0], load_generator_folder(tmp_path / "second")[0]
    assert any(not torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    with pytest.raises(ValueError, match="first cycle"):  # a folder of another recipe
        train_command("generator", "tiny", "shapes", tmp_path / "on-first", {**two, "generator_steps": 7},
                      init=tmp_path / "first")
    with pytest.raises(ValueError, match="restart_steps"):  # a recipe of one cycle
        train_command("generator", "tiny", "shapes", tmp_path / "on-first", one, init=tmp_path / "first")


def test_the_shipped_generator_reproduces_its_check_losses():
    """A broken, stale or re-exported-without-its-record file fails here."""
    folder = generator_folder("cifar10")
    assert (folder / "model.safetensors").exists(), f"the shipped generator is missing from {folder}"
    shipped = sum(p.stat().st_size for p in folder.parent.rglob("*") if p.is_file())
    assert shipped < 25 * 2**20  # every shipped weight file together
    record = read_record(folder)
    model, normalizer = load_generator_folder(folder)
    base = load_base()
    assert record["tokenizer"] == base.cfg.to_dict() and model.cfg.prior == "none"
    measured = check_loss(model, normalizer, base)
    assert "photos" in measured
    for name, value in measured.items():
        assert value == pytest.approx(record["check_loss"][name], abs=1e-3), name
    q = record["quality"]
    assert q["samples"] >= 2000 and len(q["seeds"]) >= 3
    rows = q["rows"]
    assert {"SiT", "Gaussian", "real training images (floor)", "base decodes of them (ceiling)"} == set(rows)
    assert rows["real training images (floor)"]["gfd_mean"] < rows["base decodes of them (ceiling)"]["gfd_mean"]
    # The floor is below every generated row; the ceiling is not a bound on a guided generator (guidance sharpens
    # each class, and a seed of the shipped record lands below the decodes of real tokens), so no test says it is.
    assert rows["real training images (floor)"]["gfd_mean"] < min(rows["SiT"]["gfd"] + rows["Gaussian"]["gfd"])


def test_the_shipped_generator_beats_the_gaussian_by_15_percent():
    """Issue 30: the trained SiT at least 15% below the class-conditional Gaussian of the same tokens in gFD, and
    in KID, over its record's sampling seeds (their means), at ≥ 2000 samples.  Read at the largest count the record
    holds, both metrics at that one count: FD's bias from a finite count is the same for every row and makes any two
    rows look closer, less so the more samples (KID is unbiased)."""
    record = read_record(generator_folder("cifar10"))
    q = max(qualities(record), key=lambda q: q["samples"])
    assert q["samples"] >= 2000 and len(q["seeds"]) >= 3
    sit, gauss = q["rows"]["SiT"], q["rows"]["Gaussian"]
    assert sit["gfd_mean"] <= 0.85 * gauss["gfd_mean"] and sit["kid_mean"] <= 0.85 * gauss["kid_mean"]


def test_record_verdicts_read_the_sit_against_the_gaussian_seed_by_seed_at_each_count():
    from sbt_lib.workbook.pipeline.base_generator import record_verdicts

    def quality(samples, sit, gauss):
        row = lambda v: {"gfd": v, "kid": [x / 1000 for x in v], "gfd_mean": sum(v) / len(v), "gfd_std": 1.0,
                         "kid_mean": sum(v) / len(v) / 1000, "kid_std": 0.001}
        return {"samples": samples, "seeds": [0, 1], "label": f"gFD@{samples}",
                "rows": {"SiT": row(sit), "Gaussian": row(gauss)}}
    record = {"quality": quality(2000, [90.0, 70.0], [100.0, 100.0]), "quality_large": None}
    (line,) = record_verdicts(record)
    assert "2000 samples, 2 sampling seeds" in line and "gFD@2000 80.0 ± 1.0 against 100.0 ± 1.0: 20.0% below " \
        "(seed by seed 10.0%, 30.0%)" in line and "KID 0.0800 ± 0.0010 against 0.1000 ± 0.0010: 20.0% below" in line
    record["quality_large"] = quality(10000, [120.0, 120.0], [100.0, 100.0])
    assert "gFD@10000 120.0 ± 1.0 against 100.0 ± 1.0: 20.0% above (seed by seed -20.0%, -20.0%)" in record_verdicts(record)[1]


@pytest.mark.parametrize("scale", ["cpu", "gpu"])
def test_notebook_05_at_cpu_and_gpu_reuses_the_generator_bundle(scale):
    """Notebook 05's generator is the ``generator`` bundle's, so that at cpu it loads the shipped one."""
    from sbt_lib.workbook.pipeline.base_generator import generator_params

    assert recipe(generator_params(resolve("05_generation", scale, dataset="cifar10"))) == \
        recipe(resolve("generator", scale, dataset="cifar10"))


def test_the_notebook_05_cpu_bundle_finds_the_shipped_generator():
    P = resolve("generator", "cpu", dataset="cifar10")
    assert shipped_for(P, load_base()) == generator_folder("cifar10")
    assert shipped_for(P.replace(generator_steps=10), load_base()) is None


@pytest.mark.parametrize("scale", ["cpu", "gpu"])
def test_the_generator_bundle_checkpoints_during_its_long_training(scale):
    """The shipped generator trains for most of an hour: a crash must cost a few thousand steps, not all of them."""
    P = resolve("generator", scale, dataset="cifar10")
    assert 0 < P.training.ckpt_every <= P.generator.steps // 10
