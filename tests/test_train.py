import json

import pytest
import torch

from sbt_lib.checkpoint import load_checkpoint, save_checkpoint
from sbt_lib.data.datasets import load_dataset
from sbt_lib.objective.objective import Objective
from sbt_lib.models.tokenizer import SelfBootTok
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


def test_a_run_paused_at_a_step_or_a_deadline_resumes_exactly(tiny_config, tiny_shapes, tmp_path):
    """``until`` and ``deadline`` pause a run with a checkpoint and no error; the same call goes on, and the pieces
    give the straight run's weights."""
    import time

    straight = train(_model(tiny_config), Objective(), tiny_shapes, _cfg(steps=8), out_dir=tmp_path / "straight")
    folder = tmp_path / "pieces"
    first = train(_model(tiny_config), Objective(), tiny_shapes, _cfg(steps=8), out_dir=folder, until=3)
    assert first.step == 3 and json.loads((folder / "checkpoint.json").read_text())["step"] == 3
    late = train(_model(tiny_config), Objective(), tiny_shapes, _cfg(steps=8), out_dir=folder, deadline=time.time())
    assert late.step == 4  # one step, then the deadline (already past) pauses it
    assert json.loads((folder / "checkpoint.json").read_text())["step"] == 4
    rest = train(_model(tiny_config), Objective(), tiny_shapes, _cfg(steps=8), out_dir=folder)
    assert rest.step == 8
    for (name, a), b in zip(straight.model.state_dict().items(), rest.model.state_dict().values()):
        assert torch.equal(a, b), name


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


# ----------------------------------------------------------------------------- data parallel seams


def test_without_a_process_group_the_trainer_is_rank_0_of_1(tiny_config, tiny_shapes):
    t = Trainer(_model(tiny_config), Objective(), tiny_shapes, _cfg())
    assert (t.rank, t.world_size, t.is_main) == (0, 1, True)
    assert not isinstance(t.step_module, torch.nn.parallel.DistributedDataParallel)


def test_micro_batches_accumulate_to_the_full_batch_step(tiny_config, tiny_shapes):
    """Gradient accumulation over micro-batches of 2 gives the step of the whole batch of 8 (a mean loss):
    the same weights after one step, the same losses after three.  (Not the same weights to 1e-6 after
    several steps: parameters with a zero gradient in exact arithmetic, such as attention's key bias, get
    rounding noise whose sign AdamW's normalisation turns into steps of ±lr.)"""
    whole = Trainer(_model(tiny_config), Objective(), tiny_shapes, _cfg(steps=3))
    micro = Trainer(_model(tiny_config), Objective(), tiny_shapes, _cfg(steps=3, micro_batch=2))
    assert [len(c) for c in micro._micro_batches()] == [2, 2, 2, 2]
    a, b = whole.train_step(), micro.train_step()
    for name, value in whole.model.state_dict().items():
        torch.testing.assert_close(micro.model.state_dict()[name], value, atol=1e-6, rtol=0, msg=name)
    for _ in range(2):
        assert abs(float(a["loss"]) - float(b["loss"])) < 1e-5
        a, b = whole.train_step(), micro.train_step()


def test_a_checkpoint_from_before_a_new_setting_resumes_at_its_default(tiny_config, tiny_shapes, tmp_path):
    """A setting added to TrainConfig after a run was saved counts as saved at its default value."""
    cfg = _cfg(steps=2)
    train(_model(tiny_config), Objective(), tiny_shapes, cfg, out_dir=tmp_path)
    meta = json.loads((tmp_path / "checkpoint.json").read_text())
    del meta["train"]["min_lr_ratio"]  # as if the run predates the setting (this run uses its default)
    (tmp_path / "checkpoint.json").write_text(json.dumps(meta))
    assert Trainer(_model(tiny_config), Objective(), tiny_shapes, cfg, out_dir=tmp_path).resume()
    with pytest.raises(ValueError, match="lr"):
        Trainer(_model(tiny_config), Objective(), tiny_shapes, _cfg(steps=2, lr=0.5), out_dir=tmp_path).resume()


class _FakeCuda:
    """Stands in for torch.cuda's RNG functions: ``saved`` devices' states to save, ``present`` devices."""

    def __init__(self, monkeypatch, saved: int, present: int):
        self.set = {}
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: present)
        monkeypatch.setattr(torch.cuda, "get_rng_state_all",
                            lambda: [torch.full((16,), 10 + i, dtype=torch.uint8) for i in range(saved)])
        monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: self.set.__setitem__(device, state))


def test_checkpoint_keeps_cuda_rng_beside_cpu_and_restores_what_fits(tiny_config, tiny_shapes, tmp_path,
                                                                     monkeypatch):
    cfg = _cfg(steps=4, device="cpu")
    t = Trainer(_model(tiny_config), Objective(), tiny_shapes, cfg, out_dir=tmp_path)
    t.train_step()  # outside the fake: the optimizer would look for the (absent) accelerator
    with monkeypatch.context() as m:  # saved on a machine with two devices
        _FakeCuda(m, saved=2, present=2)
        t.save()
    tensors, _ = load_checkpoint(tmp_path / "checkpoint")
    assert "rng.cpu" in tensors and torch.equal(tensors["rng.cuda.1"], torch.full((16,), 11, dtype=torch.uint8))
    with monkeypatch.context() as m:  # resumed on a machine with one device: device 0's state is restored
        cuda = _FakeCuda(m, saved=1, present=1)
        assert Trainer(_model(tiny_config), Objective(), tiny_shapes, cfg, out_dir=tmp_path).resume()
    assert list(cuda.set) == [0] and torch.equal(cuda.set[0], torch.full((16,), 10, dtype=torch.uint8))
    # on a CPU-only machine the CUDA states are ignored
    assert Trainer(_model(tiny_config), Objective(), tiny_shapes, cfg, out_dir=tmp_path).resume()


def test_checkpoint_without_cuda_rng_still_resumes(tiny_config, tiny_shapes, tmp_path, monkeypatch):
    """Older checkpoints hold only ``rng.cpu``: they resume, exactly, even where CUDA is available."""
    cfg = _cfg(steps=6, device="cpu")
    straight = train(_model(tiny_config), Objective(), tiny_shapes, cfg)
    t = Trainer(_model(tiny_config), Objective(), tiny_shapes, cfg, out_dir=tmp_path)
    for _ in range(3):
        t.train_step()
    t.save()
    tensors, meta = load_checkpoint(tmp_path / "checkpoint")
    assert not any(k.startswith("rng.cuda") for k in tensors)  # CPU only: as an older checkpoint
    with monkeypatch.context() as m:
        cuda = _FakeCuda(m, saved=1, present=1)
        resumed = Trainer(_model(tiny_config), Objective(), tiny_shapes, cfg, out_dir=tmp_path)
        assert resumed.resume() and resumed.step == 3
    assert cuda.set == {}
    result = resumed.run()
    for a, b in zip(straight.model.state_dict().values(), result.model.state_dict().values()):
        assert torch.equal(a, b)
