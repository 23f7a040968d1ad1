"""The results page: ``python -m sbt_lib report RUNS`` writes RESULTS.md from the run folders' metrics.json."""
import json
import os
import re
from pathlib import Path

import pytest

from sbt_lib.__main__ import main
from sbt_lib.workbook.cli import runner as rp
from sbt_lib.workbook.pipeline.runs import headline, write_metrics
from sbt_lib.workbook.report import results_page

NAMES = [p.stem for p in rp.notebooks()]
FIRST, SECOND = NAMES[:2]
MACHINE = {"platform": "Linux-x86_64", "processor": "Test CPU", "cpu_threads": 2, "torch": "2.0", "cuda": None}


def fake_run(root: Path, name: str, value, written_at="2026-01-02 03:04:05", machine=MACHINE, figures=("b", "a")):
    """A notebook's run folder as the notebook leaves it: metrics.json with headline rows, a figure or two."""
    run = root / name
    run.mkdir(parents=True)
    write_metrics(run, {"dataset": "cifar10", "test_psnr": value, "kid_effnet_std": 0.1, "runs": [1, 2]},
                  headlines=[headline("held-out PSNR (dB)", value, "PCA 26.45", "3 seeds"),
                             headline("a | in a label", "1 ± 0.1")],
                  verdicts=[f"- **G+L1+L2** vs G: +{value} dB (spread 0.1):\n  larger than the spread"])
    metrics = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps({**metrics, "written_at": written_at, "machine": machine}))
    for fig in figures:
        (run / f"{fig}.png").write_bytes(b"\x89PNG")
    return run


@pytest.fixture
def runs(tmp_path):
    """A cpu run folder holding the first two notebooks' results (the second timed by the runner)."""
    root = tmp_path / "runs" / "cpu"
    fake_run(root, FIRST, 1.5)
    fake_run(root, SECOND, 2.5, machine=None)
    (root / f"{FIRST}.ipynb").write_text("{}")
    (root / "wall_seconds.json").write_text(json.dumps({SECOND: 612.4}))
    return root


def test_the_page_shows_each_notebooks_headlines_command_date_machine_and_time(runs, tmp_path):
    page = results_page.write_report(runs, tmp_path / "RESULTS.md").read_text()
    assert page.startswith("# SelfBootTok workbook — results at scale `cpu`")
    first = page[page.index(f"## {FIRST}"):page.index(f"## {SECOND}")]
    assert "| held-out PSNR (dB) | 1.5 | PCA 26.45 | 3 seeds |" in first
    assert "| a \\| in a label | 1 ± 0.1 | – | – |" in first  # a pipe in a cell does not split it
    assert f'`make reproduce ARGS="--only {FIRST[:2]} --out ' in first  # not runs/cpu of the repository
    assert "written: 2026-01-02 03:04:05; wall time: not recorded" in first
    assert "machine: Test CPU (2 threads), no GPU, Linux-x86_64, torch 2.0" in first
    second = page[page.index(f"## {SECOND}"):]
    assert "| held-out PSNR (dB) | 2.5 |" in second
    assert "wall time: 612 s (10.2 min)" in second and "machine: not recorded" in second
    assert "kid_effnet_std" not in page and "[1, 2]" not in page  # headlines only


def test_each_notebooks_verdicts_are_listed_one_per_line_under_its_table(runs, tmp_path):
    page = results_page.write_report(runs, tmp_path / "RESULTS.md").read_text()
    first = page[page.index(f"## {FIRST}"):page.index(f"## {SECOND}")]
    assert "Verdicts:\n\n- **G+L1+L2** vs G: +1.5 dB (spread 0.1): larger than the spread\n" in first
    assert first.index("| held-out PSNR (dB)") < first.index("Verdicts:") < first.index("Figures:")
    assert "+2.5 dB" in page[page.index(f"## {SECOND}"):] and "+2.5 dB" not in first


def test_links_are_relative_to_the_page_and_figures_sorted(runs, tmp_path):
    page = results_page.write_report(runs, tmp_path / "RESULTS.md").read_text()
    assert f"[a](runs/cpu/{FIRST}/a.png) · [b](runs/cpu/{FIRST}/b.png)" in page
    assert f"[`metrics.json`](runs/cpu/{FIRST}/metrics.json)" in page
    assert f"[executed notebook](runs/cpu/{FIRST}.ipynb)" in page and f"({SECOND}.ipynb)" not in page
    deeper = results_page.write_report(runs, tmp_path / "docs" / "results.md").read_text()
    assert f"[a](../runs/cpu/{FIRST}/a.png)" in deeper
    summary = results_page.write_report(runs, runs / "summary.md").read_text()  # the runner's page, inside the folder
    assert f"[a]({FIRST}/a.png)" in summary
    for target in re.findall(r"\]\(([^)]+)\)", page):
        assert (tmp_path / target).exists(), target


def test_a_rerun_on_the_same_folders_is_byte_identical(runs, tmp_path, monkeypatch):
    first = results_page.write_report(runs, tmp_path / "RESULTS.md").read_bytes()
    monkeypatch.setattr("time.time", lambda: 4e9)  # a later clock changes nothing
    for png in sorted(runs.rglob("*.png"), reverse=True):
        os.utime(png, (1, 1))
    assert results_page.write_report(runs, tmp_path / "RESULTS.md").read_bytes() == first


def test_notebooks_without_results_are_listed_as_not_run_with_their_command(runs, tmp_path):
    page = results_page.write_report(runs, tmp_path / "RESULTS.md").read_text()
    assert f"2 of {len(NAMES)} notebooks have results: {FIRST}, {SECOND}." in page
    for name in NAMES[2:]:
        section = page.split(f"## {name}\n")[1].split("\n## ")[0]
        assert f'**Not run.** Command: `make reproduce ARGS="--only {name[:2]} --out ' in section, name
        assert "| result |" not in section
    headings = [line[3:] for line in page.splitlines() if line.startswith("## ")]
    assert [h for h in headings if h != "Shipped weights"] == NAMES  # in order, all listed


def test_the_command_for_the_default_folder_and_other_scales():
    repo_runs = results_page.REPO / "runs"
    assert results_page.remake_command("05_generation", "cpu", (repo_runs / "cpu").resolve()) == \
        'make reproduce ARGS="--only 05"'
    assert results_page.remake_command("05_generation", "gpu", (repo_runs / "gpu").resolve()) == \
        'make reproduce SCALE=gpu ARGS="--only 05"'


def test_the_scale_comes_from_the_folder_name_or_the_metrics(tmp_path):
    fake_run(tmp_path / "mine", FIRST, 1.0)
    with pytest.raises(ValueError, match="--scale"):
        results_page.render(tmp_path / "mine", tmp_path / "RESULTS.md")
    assert "scale `tiny`" in results_page.render(tmp_path / "mine", tmp_path / "RESULTS.md", scale="tiny")
    metrics = json.loads((tmp_path / "mine" / FIRST / "metrics.json").read_text())
    (tmp_path / "mine" / FIRST / "metrics.json").write_text(json.dumps({**metrics, "scale": "gpu"}))
    assert results_page.infer_scale(tmp_path / "mine") == "gpu"


def test_the_command_line_writes_the_page_and_names_a_missing_folder(runs, tmp_path, capsys):
    assert main(["report", str(runs), "--out", str(tmp_path / "R.md")]) == 0
    assert (tmp_path / "R.md").read_text() == results_page.render(runs, tmp_path / "R.md")
    assert main(["report", str(tmp_path / "nowhere"), "--out", str(tmp_path / "R2.md")]) == 1
    err = capsys.readouterr().err
    assert "no run folder" in err and "nowhere" in err and "make reproduce" in err
    assert not (tmp_path / "R2.md").exists()


def test_write_metrics_records_the_date_and_the_machine(tmp_path):
    m = json.loads(write_metrics(tmp_path, {"x": 1}, [headline("x", 1)]).read_text())
    assert len(m["written_at"]) == len("2026-01-02 03:04:05")
    assert {"platform", "processor", "cpu_threads", "torch", "cuda"} <= set(m["machine"])
    assert results_page.format_machine(m["machine"]) != results_page.NOT_RECORDED


def test_the_shipped_weights_are_listed_from_their_training_records(runs, tmp_path):
    weights = tmp_path / "weights"
    for name, seconds in (("generator-x", 2583.9), ("base-x", 6286.7)):
        (weights / name).mkdir(parents=True)
        (weights / name / "training.json").write_text(json.dumps(
            {"command": f"python -m sbt_lib train {name}", "steps": 8000, "batch_size": 128,
             "training_seconds": seconds, "machine": MACHINE}))
    (weights / "base-x" / "README.md").write_text("card")
    page = results_page.render(runs, tmp_path / "RESULTS.md", weights=weights)
    rows = page[page.index("## Shipped weights"):].splitlines()
    base, generator = [r for r in rows if r.startswith("| [")]
    assert base.startswith(f"| [`{weights.as_posix()}/base-x`](weights/base-x/README.md) | `python -m sbt_lib "
                           "train base-x` | 8,000 × 128 | 6287 s (104.8 min) | Test CPU (2 threads)")
    assert "(weights/generator-x/training.json)" in generator and "2584 s (43.1 min)" in generator
    assert generator.endswith("| not recorded |")  # no quality in its record
    assert "## Shipped weights" not in results_page.render(runs, tmp_path / "RESULTS.md", weights=None)
    record = json.loads((weights / "generator-x" / "training.json").read_text())
    record["cycles"] = [{"steps": 5000, "seconds": 1800.0}, {"steps": 3000, "seconds": 783.9}]
    (weights / "generator-x" / "training.json").write_text(json.dumps(record))
    page = results_page.render(runs, tmp_path / "RESULTS.md", weights=weights)
    assert "| 5,000 + 3,000 × 128 | 1800 s (30.0 min) + 784 s (13.1 min) |" in page  # each cycle's steps and time


def test_the_shipped_weights_measured_column_reads_each_kind_of_record():
    base = {"test": {"test_psnr": 21.29, "fd_effnet": 133.94, "test_images": 2000},
            "anchors": {"PCA": {"values": 64, "psnr": 21.42, "fd_effnet": 286.78}}}
    assert results_page.measured(base) == ("PSNR 21.29 dB, rFD-EffNet 133.9 (PCA at 64 values: 21.42 dB, 286.8); "
                                           "2000 test images")
    rows = {"SiT": {"gfd_mean": 170.04, "gfd_std": 0.91, "kid_mean": 0.1, "kid_std": 0.002},
            "Gaussian": {"gfd_mean": 200.0, "gfd_std": 0.83, "kid_mean": 0.125, "kid_std": 0.001},
            "base decodes of them (ceiling)": {"gfd_mean": 137.97, "gfd_std": 0.0, "kid_mean": 0.09, "kid_std": 0.0}}
    generator = {"quality": {"label": "gFD-EffNet@2000", "seeds": [0, 1, 2], "rows": rows}}
    at_2000 = ("gFD-EffNet@2000 170.0 ± 0.9, KID 0.1000 ± 0.0020 over 3 seeds (Gaussian anchor 200.0 ± 0.8, "
               "KID 0.1250 ± 0.0010: 15.0% and 20.0% below; ceiling 138.0)")
    assert results_page.measured(generator) == at_2000
    generator["quality_large"] = {"label": "gFD-EffNet@10000", "seeds": [0], "rows": rows}
    assert results_page.measured(generator) == at_2000 + "; " + at_2000.replace("@2000", "@10000").replace(
        "over 3 seeds", "over 1 seeds")
    generator["quality_large"] = None  # a record without it
    assert results_page.measured(generator) == at_2000
    assert results_page.measured({}) == results_page.NOT_RECORDED
