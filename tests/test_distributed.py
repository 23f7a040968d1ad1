"""DDP under a real ``torchrun``, world size 2, gloo on CPU (tests/ddp_worker.py is one rank).

A step on two half-batches is the step on the whole batch; ranks stay equal; the shards of a step are
disjoint and cover it; only rank 0 writes; resume is exact under DDP and works across world sizes; a
crash or a Ctrl-C ends every rank with a good checkpoint; and the real ``python -m sbt_lib train`` runs
under ``torchrun``.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sbt_lib.batch import batch_indices
from sbt_lib.checkpoint import load_checkpoint, unprefixed
from sbt_lib.distributed import shard
from sbt_lib.train import Trainer

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import ddp_worker  # noqa: E402  (its builders: the same model, objective and data as each rank's)

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def _env():
    return {**os.environ, "SBT_DATA": os.environ.get("SBT_DATA", str(HERE.parent.parent / "shared" / "data")),
            "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent)}


def _torchrun(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([*TORCHRUN, *args], env=_env(), cwd=HERE.parent, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def setup():
    P = ddp_worker.params()
    from sbt_lib.workbook.pipeline import caches
    train_set, _ = caches.load_data(P)
    return P, train_set


def _single(P, train_set, out=None, **cfg) -> Trainer:
    return ddp_worker.trainer(P, train_set, train_set, out, **cfg)


@pytest.fixture(scope="module")
def suite(setup, tmp_path_factory):
    """One torchrun launch of the worker's suite; the single-process checkpoint it resumes is written first."""
    P, train_set = setup
    out = tmp_path_factory.mktemp("ddp")
    t = _single(P, train_set, out / "from_single", steps=4)
    t.train_step(), t.train_step()
    t.save()
    run = _torchrun(str(HERE / "ddp_worker.py"), str(out), "suite")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return out, [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    tensors, _ = load_checkpoint(run / "checkpoint")
    return unprefixed("model", tensors)


def _loss_on(model, images) -> float:
    with torch.no_grad():
        return float(torch.nn.functional.mse_loss(model(images)[0], images))


def test_a_ddp_step_on_two_half_batches_is_the_step_on_the_whole_batch(setup, suite):
    P, train_set = setup
    out, _ = suite
    alone = _single(P, train_set, steps=1)
    alone.train_step()
    for run in ("one_step", "one_step_micro"):  # the second: each half-batch as 4 micro-batches (no_sync)
        ddp = _weights(out / run)
        for name, value in alone.model.state_dict().items():
            torch.testing.assert_close(ddp[name], value, atol=1e-6, rtol=0, msg=f"{run}: {name}")
    loss_single = json.loads((out / "one_step" / "history.json").read_text())[0]["loss"]
    assert loss_single > 0  # the logged loss is the mean over both ranks' halves


def test_ranks_hold_equal_parameters(suite):
    _, reports = suite
    assert reports[0]["world_size"] == 2 and reports[0]["max_difference_between_ranks"] == 0.0


def test_the_shards_of_a_step_are_disjoint_and_cover_its_batch(setup, suite):
    P, train_set = setup
    _, reports = suite
    for step in range(4):
        parts = [r["straight_drawn"][str(step)] for r in reports]
        assert not set(parts[0]) & set(parts[1])
        assert parts[0] + parts[1] == batch_indices(len(train_set), P.training.batch_size, step, P.seed).tolist()
    assert [list(shard(10, r, 3)) for r in range(3)] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]


def test_only_rank_0_writes(suite):
    _, reports = suite
    assert reports[0]["writes"] and reports[1]["writes"] == []


def test_resume_under_ddp_is_exact_and_works_across_world_sizes(setup, suite):
    P, train_set = setup
    out, reports = suite
    assert all(r["resume_bit_identical"] and r["from_single_resumed"] for r in reports)
    straight = _single(P, train_set, steps=4)
    straight.model.load_state_dict(_weights(out / "straight"))
    images = train_set.images_at(torch.arange(32))
    reference = _loss_on(straight.model, images)
    # one process's checkpoint at step 2, finished by two; and two processes' checkpoint finished by one
    from_single = _single(P, train_set, steps=4)
    from_single.model.load_state_dict(_weights(out / "from_single"))
    (out / "to_single").mkdir()
    for f in out.glob("ddp_at_2.*"):
        (out / "to_single" / f"checkpoint{f.suffix}").write_bytes(f.read_bytes())
    to_single = _single(P, train_set, out / "to_single", steps=4)
    assert to_single.resume() and to_single.step == 2
    to_single.run()
    for model in (from_single.model, to_single.model):
        assert abs(_loss_on(model, images) - reference) < 1e-4 * reference


def test_a_crash_on_one_rank_ends_every_rank_and_keeps_the_last_checkpoint(setup, tmp_path):
    t0 = time.perf_counter()
    run = _torchrun(str(HERE / "ddp_worker.py"), str(tmp_path), "crash", timeout=240)
    assert run.returncode != 0 and "planted crash on rank 1" in run.stdout + run.stderr
    assert time.perf_counter() - t0 < 120
    tensors, meta = load_checkpoint(tmp_path / "crash" / "checkpoint")  # whole, and the pair agrees
    assert meta["step"] == 4 and meta["world_size"] == 2
    P, train_set = setup
    resumed = _single(P, train_set, tmp_path / "crash", steps=8)
    assert resumed.resume() and resumed.run().step == 8


def test_ctrl_c_stops_every_rank_at_one_step_and_saves_it(tmp_path):
    proc = subprocess.Popen([*TORCHRUN, str(HERE / "ddp_worker.py"), str(tmp_path), "long"], env=_env(),
                            cwd=HERE.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        deadline = time.time() + 180
        while not (tmp_path / "started").exists():
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.poll() is not None else "slow"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does: the whole process group
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    _, meta = load_checkpoint(tmp_path / "long" / "checkpoint")
    stopped = [json.loads((tmp_path / f"stopped{r}.json").read_text())["step"] for r in (0, 1)]
    assert 3 <= meta["step"] < 10_000 and stopped == [meta["step"]] * 2, (meta["step"], stopped, output[-2000:])


def test_the_train_and_evaluate_commands_run_under_torchrun(tmp_path):
    """The real launch: the base tokenizer, a stage-2 aligner on it and the generator on its global tokens, each on
    two processes; then the evaluation sharded over two processes gives the single process's numbers."""
    common = ["--scale", "tiny", "--out", str(tmp_path), "-p", "stage2_aligners=['xs']"]
    for what in ("base", "stage2", "generator"):
        run = _torchrun("-m", "sbt_lib", "train", what, *common)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        assert run.stdout.count("on 2 process(es) (DDP on gloo)") == 1  # rank 0 speaks, rank 1 does not
    for folder in ("base/tokenizer", "04_aligner_scaling/runs/two-stage_xs/seed0",
                   "05_generation/generators/global"):
        _, meta = load_checkpoint(tmp_path / folder / "checkpoint")
        assert meta["world_size"] == 2 and meta["step"] > 0
    # sharded evaluation: the tokenizer's numbers do not depend on how many processes computed them
    evaluation = tmp_path / "base" / "tokenizer" / "evaluation.json"
    found = {}
    for launch in (TORCHRUN, [sys.executable]):
        run = subprocess.run([*launch, "-m", "sbt_lib", "evaluate", "base", *common], env=_env(), cwd=HERE.parent,
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        metrics = json.loads(evaluation.read_text())
        found[metrics["processes"]] = metrics
    assert found[1]["test_images"] == found[2]["test_images"] == 64
    for key in ("test_psnr", "test_ssim", "fd_effnet"):
        assert found[2][key] == pytest.approx(found[1][key], rel=1e-5, abs=1e-9), key
    run = _torchrun("-m", "sbt_lib", "evaluate", "generator", *common)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    metrics = json.loads((tmp_path / "05_generation" / "generators" / "global" / "evaluation.json").read_text())
    assert metrics["processes"] == 2 and metrics["label"] == f"gFD-EffNet@{metrics['n']}" and metrics["gfd"] >= 0
