"""One rank of the DDP tests (tests/test_distributed.py), started by ``torchrun --nproc_per_node=2``.

``python ddp_worker.py OUT suite``: the tokenizer of the tiny bundle with REPA (every term a mean over
images, so a step does not depend on how the batch is split) trained under DDP in several ways; each rank
reports what it saw in ``OUT/rank<r>.json`` (written here, by the test harness, not by the engine).
``crash``: rank 1 raises at step 5 of 8 (checkpoints every 2 steps).  ``long``: 10,000 steps, for a signal
to interrupt (rank 0 writes ``OUT/started`` after step 3)."""
import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import torch

import sbt_lib.train as engine
import sbt_lib.train.state as engine_state
from sbt_lib import distributed as dist
from sbt_lib.workbook.config.params import resolve
from sbt_lib.workbook.pipeline import caches, trainers


class Recording:
    """The data set, recording the indices each step draws (and calling ``hook(step)`` first)."""

    def __init__(self, data, hook=None):
        self.data, self.drawn, self.hook = data, {}, hook

    def __len__(self):
        return len(self.data)

    def get_batch(self, indices, step):
        if self.hook:
            self.hook(step)
        self.drawn.setdefault(step, []).extend(indices.tolist())
        return self.data.get_batch(indices, step)


def params():
    return resolve("05_generation", "tiny", repa_global_weight=0.5, progress=False)


def build(P, train_set):
    model = trainers.build_tokenizer(P, train_set)
    return model, trainers.build_objective(P, model, train_set, progress=False)


def trainer(P, train_set, data, out, **cfg):
    model, objective = build(P, train_set)
    return engine.Trainer(model, objective, data, replace(P.training, **cfg), out_dir=out)


def flat(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def main(out: Path, scenario: str):
    rank, world = dist.rank_and_world_size()
    writes = []
    for name in ("save_checkpoint", "write_json"):  # every write the engine makes (all in its state module), by rank
        real = getattr(engine_state, name)
        setattr(engine_state, name, lambda path, *a, _real=real, **k: writes.append(str(path)) or _real(path, *a, **k))
    P = params()
    with dist.main_first():
        train_set, _ = caches.load_data(P)
        build(P, train_set)  # the teacher cache, filled by rank 0
    report = {"rank": rank, "world_size": world}

    if scenario == "crash":
        def crash(step):
            if rank == 1 and step == 5:
                raise RuntimeError("planted crash on rank 1 at step 5")
        trainer(P, train_set, Recording(train_set, crash), out / "crash", steps=8, ckpt_every=2).run()
        return
    if scenario == "long":
        def started(step):
            if rank == 0 and step == 3:
                (out / "started").write_text("3")
        t = trainer(P, train_set, Recording(train_set, started), out / "long", steps=10_000, ckpt_every=0, log_every=50)
        try:
            t.run()
        except KeyboardInterrupt:
            (out / f"stopped{rank}.json").write_text(json.dumps({"step": t.step}))
            raise
        return

    # one step, for the comparison with a single-process step on the whole batch
    data = Recording(train_set)
    t = trainer(P, train_set, data, out / "one_step", steps=1)
    t.run()
    report["one_step_drawn"] = data.drawn
    trainer(P, train_set, train_set, out / "one_step_micro", steps=1, micro_batch=2).run()  # 4 micro-batches per rank
    # four steps straight; the same four steps saved after two and resumed
    data = Recording(train_set)
    straight = trainer(P, train_set, data, out / "straight", steps=4)
    straight.run()
    report["straight_drawn"] = data.drawn
    vectors = dist.all_objects(flat(straight.model))
    report["max_difference_between_ranks"] = max(float((v - vectors[0]).abs().max()) for v in vectors)
    first = trainer(P, train_set, train_set, out / "resumed", steps=4)
    first.train_step(), first.train_step()
    first.save()
    if rank == 0:
        for f in (out / "resumed").glob("checkpoint.*"):
            shutil.copy(f, out / f"ddp_at_2{f.suffix}")
    resumed = trainer(P, train_set, train_set, out / "resumed", steps=4)
    assert resumed.resume() and resumed.step == 2
    resumed.run()
    report["resume_bit_identical"] = bool(torch.equal(flat(resumed.model), flat(straight.model)))
    # a checkpoint written by one process (the test wrote it at step 2 of 4), resumed by two
    single = trainer(P, train_set, train_set, out / "from_single", steps=4)
    report["from_single_resumed"] = single.resume() and single.step == 2
    single.run()
    report["writes"] = writes
    (out / f"rank{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    with dist.process_group():
        main(Path(sys.argv[1]), sys.argv[2])
