"""Independent runs of a sweep trained several at once: worker processes with one CPU thread each.

A small tokenizer's training step does not keep two cores busy: two runs at a time with one thread each get
more steps done than one run at a time with two threads, though each run alone is slower.  A sweep therefore
trains ``workers`` runs at a time on a CPU, each in its own process with one thread.

:func:`map_runs` is a process pool made for that:

- the workers are *spawned* (a fork of a process whose OpenMP pool is running can deadlock), import the library,
  and receive the data sets once (their tensors travel through shared memory, not as copies);
- each worker runs one thread and ignores Ctrl-C; an interrupt in the caller (Ctrl-C, a notebook's stop button,
  or SIGTERM — ``kill PID`` of a sweep started in the background, where Ctrl-C cannot reach) or a failed run stops
  the others at the end of their step with a checkpoint saved (SIGTERM, which the training engine holds until the
  step ends), and every run resumes from its checkpoints on the next call;
- spawned workers import the main script again: a script (not a notebook) that starts a sweep keeps its top level
  under ``if __name__ == "__main__":`` (without it, the sweep stops with an error that says so);
- results come back in the order of the jobs, whichever finished first; an error in a run is raised in the
  caller, with the job it came from and the worker's traceback.

One thread per run changes the order of the sums inside a run: its numbers agree with a two-thread run's to
float rounding, not bit for bit (a workers=1 sweep run with one thread gives bit-identical rows, tested).
"""
from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool

import torch
from tqdm.auto import tqdm

_SHARED: tuple = ()  # in a worker: the arguments every job shares (the data sets), set once by _start


def sweep_workers(requested: int, jobs: int, device: torch.device, lazy_data: bool = False) -> int:
    """How many runs to train at once.  ``requested`` ≥ 1 is taken as given (at most one per job); 0 picks: one
    per CPU thread on a CPU (a small model's step gains less from a second thread than from a second run), one
    on a GPU (runs share the device better one after another), and one for a data set read lazily from disk
    (ImageNet: its features are computed per batch, by a network a worker would have to load again)."""
    if requested < 0:
        raise ValueError(f"workers must be ≥ 0 (0: choose), got {requested}")
    if requested:
        return max(1, min(requested, jobs))
    if device.type != "cpu" or lazy_data:
        return 1
    return max(1, min(jobs, torch.get_num_threads()))


def map_runs(fn: Callable, jobs: Sequence, shared: tuple = (), workers: int = 1, progress: bool = True,
             label: Callable[[object], str] = str, desc: str = "runs",
             cheap: Callable[[object], bool] | None = None) -> list:
    """``[fn(job, *shared) for job in jobs]``, ``workers`` at a time in spawned processes of one thread each
    (``workers`` ≤ 1: here, in order).  ``fn`` must be a module-level function and each job picklable; ``shared``
    (the data sets) is sent to each worker once.  One progress bar over the jobs; ``label(job)`` names the job on
    the bar and in the error of a run that failed.  Jobs for which ``cheap(job)`` holds (a finished run, only to
    re-evaluate) are handed out last, so that they fill the gaps the long ones leave at the end."""
    jobs = list(jobs)
    bar = tqdm(total=len(jobs), desc=desc, disable=not progress, mininterval=1.0)
    results: list = [None] * len(jobs)
    with bar:
        if workers <= 1 or len(jobs) <= 1:
            for i, job in enumerate(jobs):
                bar.set_postfix_str(label(job))
                results[i] = fn(job, *shared)
                bar.update()
            return results
        context = torch.multiprocessing.get_context("spawn")
        order = dispatch_order(jobs, cheap)
        pool = ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context, initializer=_start, initargs=(shared,))
        previous = _interrupt_on_sigterm()
        try:
            futures = [pool.submit(_run, (i, fn, jobs[i], label(jobs[i]))) for i in order]  # handed out in this order
            for future in as_completed(futures):
                i, result = future.result()
                results[i] = result
                bar.set_postfix_str(f"done: {label(jobs[i])}")
                bar.update()
        except BrokenProcessPool as error:
            raise RuntimeError(
                "a worker process of the sweep ended before its runs finished: it crashed (out of memory?), or the "
                "main script is not guarded. Workers are spawned and each imports the main script again, so a script "
                "that starts a sweep must keep its top level under `if __name__ == \"__main__\":`. Or run the sweep "
                "here, one run at a time, with workers=1") from error
        except BaseException:  # a run failed, or an interrupt: stop the other runs, each at the end of its step
            _stop(pool)
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
    return results


def _interrupt_on_sigterm():
    """Make SIGTERM in the caller a :class:`KeyboardInterrupt` (so the pool is stopped as by Ctrl-C, its runs saved)
    and return the handler it replaced; None where signals cannot be set (not the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, signal.default_int_handler)


def dispatch_order(jobs: Sequence, cheap: Callable[[object], bool] | None = None) -> list[int]:
    """The indices of ``jobs`` in the order a pool hands them out: the long ones first, then those for which
    ``cheap(job)`` holds, each group in the jobs' own order (a stable sort)."""
    return sorted(range(len(jobs)), key=lambda i: bool(cheap and cheap(jobs[i])))


class RunFailed(RuntimeError):
    """A run of a sweep failed in a worker process; the message names the run, the cause holds its traceback."""


def _start(shared: tuple) -> None:
    """A worker's start: one thread, Ctrl-C left to the caller (which terminates the pool), the shared arguments."""
    global _SHARED
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)
    _SHARED = shared


def _run(task: tuple) -> tuple[int, object]:
    i, fn, job, name = task
    try:
        return i, fn(job, *_SHARED)
    except KeyboardInterrupt:  # stopped by _stop: the engine has saved the run at the end of its step; no next job
        os._exit(130)
    except Exception as error:
        raise RunFailed(f"the run {name} failed in a worker process: {type(error).__name__}: {error}") from error


def _stop(pool: ProcessPoolExecutor, grace: float = 60.0) -> None:
    """Stop a pool's workers: SIGTERM, which the training engine holds to the end of the running step, saves a
    checkpoint at and then stops on (a worker between runs just ends); after ``grace`` seconds, SIGKILL."""
    processes = list((getattr(pool, "_processes", None) or {}).values())  # the executor's own list: no public one
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()
    deadline = time.monotonic() + grace
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
