"""Run the workbook's notebooks in order through papermill and summarise their metrics.

``python -m sbt_lib reproduce --scale cpu --out runs/cpu`` writes, into the output folder:

- ``NN_name.ipynb``: each executed notebook (kept, with its traceback, when a cell fails);
- ``NN_name/``: that notebook's run folder, with ``metrics.json`` and its figures;
- ``wall_seconds.json``: each notebook's wall time;
- ``summary.md``: the results page of the folder (:mod:`sbt_lib.workbook.report.results_page`, the writer of
  ``RESULTS.md``): per notebook its headline rows, the command, date, machine, wall time and figures.

The kernels talk to the runner over local IPC sockets where the OS has them (no TCP port, so no
"running over TCP without encryption" warning from the kernel).

A failing notebook stops the run with its name and the failing cell.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from unittest import mock

import papermill as pm
from jupyter_client.manager import AsyncKernelManager

from ...data.datasets import DATASETS
from ...files import REPO, write_json
from ..report.results_page import NOTEBOOK_DIR, write_report


class LocalKernelManager(AsyncKernelManager):
    """A kernel manager whose kernel listens on IPC sockets: the kernel is local to the runner, so it
    needs no TCP port (and ipykernel has nothing to warn about).  The sockets live under an absolute path in
    the temp folder: jupyter_client's default, ``kernel-ipc`` relative to the kernel's working folder, left
    them in ``notebooks/`` (the kernel runs there; the runner, removing them at shutdown, looked elsewhere)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.transport = "ipc"
        self.ip = os.path.join(tempfile.gettempdir(), f"sbt-kernel-{os.getpid()}-{id(self):x}-ipc")


class NotebookFailed(RuntimeError):
    """A notebook raised; the message names it, the cell and where the executed copy is."""


def notebooks(only: list[str] | None = None) -> list[Path]:
    """The workbook's notebooks in order, or those whose name starts with one of ``only``."""
    found = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
    if not only:
        return found
    picked = [nb for nb in found if any(nb.stem.startswith(o) for o in only)]
    missing = [o for o in only if not any(nb.stem.startswith(o) for nb in found)]
    if missing:
        raise ValueError(f"no notebook matches {missing}; available: {[nb.stem for nb in found]}")
    return picked


def notebook_parameters(path: Path) -> dict:
    """The names and defaults of a notebook's ``parameters`` cell (papermill's reading of it)."""
    return {name: p["default"] for name, p in pm.inspect_notebook(str(path)).items()}


def _check_parameters(path: Path, params: dict) -> None:
    valid = notebook_parameters(path)
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ValueError(f"{path.stem} has no parameter(s) {unknown}; valid: {sorted(valid)}")


def resolve_dataset_arg(dataset: str | None) -> str | None:
    """A ``--dataset`` value as the notebooks need it: a data set name stays as it is; anything else is
    a folder, resolved against the caller's working directory (the kernels run in ``notebooks/``)."""
    if dataset is None or dataset in DATASETS:
        return dataset
    return str(Path(dataset).expanduser().resolve())


def run_notebook(path: Path, out: Path, params: dict, log_output: bool = False) -> dict:
    """Execute one notebook into ``out``; returns its metrics.json (empty dict if none)."""
    _check_parameters(path, params)
    run_dir = out / path.stem
    executed = out / path.name
    try:
        extra = {"kernel_manager_class": LocalKernelManager} if os.name == "posix" else {}
        with mock.patch.dict(os.environ, SBT_HEADLESS="1"):  # inherited by the kernel: explorers draw, no widgets
            pm.execute_notebook(str(path), str(executed), parameters={**params, "out_dir": str(run_dir)},
                                cwd=str(path.parent), kernel_name="python3", progress_bar=True,
                                log_output=log_output, **extra)
    except pm.PapermillExecutionError as e:
        first_line = (e.source or "").strip().splitlines()[0] if (e.source or "").strip() else ""
        raise NotebookFailed(
            f"notebook {path.stem} failed in cell [{e.exec_count}] `{first_line}` ({e.ename}: {e.evalue}); "
            f"the executed copy with the traceback is {executed}"
        ) from None
    metrics = run_dir / "metrics.json"
    return json.loads(metrics.read_text()) if metrics.exists() else {}


def reproduce(scale: str = "cpu", dataset: str | None = None, only: list[str] | None = None,
              out: str | Path | None = None, params: dict | None = None, log_output: bool = False) -> Path:
    """Run the notebooks (all, or ``only``) at ``scale``; returns the path of ``summary.md``.

    ``dataset`` sets ``dataset`` in every notebook (a folder relative to the caller's working
    directory); ``params`` sets further parameters by name (case-insensitive), checked against each
    notebook's ``parameters`` cell before anything runs.
    """
    out = Path(out or REPO / "runs" / scale).resolve()
    out.mkdir(parents=True, exist_ok=True)
    dataset = resolve_dataset_arg(dataset)
    base = {"scale": scale, **({"dataset": dataset} if dataset else {}),
            **{k.lower(): v for k, v in (params or {}).items()}}
    paths = notebooks(only)
    for path in paths:  # check every notebook's parameters before spending time on the first
        _check_parameters(path, base)
    timings = out / "wall_seconds.json"
    for path in paths:
        t0 = time.perf_counter()
        print(f"== {path.stem} (scale {scale}) → {out / path.stem}", flush=True)
        run_notebook(path, out, base, log_output)
        seconds = json.loads(timings.read_text()) if timings.exists() else {}
        write_json(timings, {**seconds, path.stem: time.perf_counter() - t0})
        write_report(out, out / "summary.md", scale)
    summary = write_report(out, out / "summary.md", scale)
    print(f"== done: {summary}; the results page: python -m sbt_lib report {out}")
    return summary
