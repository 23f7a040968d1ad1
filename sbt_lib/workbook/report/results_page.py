"""The results page: ``RESULTS.md`` (and the run folder's ``summary.md``) written from the run folders.

``python -m sbt_lib report runs/cpu [--out RESULTS.md]`` reads each notebook's ``metrics.json`` in the run
folder (what :func:`sbt_lib.workbook.pipeline.runs.write_metrics` wrote) and ``wall_seconds.json`` (what the runner
timed) and writes, per notebook in order: the command that remakes it, when its results were written, the
machine and the wall time, its headline table (the result, the anchor it is read against, the seed spread or
a note, as the notebook chose them), its verdicts (each claim read against the seed spread) and links to its
figures.  A notebook without results in the folder is
listed as not run, with its command.  A last section lists the shipped weights the notebooks stand on
(``weights/*/training.json``: the command, steps, training time and machine).

Everything on the page comes from the files: no clock, no host name, notebooks and figures in sorted order,
so the page is byte-identical when written again from the same run folders.  Links are relative to the page.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ...files import REPO
from ..config.scales import SCALE_NAMES

NOTEBOOK_DIR = REPO / "notebooks"
WEIGHTS = REPO / "weights"
RESULTS = REPO / "RESULTS.md"
NOT_RECORDED = "not recorded"


def _notebook_names(runs: Path) -> list[str]:
    """The workbook's notebooks, and any other ``NN_name`` run folder with results, in order."""
    names = {p.stem for p in NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb")}
    names |= {p.parent.name for p in runs.glob("[0-9][0-9]_*/metrics.json")}
    return sorted(names)


def _title(name: str) -> str | None:
    """The notebook's first heading without its number (``# 05 — Generation ...`` → ``Generation ...``)."""
    path = NOTEBOOK_DIR / f"{name}.ipynb"
    if not path.exists():
        return None
    for cell in json.loads(path.read_text())["cells"]:
        if cell["cell_type"] == "markdown":
            first = "".join(cell["source"]).strip().splitlines()[0].lstrip("#").strip()
            number, _, rest = first.partition(" ")
            return rest.lstrip("·—- ").strip() if number == name[:2] else first
    return None


def _cell(v) -> str:
    text = f"{v:.4g}" if isinstance(v, float) else "–" if v is None or v == "" else str(v)
    return text.replace("|", "\\|").replace("\n", " ")


def _line(text: str) -> str:
    """A verdict as one list item: no leading bullet of its own, no line breaks."""
    return " ".join(text.removeprefix("- ").split())


def _link(target: Path, page: Path) -> str:
    return Path(os.path.relpath(target, page.parent)).as_posix()


def _shown(path: Path) -> str:
    """A folder as the page names it: relative to the repository when inside it."""
    try:
        return path.relative_to(REPO).as_posix()
    except ValueError:
        return path.as_posix()


def infer_scale(runs: Path) -> str | None:
    """The scale of a run folder: its name when that is a scale (``runs/cpu``), else the ``scale`` a
    notebook recorded in its metrics.json."""
    if runs.name in SCALE_NAMES:
        return runs.name
    recorded = [json.loads(f.read_text()).get("scale") for f in sorted(runs.glob("[0-9][0-9]_*/metrics.json"))]
    return next((s for s in recorded if s in SCALE_NAMES), None)


def remake_command(name: str, scale: str, runs: Path) -> str:
    """The command that reruns notebook ``name`` into ``runs``: ``make reproduce ARGS="--only 05"``."""
    args = f"--only {name[:2]}"
    if runs != (REPO / "runs" / scale).resolve():
        args += f" --out {_shown(runs)}"
    return f'make reproduce{"" if scale == "cpu" else f" SCALE={scale}"} ARGS="{args}"'


def format_machine(machine) -> str:
    """One line for the machine a notebook ran on (the record :func:`runs.machine` writes)."""
    if not machine:
        return NOT_RECORDED
    if isinstance(machine, str):
        return machine
    parts = [machine.get("processor") or "?"]
    if machine.get("cpu_threads"):
        parts[0] += f" ({machine['cpu_threads']} threads)"
    parts.append(f"GPU {machine['cuda']}" if machine.get("cuda") else "no GPU")
    parts += [p for p in (machine.get("platform"), machine.get("torch") and f"torch {machine['torch']}") if p]
    return ", ".join(parts)


def format_seconds(seconds) -> str:
    if seconds is None:
        return NOT_RECORDED
    if seconds < 120:
        return f"{seconds:.0f} s"
    longer = f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.2f} h"
    return f"{seconds:.0f} s ({longer})"


def notebook_section(name: str, runs: Path, page: Path, scale: str, seconds: dict) -> list[str]:
    """The lines of one notebook's section of the page."""
    title, run = _title(name), runs / name
    lines = [f"## {name}", ""] + ([f"*{title}*", ""] if title else [])
    command = f"`{remake_command(name, scale, runs)}`"
    file = run / "metrics.json"
    if not file.exists():
        return lines + [f"**Not run.** Command: {command}", ""]
    metrics = json.loads(file.read_text())
    files = [f"[`metrics.json`]({_link(file, page)})"]
    executed = runs / f"{name}.ipynb"
    if executed.exists():
        files.append(f"[executed notebook]({_link(executed, page)})")
    note = f" ({metrics['dataset_note']})" if metrics.get("dataset_note") else ""
    lines += [f"- command: {command}",
              f"- written: {metrics.get('written_at') or NOT_RECORDED}; wall time: {format_seconds(seconds.get(name))}",
              f"- machine: {format_machine(metrics.get('machine'))}",
              f"- data: `{metrics.get('dataset', '?')}`{note}",
              f"- files: {', '.join(files)}", ""]
    headlines = metrics.get("headlines") or []
    if headlines:
        lines += ["| result | value | read against | note |", "|---|---|---|---|"]
        lines += ["| " + " | ".join(_cell(h.get(k)) for k in ("label", "value", "anchor", "note")) + " |"
                  for h in headlines]
    else:
        lines.append("No headline rows in metrics.json.")
    lines.append("")
    verdicts = metrics.get("verdicts") or []
    if verdicts:
        lines += ["Verdicts:", ""] + [f"- {_line(v)}" for v in verdicts] + [""]
    figures = sorted(run.glob("*.png"))
    if figures:
        lines += ["Figures: " + " · ".join(f"[{f.stem}]({_link(f, page)})" for f in figures), ""]
    return lines


def measured(record: dict) -> str:
    """A shipped model's headline from its ``training.json``: a tokenizer's held-out PSNR and rFD beside PCA at
    as many values, a generator's gFD (mean ± std over sampling seeds) beside its Gaussian anchor and ceiling."""
    test, anchors, quality = record.get("test"), record.get("anchors") or {}, record.get("quality")
    if test and "test_psnr" in test:
        text = f"PSNR {test['test_psnr']:.2f} dB, rFD-EffNet {test['fd_effnet']:.1f}"
        pca = anchors.get("PCA")
        if pca:
            text += f" (PCA at {pca['values']} values: {pca['psnr']:.2f} dB, {pca['fd_effnet']:.1f})"
        return text + f"; {test['test_images']} test images"
    if quality and "SiT" in quality.get("rows", {}):
        return "; ".join(_generator_quality(q) for q in (quality, record.get("quality_large")) if q)
    return NOT_RECORDED


def _generator_quality(quality: dict) -> str:
    """A generator record's sample quality at one count: the SiT's gFD and KID beside its Gaussian anchor's."""
    rows = quality["rows"]

    def spread(name, key="gfd", digits=1):
        return f"{rows[name][key + '_mean']:.{digits}f} ± {rows[name][key + '_std']:.{digits}f}"
    sit, gauss = rows["SiT"], rows["Gaussian"]
    text = (f"{quality['label']} {spread('SiT')}, KID {spread('SiT', 'kid', 4)} over {len(quality['seeds'])} seeds "
            f"(Gaussian anchor {spread('Gaussian')}, KID {spread('Gaussian', 'kid', 4)}: "
            f"{1 - sit['gfd_mean'] / gauss['gfd_mean']:.1%} and {1 - sit['kid_mean'] / gauss['kid_mean']:.1%} below")
    ceiling = next((v for k, v in rows.items() if "ceiling" in k), None)
    return text + (f"; ceiling {ceiling['gfd_mean']:.1f})" if ceiling else ")")


def weights_section(weights: Path, page: Path) -> list[str]:
    """The shipped models the notebooks stand on: per ``weights/<name>/training.json``, the command that
    made it, its steps, training time and machine, and a link to its model card (which holds its numbers)."""
    records = sorted(weights.glob("*/training.json"))
    if not records:
        return []
    lines = ["## Shipped weights", "",
             "The notebooks at `cpu` stand on these models, trained once; each folder's `training.json` holds how "
             "it was made and what it measures, its `README.md` the model card.", "",
             "| folder | command | steps × batch | training time | machine | measured |", "|---|---|---|---|---|---|"]
    for file in records:
        r, folder = json.loads(file.read_text()), file.parent
        card = folder / "README.md"
        name = f"[`{_shown(folder)}`]({_link(card if card.exists() else file, page)})"
        steps = f"{r['steps']:,} × {r['batch_size']}" if r.get("steps") and r.get("batch_size") else NOT_RECORDED
        seconds = format_seconds(r.get("training_seconds"))
        if r.get("cycles"):  # a training in cosine cycles: each one's steps and time
            steps = " + ".join(f"{c['steps']:,}" for c in r["cycles"]) + f" × {r['batch_size']}"
            seconds = " + ".join(format_seconds(c["seconds"]) for c in r["cycles"])
        lines.append(f"| {name} | `{_cell(r.get('command') or NOT_RECORDED)}` | {steps} | "
                     f"{seconds} | {_cell(format_machine(r.get('machine')))} | "
                     f"{_cell(measured(r))} |")
    return lines + [""]


def render(runs: str | Path, page: str | Path, scale: str | None = None, weights: str | Path | None = WEIGHTS) -> str:
    """The text of the results page for the run folder ``runs``, as written at ``page`` (with the shipped
    models of ``weights``, unless None)."""
    runs, page = Path(runs).resolve(), Path(page).resolve()
    if not runs.is_dir():
        raise FileNotFoundError(f"no run folder {runs}: run the notebooks first (make reproduce, or "
                                f"python -m sbt_lib reproduce --out {runs})")
    scale = scale or infer_scale(runs)
    if scale is None:
        raise ValueError(f"cannot tell the scale of {runs}: name it with --scale ({', '.join(SCALE_NAMES)})")
    timings = runs / "wall_seconds.json"
    seconds = json.loads(timings.read_text()) if timings.exists() else {}
    names = _notebook_names(runs)
    done = [n for n in names if (runs / n / "metrics.json").exists()]
    out = "" if page == RESULTS.resolve() else f" --out {_shown(page)}"
    lines = [f"# SelfBootTok workbook — results at scale `{scale}`", "",
             f"Written by `python -m sbt_lib report {_shown(runs)}{out}` from the run folder `{_shown(runs)}`: each "
             "notebook's `metrics.json` (its headline rows, when they were written, the machine) and the runner's "
             "`wall_seconds.json`. Every number here has the command beside it that remakes it; the links "
             "point into the run folder, which that command writes.", "",
             f"{len(done)} of {len(names)} notebooks have results: {', '.join(done) or 'none'}.", ""]
    for name in names:
        lines += notebook_section(name, runs, page, scale, seconds)
    if weights is not None:
        lines += weights_section(Path(weights).resolve(), page)
    return "\n".join(lines).rstrip("\n") + "\n"


def write_report(runs: str | Path, page: str | Path | None = None, scale: str | None = None,
                 weights: str | Path | None = WEIGHTS) -> Path:
    """Write the results page of ``runs`` to ``page`` (default: ``RESULTS.md`` at the repository root)."""
    page = Path(page or RESULTS)
    text = render(runs, page, scale, weights)
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(text, encoding="utf-8")
    return page
