"""Run the workbook's notebooks in order through papermill and summarise their metrics.

``python -m sbt_lib reproduce --scale cpu --out runs/cpu`` writes, into the output folder:

- ``NN_name.ipynb``: each executed notebook (kept, with its traceback, when a cell fails);
- ``NN_name/``: that notebook's run folder, with ``metrics.json`` and its figures;
- ``summary.md``: one table of every notebook's scalar metrics.

A failing notebook stops the run with its name and the failing cell.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import papermill as pm

from .checkpoint import write_json

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"


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


def run_notebook(path: Path, out: Path, params: dict, log_output: bool = False) -> dict:
    """Execute one notebook into ``out``; returns its metrics.json (empty dict if none)."""
    _check_parameters(path, params)
    run_dir = out / path.stem
    executed = out / path.name
    try:
        pm.execute_notebook(str(path), str(executed), parameters={**params, "OUT_DIR": str(run_dir)},
                            cwd=str(path.parent), kernel_name="python3", progress_bar=True, log_output=log_output)
    except pm.PapermillExecutionError as e:
        first_line = (e.source or "").strip().splitlines()[0] if (e.source or "").strip() else ""
        raise NotebookFailed(
            f"notebook {path.stem} failed in cell [{e.exec_count}] `{first_line}` ({e.ename}: {e.evalue}); "
            f"the executed copy with the traceback is {executed}"
        ) from None
    metrics = run_dir / "metrics.json"
    return json.loads(metrics.read_text()) if metrics.exists() else {}


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def write_summary(out: Path, scale: str) -> Path:
    """``summary.md``: every notebook with results in ``out`` (from this run or an earlier one, so a
    run of ``--only 02`` keeps 01's results), its last wall time and every scalar in its metrics.json."""
    timings = out / "wall_seconds.json"
    seconds = json.loads(timings.read_text()) if timings.exists() else {}
    lines = [f"# SelfBootTok workbook — scale `{scale}`", "",
             "| notebook | metric | value |", "|---|---|---|"]
    for path in notebooks():
        name, file = path.stem, out / path.stem / "metrics.json"
        if not file.exists():
            continue
        metrics = json.loads(file.read_text())
        if name in seconds:
            lines.append(f"| {name} | wall seconds | {seconds[name]:.0f} |")
        for k, v in metrics.items():
            if isinstance(v, (int, float, str, bool)) and k != "written_at":
                lines.append(f"| {name} | {k} | {_fmt(v)} |")
    path = out / "summary.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def reproduce(scale: str = "cpu", dataset: str | None = None, only: list[str] | None = None,
              out: str | Path | None = None, params: dict | None = None, log_output: bool = False) -> Path:
    """Run the notebooks (all, or ``only``) at ``scale``; returns the path of ``summary.md``.

    ``dataset`` sets ``DATASET`` in every notebook; ``params`` sets further parameters by their
    notebook names (upper case), checked against each notebook's ``parameters`` cell.
    """
    out = Path(out or REPO / "runs" / scale).resolve()
    out.mkdir(parents=True, exist_ok=True)
    base = {"SCALE": scale, **({"DATASET": dataset} if dataset else {}), **(params or {})}
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
        write_summary(out, scale)
    summary = write_summary(out, scale)
    print(f"== done: {summary}")
    return summary
