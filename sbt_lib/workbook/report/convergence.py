"""Reading the convergence study's results (``benchmarks/convergence_<scale>.json``): each claim's verdict at the end
of its curves, read against the seed spread and seed by seed; a notebook's report of a part (its progress, its
verdicts, the command that remakes or resumes it); and the figure of PSNR and rFD against images seen.

The study itself — its parts, runs, stopping rule and the file it writes — is
:mod:`sbt_lib.workbook.pipeline.convergence`; this module reads that file only.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ...files import REPO
from .seed_stats import FEATURE_KEYS, FEATURE_LABELS, comparison, verdict

PARTS = ("A", "B", "C")
# metric → (label, unit, lower is better)
LABELS = {"test_psnr": ("PSNR", "dB", False), **{k: (FEATURE_LABELS[k], "", True) for k in FEATURE_KEYS},
          "fd_hog": ("FD-HOG", "", True)}


def results_file(scale: str = "cpu", folder: str | Path | None = None) -> Path:
    """Where the results of the study at ``scale`` are written (``benchmarks/convergence_<scale>.json``)."""
    return Path(folder or REPO / "benchmarks") / f"convergence_{scale}.json"


def default_root(scale: str) -> Path:
    """The run folders' default root: ``$SBT_RUNS/convergence-<scale>`` where ``SBT_RUNS`` is set, else
    ``<repo>/runs/convergence-<scale>``.  A study made over sessions in several work trees should name a root
    outside them (``--root``), so that each chunk finds the runs of the last."""
    runs = os.environ.get("SBT_RUNS")
    return (Path(runs) if runs else REPO / "runs") / f"convergence-{scale}"


def command(scale: str = "cpu", minutes: int = 85, root: str | None = None, parts=PARTS) -> str:
    """The command that makes (or resumes) the study, one chunk of ``minutes``."""
    where = f" --root {root}" if root else ""
    return (f"python benchmarks/convergence.py --scale {scale} --part {' '.join(parts)}{where} --minutes {minutes}"
            "   # the same command resumes; SBT_DATA=../shared/data where CIFAR-10 is")


def load_results(scale: str = "cpu", folder: str | Path | None = None) -> dict | None:
    """The committed results at ``scale`` (``benchmarks/convergence_<scale>.json``), or None where there are none."""
    path = results_file(scale, folder)
    return json.loads(path.read_text()) if path.exists() else None


def has_curves(results: dict | None, parts) -> bool:
    """Whether ``results`` hold any evaluated run of one of ``parts``."""
    return bool(results) and any(c for p in parts for c in results["parts"].get(p, {}).get("curves", {}).values())


def feature_key(results: dict) -> str | None:
    """Which rFID-style distance the results hold (``fid`` where Inception resolved, else ``fd_effnet``)."""
    entries = [e for p in results["parts"].values() for c in p["curves"].values() for e in c]
    return next((k for k in FEATURE_KEYS if any(f"{k}_mean" in e for e in entries)), None)


def verdicts(results: dict, parts=None, claims=None) -> list[dict]:
    """Each claim of ``parts`` (all; ``claims``: only those ids) read at the end of its curves — the last level at
    which both variants have every seed of the part — in PSNR, the rFD and FD-HOG, against the seed spread and seed
    by seed (:func:`~sbt_lib.workbook.report.seed_stats.comparison`,
    :func:`~sbt_lib.workbook.report.seed_stats.verdict`).  One dict per claim and metric: ``part``, ``claim``,
    ``what``, ``a``, ``b``, ``metric``, ``level``, ``seeds``, the comparison's numbers, and ``line`` (markdown); a claim
    with no such level yet has ``level`` None."""
    fd = feature_key(results)
    out = []
    for name in parts or list(results["parts"]):
        part = results["parts"].get(name)
        if part is None:
            continue
        for cid, a, b, what in part["claims"]:
            if (claims and cid not in claims) or a not in part["curves"] or b not in part["curves"]:
                continue
            ca, cb = ({e["level"]: e for e in part["curves"][v]} for v in (a, b))
            n = len(part["seeds"])
            common = [lv for lv in ca if lv in cb and ca[lv]["n"] == cb[lv]["n"] == n]
            head = {"part": name, "claim": cid, "what": what, "a": a, "b": b}
            if not common:
                out.append({**head, "metric": None, "level": None, "seeds": 0,
                            "line": f"- [{name}] **{a}** vs **{b}**: no level yet at which both have all {n} seeds."})
                continue
            level = max(common)
            summary = {a: ca[level], b: cb[level]}
            for metric in [m for m in ("test_psnr", fd, "fd_hog") if m and f"{m}_mean" in ca[level]]:
                label, unit, lower = LABELS[metric]
                line = verdict(summary, a, b, metric, unit, lower).removeprefix("- ")
                line = line.replace("  (", " (").replace(" ;", ";").replace(" )", ")")
                if n == 1:
                    line += " One seed: no spread to read it against."
                out.append({**head, "metric": metric, "level": level, "seeds": n,
                            **comparison(summary, a, b, metric, lower),
                            "line": f"- [{name} · {level:,} images · {label}] {line}"})
    return out


def verdict_lines(results: dict | None, parts, claims=None) -> list[str]:
    """The markdown lines of :func:`verdicts` that read a claim at a level (none where there are no results), and,
    where ``parts`` hold A and B, :func:`a_against_b`'s: what a notebook adds to its own verdicts in
    ``metrics.json``, so that the results page shows the study beside them."""
    if results is None:
        return []
    lines = [v["line"] for v in verdicts(results, parts, claims) if v["level"] is not None]
    return lines + (a_against_b(results, claims) if {"A", "B"} <= set(parts) else [])


# What a claim's reading in A (global tokens fixed) against its reading in B (trained end to end) says about where
# the difference comes from, by (A's call, B's call); a call is "better", "worse" or "within" the seed spread.
_SOURCE = {
    ("better", "better"): "a gain in both: the decoder uses what the local tokens add, whatever the encoder does",
    ("worse", "worse"): ("a cost in both: at this scale the local tokens do not pay for themselves, whatever "
                         "the encoder does"),
    ("within", "within"): "the local tokens neither help nor cost beyond the seed spread, in either setting",
    ("worse", "within"): "a cost of the local tokens on fixed global tokens that end-to-end training removes",
    ("within", "worse"): ("a cost of the local tokens only end to end: training the encoder beside them costs what the "
                          "global tokens carry"),
}


def _source(call_a: str, call_b: str) -> str:
    if (call_a, call_b) in _SOURCE:
        return _SOURCE[call_a, call_b]
    if call_b == "better":  # and not in A
        return ("a gain only end to end: it comes with the encoder trained beside the local tokens, not from the "
                "decoder reading them on fixed global tokens")
    return ("a gain of the local tokens on fixed global tokens that end-to-end training does not keep: an encoder "
            "trained beside them puts into the global tokens what they add")


def a_against_b(results: dict, claims=None, claim: str = "locals_vs_g") -> list[str]:
    """One line per metric (PSNR, the rFD) reading ``claim`` in part A (decoder sides on the frozen base: the global
    tokens fixed) against part B (whole tokenizers end to end: the encoder trains beside the local parts), each at
    the end of its curves against its seed spread, and what the pair of calls says about where the local tokens'
    gain or cost comes from; none where ``claims`` leaves ``claim`` out or either part has no level read yet."""
    if claims is not None and claim not in claims:
        return []
    read = {(v["part"], v["metric"]): v for v in verdicts(results, ["A", "B"], [claim]) if v["level"] is not None}
    out = []
    for metric in ("test_psnr", feature_key(results)):
        a, b = read.get(("A", metric)), read.get(("B", metric))
        if a is None or b is None:
            continue
        label, unit, _ = LABELS[metric]

        def said(v, where):
            return (f"{where} ({v['level']:,} images) {v['difference']:+.2f}{' ' + unit if unit else ''}, "
                    + ("within the spread" if v["call"] == "within" else f"clearly {v['call']}"))

        running = [v["part"] for v in (a, b) if not _at_the_end(results["parts"][v["part"]], v["level"])]
        one = len(running) == 1
        caveat = (f" Provisional: {' and '.join(running)} {'is' if one else 'are'} read before the end of "
                  f"{'its' if one else 'their'} curves (not flattened, below the last level)." if running else "")
        out.append(f"- [A against B · {label}] **{a['a']}** vs **{a['b']}**: {said(a, 'fixed global tokens, A')}; "
                   f"{said(b, 'end to end, B')} → {'so far, ' * bool(running)}{_source(a['call'], b['call'])}."
                   + caveat)
    return out


def _at_the_end(part: dict, level: int) -> bool:
    """Whether ``level`` is the end of the part's curves: its last level, or at or past where its stopping rule
    holds (the curves flattened, or the floor)."""
    rule = part["stopping"]
    return level >= part["end_level"] or (rule["holds"] and level >= rule["level"])


def _status(part: dict) -> str:
    """One line on a part's progress: levels, the stopping rule and which way it ended, speed and CPU hours."""
    rule, ended = part["stopping"], part["ended_by"]
    last = rule["levels"][-1] if rule["levels"] else None

    def gains(row) -> str:
        if not row or row["psnr_gain"] is None:
            return ""
        rfd = f", best rFD {row['best_rfd']} {100 * row['rfd_gain']:+.1f}%" if row["rfd_gain"] is not None else ""
        return f" (best PSNR {row['best_psnr']} {row['psnr_gain']:+.3f} dB{rfd} over the doubling before)"

    held = next((r for r in rule["levels"] if r["level"] == rule["level"]), None) if rule["holds"] else None
    if ended == "flattened":
        state = f"ended: flattened at {rule['level']:,} images{gains(held)}"
    elif ended in ("floor", "max_images"):
        state = (f"ended at {part['end_level']:,} images ("
                 + ("≥ the 320,000 floor" if ended == "floor" else "--max-images, below the 320,000 floor")
                 + (f"; flattened from {rule['level']:,}" if rule["reason"] == "flattened" else ", not flattened")
                 + f"){gains(last)}")
    elif rule["reason"] == "flattened":
        state = f"flattened at {rule['level']:,} images{gains(held)}; runs its schedule to the end"
    elif last:
        state = f"running: last level with every seed {last['level']:,} images{gains(last)}"
    else:
        state = "running: no level yet with every seed"
    finished = sum(r["finished"] for r in part["runs"])
    speed = f"{part['images_per_s']:.0f} images/s per run" if part["images_per_s"] else "no training timed yet"
    n, threads = len(part["seeds"]), "/".join(map(str, part["threads_per_run"])) or "?"
    return (f"**{part['title']}** — {len(part['variants'])} variants × {n} seed{'s' * (n != 1)}; stopping rule: "
            f"{state}. {finished} of {len(part['runs'])} runs finished; {speed} "
            f"({threads} thread{'s' * (threads != '1')} each), "
            f"{part['cpu_hours']:.1f} CPU hours so far.")


def report(results: dict | None, parts, claims=None, scale: str = "cpu") -> str:
    """Markdown for a notebook: per part of ``parts``, its status and the verdicts of its claims (``claims``: only
    those ids), and the command that made the results and the one that remakes or resumes them; where there are no
    results, or none for a part, it says so."""
    remake = command(scale, parts=PARTS)
    if results is None:
        return (f"No convergence study in `{results_file(scale).relative_to(REPO)}` yet. It is made once, in chunks "
                f"of at most ~90 minutes (the same command resumes):\n\n    {remake}")
    lines = []
    for name in parts:
        part = results["parts"].get(name)
        if part is None or not any(part["curves"].values()):
            lines.append(f"- Part {name}: no runs in the results yet.")
            continue
        lines += [_status(part), ""] + [v["line"] for v in verdicts(results, [name], claims)] + [""]
    if {"A", "B"} <= set(parts) and (found := a_against_b(results, claims)):
        lines += ["**Where the local tokens' difference comes from** (A's global tokens are fixed; B's encoder trains "
                  "beside the local parts):", "", *found, ""]
    root = results.get("root")
    kept = (f" Its run folders were kept in `{root}`: where they still are, `--root {root}` resumes the study "
            "instead of starting it again." if root and Path(root).resolve() != default_root(scale).resolve() else "")
    lines.append(f"Made by `{results['command']}` on {results['machine'].get('processor')} "
                 f"({results['machine'].get('cpu_threads')} threads).{kept} To remake or resume:\n\n    {remake}")
    return "\n".join(lines)


def figure(results: dict, parts=None, variants=None, path=None):
    """PSNR and the rFD against images seen (log axis), one row per part of ``parts`` (default: all with curves),
    one line per variant (``variants``: only those) — the mean over seeds, the band from the lowest to the highest
    seed, hollow points where fewer seeds than the part's have reached the level — with PCA at the base's number of
    values and the base itself as horizontal lines."""
    import matplotlib.pyplot as plt

    from .viz import count_label, save_figure

    fd = feature_key(results)
    metrics = [("test_psnr", "held-out PSNR (dB)")] + ([(fd, f"{LABELS[fd][0]} ↓")] if fd else [])
    names = [p for p in (parts or list(results["parts"]))
             if p in results["parts"] and any(results["parts"][p]["curves"].values())]
    if not names:
        raise ValueError(f"the results have no curves of the parts {list(parts or results['parts'])}")
    fig, axes = plt.subplots(len(names), len(metrics), figsize=(5.6 * len(metrics), 3.9 * len(names)), squeeze=False)
    for row, name in zip(axes, names):
        part = results["parts"][name]
        shown = [v for v in part["variants"] if (variants is None or v in variants) and part["curves"].get(v)]
        for ax, (metric, label) in zip(row, metrics):
            for i, v in enumerate(shown):
                curve = [e for e in part["curves"][v] if f"{metric}_mean" in e]
                x = [e["level"] for e in curve]
                y = [e[f"{metric}_mean"] for e in curve]
                ax.plot(x, y, marker="o", ms=3, color=f"C{i}",
                        label=f"{v}" + (f" ({part['derived'][v][1]:.2f}× the images)" if v in part["derived"] else ""))
                few = [(a, b) for a, b, e in zip(x, y, curve) if e["n"] < len(part["seeds"])]
                if few:  # levels that not every seed has reached yet: hollow
                    ax.plot(*zip(*few), ls="none", marker="o", ms=5, mfc="white", color=f"C{i}")
                ax.fill_between(x, [e[f"{metric}_min"] for e in curve], [e[f"{metric}_max"] for e in curve],
                                color=f"C{i}", alpha=0.2, lw=0)
            for j, (anchor, style) in enumerate((("PCA", "--"), ("base", ":"))):
                a = results["anchors"][anchor]
                if metric in a:
                    what = f"PCA, {a['values']} values" if anchor == "PCA" else "the base (trained for hours)"
                    ax.axhline(a[metric], ls=style, color="gray" if anchor == "PCA" else "black", label=what)
            ax.set_xscale("log", base=2)
            ticks = [lv for lv in results["levels"]]
            ax.set_xticks(ticks, [count_label(t) for t in ticks])
            ax.xaxis.set_minor_formatter(plt.NullFormatter())
            ax.set(xlabel="images seen (log)", ylabel=label)
            ax.grid(alpha=0.3)
        end = count_label(part["end_level"])
        state = {"flattened": f"flattened at {end}", "floor": f"floor at {end}",
                 "max_images": f"ended at {end}"}.get(part["ended_by"], "running")
        row[0].set_title(f"{part['title']} — {state}", loc="left", fontsize=10)
        row[0].legend(fontsize=7)
    fig.suptitle(f"convergence, {results['dataset']}, {results['eval_images']} test images: mean over seeds, band "
                 "min–max; hollow points: not every seed there yet", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
