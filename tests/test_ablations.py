import pytest

from sbt_lib.workbook.pipeline import ablations as ab
from sbt_lib.workbook.pipeline.runs import slug, variant_run
from sbt_lib.workbook.report import seed_stats
from sbt_lib.models.tokenizer_config import TokenizerConfig


def test_table3_variants_are_the_paper_rows():
    v = ab.table3_variants("xs")
    assert list(v) == ["G", "G+L1", "G+L1+L2 (non-causal)", "G+L1+L2 (shared codebook)",
                       "G+L1+L2 (gain-shape locals)", "G+L1+L2"]
    groups = {name: TokenizerConfig(**sw).groups for name, sw in v.items()}
    assert groups["G"] == ("global",) and groups["G+L1"] == ("global", "local_1d")
    assert all(g == ("global", "local_1d", "local_2d") for n, g in groups.items() if "L2" in n)
    assert TokenizerConfig(**v["G+L1+L2 (non-causal)"]).causal is False
    assert TokenizerConfig(**v["G+L1+L2 (shared codebook)"]).shared_codebook is True
    gain_shape = TokenizerConfig(**v["G+L1+L2 (gain-shape locals)"])
    assert gain_shape.local_keep_norm is True and gain_shape.local_scale == 1.0
    f = ab.fusion_variants("s")
    assert [TokenizerConfig(**sw).fusion for sw in f.values()] == ["residual", "concat"]


def test_slug_makes_distinct_folder_names():
    names = list(ab.table3_variants("xs")) + list(ab.fusion_variants("xs"))
    slugs = [slug(n) for n in names]
    assert len(set(slugs)) == len(slugs)
    assert slug("G+L1+L2 (shared codebook)") == "G+L1+L2_shared_codebook"
    assert variant_run("nb", "G+L1", 2).as_posix() == "nb/runs/G+L1/seed2"
    assert all("/" not in s and " " not in s for s in slugs)


def test_summarize_mean_and_sample_std():
    rows = [{"variant": "A", "test_psnr": 20.0, "test_ssim": 0.5, "params": 10},
            {"variant": "A", "test_psnr": 22.0, "test_ssim": 0.7, "params": 10},
            {"variant": "B", "test_psnr": 19.0, "test_ssim": 0.4, "params": 5}]
    s = seed_stats.summarize(rows)
    assert list(s) == ["A", "B"]
    assert s["A"]["test_psnr_mean"] == pytest.approx(21.0)
    assert s["A"]["test_psnr_std"] == pytest.approx(2**0.5)  # sample std (ddof=1)
    assert s["A"]["values"]["test_psnr"] == [20.0, 22.0] and s["A"]["seeds"] == 2
    assert s["B"]["test_psnr_std"] == 0.0
    table = seed_stats.summary_table(s, baseline="B", anchors={"PCA": {"psnr": 20.5, "ssim": 0.6, "values": 256}})
    assert "| A |" in table and "+2.00" in table and "21.00 ± 1.41" in table
    assert "| *PCA at 256 values (anchor)* | – | 20.50 | 0.600 | +1.50 |" in table


def test_verdict_reads_a_difference_against_the_seed_spread():
    s = {"A": {"test_psnr_mean": 21.0, "test_psnr_std": 0.1}, "B": {"test_psnr_mean": 20.0, "test_psnr_std": 0.2},
         "C": {"test_psnr_mean": 20.1, "test_psnr_std": 0.3}}
    assert "+1.00 dB" in seed_stats.verdict(s, "A", "B") and "clearly better than" in seed_stats.verdict(s, "A", "B")
    assert "clearly worse than" in seed_stats.verdict(s, "B", "A")
    assert "within the seed-to-seed spread" in seed_stats.verdict(s, "C", "B")
    assert "more than every variant's seed std" in seed_stats.seed_spread(s)
    assert "does not separate" in seed_stats.seed_spread({k: s[k] for k in ("B", "C")})


def test_run_variants_reuses_the_same_run_of_another_notebook_and_only_that(tmp_path):
    """Notebook 03's baseline is notebook 02's full model: a finished run with the same parameters in the other
    folder is evaluated there, not retrained; a run with other parameters there is left alone."""
    from sbt_lib.workbook.config.params import resolve
    from sbt_lib.workbook.pipeline import caches

    P = resolve("02_bootstrapping", "tiny", steps=4, seeds=1, test_size=16)
    train_set, test_set = caches.load_data(P)
    full = {"G+L1+L2": dict(local_1d=True, local_2d="xs")}
    first = ab.run_variants(P, full, train_set, test_set, tmp_path / "02", progress=False)
    shared = variant_run(tmp_path / "02", "G+L1+L2", P.seed)
    saved = (shared / "checkpoint.safetensors").stat().st_mtime_ns
    baseline = {"without L_OT": dict(local_1d=True, local_2d="xs", ot_weight=0.0)}
    reuse = {"without L_OT": (tmp_path / "02", "G+L1+L2")}
    again = ab.run_variants(P, baseline, train_set, test_set, tmp_path / "03", progress=False, reuse=reuse)
    assert again[0]["run"] == str(shared) and again[0]["test_psnr"] == first[0]["test_psnr"]
    assert not (tmp_path / "03").exists() and (shared / "checkpoint.safetensors").stat().st_mtime_ns == saved
    other = ab.run_variants(P.replace(steps=3), baseline, train_set, test_set, tmp_path / "03", progress=False,
                            reuse=reuse)
    assert other[0]["run"] == str(variant_run(tmp_path / "03", "without L_OT", P.seed)) and other[0]["steps"] == 3
    assert (shared / "checkpoint.safetensors").stat().st_mtime_ns == saved


def test_map_runs_keeps_the_order_and_names_a_failed_run():
    """Results come back in the order of the jobs from spawned workers; a run that fails is raised in the caller
    with the job's name and its cause."""
    import math

    from sbt_lib.workbook.pipeline.pool import RunFailed, map_runs, sweep_workers

    assert map_runs(math.sqrt, [9.0, 4.0, 1.0, 16.0], workers=2, progress=False) == [3.0, 2.0, 1.0, 4.0]
    with pytest.raises(RunFailed, match=r"the run job -1\.0 failed .*ValueError: math domain error"):
        map_runs(math.sqrt, [4.0, -1.0, 9.0], workers=2, progress=False, label=lambda j: f"job {j}")
    import torch

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert sweep_workers(0, 10, gpu) == 1 and sweep_workers(0, 10, cpu, lazy_data=True) == 1
    assert sweep_workers(0, 1, cpu) == 1 and sweep_workers(3, 2, cpu) == 2
    assert sweep_workers(0, 10, cpu) == min(10, torch.get_num_threads())
    with pytest.raises(ValueError, match="workers must be"):
        sweep_workers(-1, 10, cpu)


def test_runs_in_parallel_workers_give_the_rows_of_runs_one_after_another(tmp_path):
    """Two workers of one thread each give, run for run, the numbers that one thread gives running them in turn
    (the same arithmetic): parallel training changes the wall time, not the result."""
    import torch

    from sbt_lib.workbook.config.params import resolve
    from sbt_lib.workbook.pipeline import caches

    P = resolve("02_bootstrapping", "tiny", steps=4, seeds=2, test_size=16, workers=2)
    train_set, test_set = caches.load_data(P)
    variants = {"G": dict(local_1d=False, local_2d=None), "G+L1": dict(local_1d=True, local_2d=None)}
    parallel = ab.run_variants(P, variants, train_set, test_set, tmp_path / "parallel", progress=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        serial = ab.run_variants(P.replace(workers=1), variants, train_set, test_set, tmp_path / "serial",
                                 progress=False)
    finally:
        torch.set_num_threads(threads)
    assert [(r["variant"], r["seed"]) for r in parallel] == [(n, s) for n in variants for s in P.seeds]
    keys = ("test_psnr", "test_ssim", "codebook_perplexity", "steps")
    assert [[r[k] for k in keys] for r in parallel] == [[r[k] for k in keys] for r in serial]
    assert all(str(tmp_path / "parallel") in r["run"] for r in parallel)


def _negate(job):
    """A job of the pool test: a module-level function, so that spawned workers can unpickle it."""
    return -job


def test_map_runs_hands_out_the_cheap_jobs_last_and_returns_every_result_in_job_order():
    """The jobs that are only re-evaluated are handed out last (they fill the end); results keep the jobs' order.
    Which worker starts which job first depends on how fast each process starts, so the test reads the order of
    dispatch, not start times."""
    from sbt_lib.workbook.pipeline.pool import dispatch_order, map_runs

    jobs = [-1, 2, -3, 4, 5]  # negative: cheap
    assert [jobs[i] for i in dispatch_order(jobs, cheap=lambda j: j < 0)] == [2, 4, 5, -1, -3]
    assert dispatch_order(jobs) == [0, 1, 2, 3, 4]
    assert map_runs(_negate, jobs, workers=2, progress=False, cheap=lambda j: j < 0) == [1, -2, 3, -4, -5]
    assert map_runs(_negate, [], workers=2, progress=False) == []


SWEEP_SCRIPT = """
import sys
from sbt_lib.workbook.config.params import resolve
from sbt_lib.workbook.pipeline import ablations as ab, caches

if __name__ == "__main__":
    P = resolve("02_bootstrapping", "tiny", steps=100_000, seeds=1, test_size=16, workers=2, ckpt_every=10)
    train_set, test_set = caches.load_data(P)
    ab.run_variants(P, {"G": dict(local_1d=False, local_2d=None), "G+L1": dict(local_1d=True, local_2d=None)},
                    train_set, test_set, sys.argv[1], progress=False)
"""


def _children(pid: int) -> list[int]:
    from pathlib import Path

    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            pass
    return out


@pytest.mark.skipif(not __import__("pathlib").Path("/proc/self/stat").exists(), reason="reads /proc")
@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM"])
def test_ctrl_c_or_kill_stops_a_parallel_sweep_and_every_run_keeps_its_checkpoint(tmp_path, stop):
    """Ctrl-C (SIGINT) in the caller of a sweep, or ``kill`` (SIGTERM) of one started in the background (where SIGINT
    is ignored): the caller stops at once, the worker processes end, and each run in training saves a checkpoint at
    the step it had reached (so a rerun resumes it)."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "sweep.py"
    script.write_text(SWEEP_SCRIPT)
    out = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, str(script), str(out)], stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL if stop == "SIGINT"
                                                             else signal.SIG_IGN))
    marks = [variant_run(out, name, 0) / "checkpoint.json" for name in ("G", "G+L1")]
    try:
        deadline = time.monotonic() + 120
        while not all(m.exists() for m in marks) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert all(m.exists() for m in marks), proc.stderr.read() if proc.poll() is not None else "none in 120 s"
        workers = _children(proc.pid)
        before = {m: json.loads(m.read_text())["step"] for m in marks}
        proc.send_signal(getattr(signal, stop))
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            for pid in _children(proc.pid):
                os.kill(pid, signal.SIGKILL)
            proc.kill()
    assert proc.returncode != 0 and "KeyboardInterrupt" in proc.stderr.read()
    gone = time.monotonic() + 10
    while any(_alive(pid) for pid in workers) and time.monotonic() < gone:
        time.sleep(0.1)
    assert len(workers) >= 2 and not any(_alive(pid) for pid in workers)
    after = {m: json.loads(m.read_text())["step"] for m in marks}
    assert all(before[m] <= after[m] < 100_000 for m in marks)


def _alive(pid: int) -> bool:
    """Whether a process runs (a zombie, ended but not yet reaped, does not count)."""
    from pathlib import Path

    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_script_without_a_main_guard_gets_an_error_that_says_how_to_fix_it(tmp_path):
    """Spawned workers import the main script again: without ``if __name__ == "__main__":`` the sweep stops (it does
    not hang) with an error that names the guard and ``workers=1``."""
    import subprocess
    import sys

    script = tmp_path / "unguarded.py"
    script.write_text(SWEEP_SCRIPT.replace('if __name__ == "__main__":\n', "if True:\n").replace("100_000", "5"))
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "runs")], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode != 0
    assert 'if __name__ == "__main__":' in done.stderr and "workers=1" in done.stderr
