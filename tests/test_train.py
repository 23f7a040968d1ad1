import json

import pytest
import torch

from sbt_lib.checkpoint import load_checkpoint, save_checkpoint
from sbt_lib.data import load_dataset
from sbt_lib.losses import Objective
from sbt_lib.tokenizer import SelfBootTok
from sbt_lib.train import NonFiniteLossError, TrainConfig, Trainer, train


def _cfg(**kw):
    base = dict(steps=6, batch_size=8, lr=3e-3, warmup=2, log_every=1, progress=False, seed=0)
    return TrainConfig(**{**base, **kw})


def _model(tiny_config):
    torch.manual_seed(0)
    return SelfBootTok(tiny_config)


def test_learning_rate_schedule():
    cfg = TrainConfig(steps=100, lr=1.0, warmup=10, min_lr_ratio=0.1)
    assert cfg.lr_at(0) == pytest.approx(0.1)
    assert cfg.lr_at(9) == pytest.approx(1.0)
    assert cfg.lr_at(100) == pytest.approx(0.1)
    lrs = [cfg.lr_at(s) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))  # cosine decays monotonically


def test_training_fits_a_small_set(tiny_config):
    """Sixteen images, full batches: the engine must drive the loss well down."""
    data = load_dataset("shapes", "train", image_size=16, size=16, seed=1)
    result = train(_model(tiny_config), Objective(), data, _cfg(steps=100, batch_size=16, lr=5e-3))
    losses = [r["loss"] for r in result.history if "loss" in r]
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5  # a broken engine stays near 1.0 (this one: ~0.6)


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_resume_is_exact(tiny_config, tiny_shapes, tmp_path, ema):
    """N steps + save + resume + N steps gives the same weights as 2N steps straight."""
    straight = train(_model(tiny_config), Objective(entropy_weight=0.01), tiny_shapes, _cfg(steps=8, ema=ema),
                     out_dir=tmp_path / "straight")
    # first half: the same 8-step schedule, stopped and saved after 4 steps (as an interruption does)
    half = tmp_path / "halves"
    t = Trainer(_model(tiny_config), Objective(entropy_weight=0.01), tiny_shapes, _cfg(steps=8, ema=ema), out_dir=half)
    for _ in range(4):
        t.train_step()
    t.save()
    resumed = train(_model(tiny_config), Objective(entropy_weight=0.01), tiny_shapes, _cfg(steps=8, ema=ema),
                    out_dir=half)
    assert resumed.step == 8
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    if ema:
        for a, b in zip(straight.ema.state_dict().values(), resumed.ema.state_dict().values()):
            assert torch.equal(a, b)
    # the logged losses of the resumed run continue the straight run's exactly
    s = [r["loss"] for r in straight.history if "loss" in r]
    r = [r["loss"] for r in resumed.history if "loss" in r]
    assert s[4:] == r[-4:]


def test_finished_run_is_not_retrained(tiny_config, tiny_shapes, tmp_path):
    first = train(_model(tiny_config), Objective(), tiny_shapes, _cfg(), out_dir=tmp_path)
    again = train(_model(tiny_config), Objective(), tiny_shapes, _cfg(), out_dir=tmp_path)
    assert again.step == first.step and again.seconds == pytest.approx(first.seconds)
    for a, b in zip(first.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a, b)


def test_run_folder_with_other_parameters_is_refused(tiny_config, tiny_shapes, tmp_path):
    train(_model(tiny_config), Objective(), tiny_shapes, _cfg(), out_dir=tmp_path, meta={"width": 1})
    with pytest.raises(ValueError, match="different parameters"):
        train(_model(tiny_config), Objective(), tiny_shapes, _cfg(), out_dir=tmp_path, meta={"width": 2})


def test_nan_loss_names_step_and_term_and_keeps_the_last_checkpoint(tiny_config, tiny_shapes, tmp_path):
    t = Trainer(_model(tiny_config), Objective(), tiny_shapes, _cfg(steps=8), out_dir=tmp_path)
    for _ in range(4):
        t.train_step()
    t.save()
    saved = (tmp_path / "checkpoint.safetensors").read_bytes()

    def exploding(model, batch):
        terms = Objective()(model, batch)
        terms["blowup"] = torch.tensor(float("nan"))
        return terms

    with pytest.raises(NonFiniteLossError, match=r"step 4: blowup=nan"):
        train(_model(tiny_config), exploding, tiny_shapes, _cfg(steps=8), out_dir=tmp_path)
    assert (tmp_path / "checkpoint.safetensors").read_bytes() == saved
    assert json.loads((tmp_path / "checkpoint.json").read_text())["step"] == 4


def test_periodic_evaluation_is_logged(tiny_config, tiny_shapes):
    calls = []

    def eval_fn(model):
        calls.append(model.training)
        return {"psnr": 1.0}

    result = train(_model(tiny_config), Objective(), tiny_shapes, _cfg(steps=6, eval_every=3),
                   eval_fn=eval_fn)
    assert [r["step"] for r in result.history if "eval_psnr" in r] == [3, 6]
    assert calls == [False, False]  # evaluated in eval mode


def test_checkpoint_pair_must_agree(tmp_path):
    save_checkpoint(tmp_path / "ck", {"w": torch.ones(2)}, {"step": 3})
    tensors, meta = load_checkpoint(tmp_path / "ck")
    assert meta["step"] == 3 and torch.equal(tensors["w"], torch.ones(2))
    (tmp_path / "ck.json").write_text(json.dumps({"step": 5}))
    with pytest.raises(RuntimeError, match="step 3"):
        load_checkpoint(tmp_path / "ck")
    with pytest.raises(FileNotFoundError, match="missing"):
        load_checkpoint(tmp_path / "nothing")


def test_unknown_training_parameter():
    with pytest.raises(TypeError, match="valid"):
        TrainConfig.from_dict({"stepz": 3})
