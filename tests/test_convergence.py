"""The convergence study (issue 40): levels, the stopping rule, verdicts, the results file, and a study made in
pieces — one tiny run of part A stopped at a level, paused mid-level at a deadline, and resumed — against the same
run made straight."""
from __future__ import annotations

import importlib.util
import json
import time

import pytest

from sbt_lib.files import REPO, write_json
from sbt_lib.workbook.pipeline import convergence as cv
from sbt_lib.workbook.report import convergence as rc
from sbt_lib.workbook.pipeline.runs import variant_run


# ----------------------------------------------------------------------------- pure parts

def test_levels_double_from_the_first_up_to_the_last():
    assert cv.levels(6_400, 409_600) == [6_400, 12_800, 25_600, 51_200, 102_400, 204_800, 409_600]
    assert cv.levels(6_400, 320_000)[-1] == 204_800  # never past max_images
    assert cv.levels(32, 32) == [32]
    with pytest.raises(ValueError, match="first_images"):
        cv.levels(6_400, 3_200)
    cpu = cv.SCALES["cpu"]
    assert cv.levels(cpu["first_images"], cpu["max_images"])[-1] >= cv.FLOOR_IMAGES  # the default reaches the floor
    assert cpu["first_images"] == 200 * 32 and cpu["eval_images"] >= 1000  # the notebooks' budget; ≥ 1000 images


def _curves(psnr: dict[str, list[float]], rfd: dict[str, list[float]], grid) -> dict:
    return {v: {lv: {"test_psnr_mean": p, "fd_effnet_mean": f} for lv, p, f in zip(grid, psnr[v], rfd[v])}
            for v in psnr}


def test_stopping_rule_on_synthetic_curves():
    grid = [100, 200, 400, 800, 1600]
    # the best variant (B) gains 1, 0.5, 0.2, 0.04 dB per doubling; its rFD 10%, 5%, 1.5%, 1%
    curves = _curves({"A": [19, 19.5, 19.7, 19.8, 19.81], "B": [20, 21, 21.5, 21.7, 21.74]},
                     {"A": [300, 280, 270, 265, 262], "B": [200, 180, 171, 168.4, 166.7]}, grid)
    rule = cv.stopping_rule(curves, grid, floor=10_000)
    assert rule["holds"] and rule["reason"] == "flattened" and rule["level"] == 1600
    row = rule["levels"][-1]
    assert row["best_psnr"] == "B" and row["psnr_gain"] == pytest.approx(0.04)
    assert row["best_rfd"] == "B" and row["rfd_gain"] == pytest.approx(1 - 166.7 / 168.4)
    assert not rule["levels"][3]["flattened"]  # 0.2 dB at 800: not flat, though the rFD gains 1.5%
    # PSNR flat but the rFD still improving by 5% per doubling: not flattened
    still = _curves({"B": [21, 21.01, 21.02]}, {"B": [200, 190, 180.5]}, grid[:3])
    assert not cv.stopping_rule(still, grid, floor=10_000)["holds"]
    # ... until the floor: the rule then holds, and says why
    floor = cv.stopping_rule(still, grid, floor=400)
    assert floor["holds"] and floor["reason"] == "floor" and floor["level"] == 400
    # a level that some variant lacks is not complete: no rule there
    partial = _curves({"A": [19, 19.01], "B": [20, 20.01]}, {"A": [300, 299], "B": [200, 199]}, grid[:2])
    del partial["A"][200]
    rule = cv.stopping_rule(partial, grid, floor=10_000)
    assert not rule["holds"] and rule["level"] == 100 and [r["level"] for r in rule["levels"]] == [100]


def test_the_runs_train_on_the_whole_split_at_the_notebooks_recipe():
    A = cv._study_params("02_bootstrapping", "cpu", "cifar10", 1000, 200, steps=cv.HORIZON_STEPS, min_lr_ratio=1.0)
    assert A.data.train_size is None and A.data.test_size == 1000 and A.training.ckpt_every == 200
    assert (A.training.batch_size, A.training.lr, A.objective.perceptual_weight) == (32, 2e-3, 0.0)  # notebook 02's
    assert A.training.lr_at(A.training.warmup) == A.training.lr_at(100_000) == A.training.lr  # constant after warm-up
    B = cv._study_params("base", "cpu", "cifar10", 1000, 100, steps=6400, adv_start=3200)
    assert B.data.train_size is None and B.training.ema == 0.999 and B.objective.adv_start == 3200
    assert B.objective.perceptual_weight > 0 and B.training.lr_at(6399) < B.training.lr / 10  # the base's cosine


# ----------------------------------------------------------------------------- results from a synthetic root

def _fake_study(root, values: dict[str, callable], seeds=(0, 1, 2), grid=(32, 64, 128), batch=16) -> dict:
    """A study root whose part A has a record per variant, seed and level: ``values[v](level, seed)`` gives
    (PSNR, rFD); collected as the study collects a real one."""
    parts = {"A": {"title": "A", "notebooks": ["02_bootstrapping"], "on_base": True, "anytime": True,
                   "batch_size": batch, "variants": list(values), "seeds": list(seeds), "switches": {},
                   "derived": {}, "claims": [list(c) for c in cv._claims("A")], "recipe": {}}}
    write_json(root / "study.json", {
        "scale": "tiny", "eval_images": 64, "first_images": grid[0], "max_images": grid[-1],
        "floor_images": cv.FLOOR_IMAGES, "rule": cv.RULE, "dataset": "shapes", "command": "python x",
        "commands": [], "machine": {"processor": "cpu", "cpu_threads": 2}, "root": str(root), "parts": parts,
        "anchors": {"PCA": {"values": 32, "test_psnr": 21.0, "fd_effnet": 50.0, "fd_hog": 1.0},
                    "base": {"values": 32, "test_psnr": 21.3, "fd_effnet": 40.0, "fd_hog": 0.9}}})
    for v, f in values.items():
        for seed in seeds:
            curve = []
            for i, lv in enumerate(grid):
                p, r = f(lv, seed)
                curve.append({"steps": lv // batch, "images": lv, "test_psnr": p, "test_ssim": 0.5, "fd_effnet": r,
                              "fd_hog": 1.0, "train_seconds": 10.0 * (i + 1), "eval_seconds": 1.0, "threads": 1,
                              "params": 1000})
            write_json(variant_run(root / "A", v, seed) / "curve.json", curve)
    return cv.collect(root)


def test_verdicts_read_each_claim_against_the_seed_spread_seed_by_seed(tmp_path):
    jitter = {0: -0.1, 1: 0.0, 2: 0.1}  # seed-to-seed spread 0.1 dB, the same for every variant (paired seeds)
    results = _fake_study(tmp_path, {
        "G": lambda lv, s: (20 + jitter[s], 100.0 + 10 * s),
        "G (param-matched)": lambda lv, s: (20.05 + jitter[s] + 0.01 * s, 99.0 + 10 * s),
        "G+L1+L2": lambda lv, s: (20.5 + jitter[s] + 0.01 * s, 100.0 + 10 * s - (1 if lv == 128 else 0)),
    })
    found = {(v["claim"], v["metric"]): v for v in rc.verdicts(results)}
    clear = found[("locals_vs_g", "test_psnr")]
    assert clear["level"] == 128 and clear["seeds"] == 3 and clear["call"] == "better"
    assert clear["paired_mean"] == pytest.approx(0.51) and clear["paired_agree"]
    assert "clearly better than G" in clear["line"] and "[A · 128 images · PSNR]" in clear["line"]
    within = found[("locals_vs_g", "fd_effnet")]  # 1 lower in rFD against a seed spread of 10: not clear
    assert within["call"] == "within" and within["paired_mean"] == pytest.approx(-1.0)
    assert within["spread"] == pytest.approx(10.0) and within["paired_std"] == pytest.approx(0.0)
    assert "within the seed-to-seed spread" in within["line"]
    assert not any(v["claim"] in ("local_repa", "l_ot") for v in found.values())  # variants this study lacks
    assert {c for c, _ in found} == {"locals_vs_g", "locals_vs_matched"}
    # only the claims asked for; and a part with a missing seed has no level with all seeds
    assert {v["claim"] for v in rc.verdicts(results, claims=["locals_vs_g"])} == {"locals_vs_g"}
    (tmp_path / "A" / "runs" / "G" / "seed2" / "curve.json").unlink()
    short = rc.verdicts(cv.collect(tmp_path), claims=["locals_vs_g"])
    assert short[0]["level"] is None and "no level yet" in short[0]["line"]
    # what a notebook adds to its metrics.json: only the claims read at a level, nothing without a study
    assert rc.verdict_lines(results, ["A"], ["locals_vs_g"]) == [found[("locals_vs_g", m)]["line"]
                                                               for m in ("test_psnr", "fd_effnet", "fd_hog")]
    assert rc.verdict_lines(cv.collect(tmp_path), ["A"], ["locals_vs_g"]) == []
    assert rc.verdict_lines(None, ["A"]) == []


def test_a_against_b_says_where_the_local_tokens_difference_comes_from(tmp_path):
    jitter = {0: -0.1, 1: 0.0, 2: 0.1}
    # A (fixed global tokens): G+L1+L2 within the spread of G; B (end to end): clearly better in PSNR
    results = _fake_study(tmp_path / "a", {"G": lambda lv, s: (20 + jitter[s], 100.0 + 10 * s),
                                           "G+L1+L2": lambda lv, s: (20.05 + jitter[s], 100.0 + 10 * s)})
    b = _fake_study(tmp_path / "b", {"G": lambda lv, s: (20 + jitter[s], 100.0 + 10 * s),
                                     "G+L1+L2": lambda lv, s: (21 + jitter[s], 100.0 + 10 * s)})
    results["parts"]["B"] = b["parts"]["A"]
    lines = rc.a_against_b(results)
    assert len(lines) == 2 and lines[0].startswith("- [A against B · PSNR] **G+L1+L2** vs **G**")
    assert "A (128 images) +0.05 dB, within the spread" in lines[0]
    assert "B (128 images) +1.00 dB, clearly better" in lines[0]
    assert "a gain only end to end" in lines[0]
    assert "neither help nor cost" in lines[1]  # the same rFD in both
    assert lines[0] in rc.verdict_lines(results, ["A", "B"])
    assert lines[0] in rc.report(results, ["A", "B"], scale="tiny")
    assert rc.a_against_b(results, claims=["l_ot"]) == [] and lines[0] not in rc.verdict_lines(results, ["A"])
    assert "Provisional" not in lines[0] and "so far" not in lines[0]  # both parts read where their curves flattened
    # a part whose curves still climb is read all the same, and said to be provisional
    _fake_study(tmp_path / "r", {"G": lambda lv, s: (18 + lv / 32 + jitter[s], 100.0 + 10 * s),
                 "G+L1+L2": lambda lv, s: (19 + lv / 32 + jitter[s], 100.0 + 10 * s)})
    for v in ("G", "G+L1+L2"):  # one seed short of the last level: the claim is read at 64 of 128 images
        curve = variant_run(tmp_path / "r" / "A", v, 2) / "curve.json"
        write_json(curve, json.loads(curve.read_text())[:2])
    results["parts"]["B"] = cv.collect(tmp_path / "r")["parts"]["A"]
    early = rc.a_against_b(results)
    assert "B (64 images) +1.00 dB" in early[0]
    assert "→ so far, a gain only end to end" in early[0]
    assert early[0].endswith("Provisional: B is read before the end of its curves (not flattened, below the last "
                             "level).")
    del results["parts"]["B"]
    assert rc.a_against_b(results) == []  # no B: nothing to read it against


def test_collect_says_how_far_each_part_is_and_what_it_cost(tmp_path):
    flat = {"G": lambda lv, s: (20 + 0.01 * s + (0.5 if lv >= 64 else 0) + (0.01 if lv >= 128 else 0), 100.0),
            "G+L1+L2": lambda lv, s: (20.2 + 0.01 * s + (0.2 if lv >= 64 else 0), 90.0 - (0.5 if lv >= 128 else 0))}
    results = _fake_study(tmp_path, flat)
    part = results["parts"]["A"]
    assert part["stopping"]["holds"] and part["stopping"]["reason"] == "flattened" and part["end_level"] == 128
    assert part["ended_by"] == "flattened" and part["finished"] and all(r["finished"] for r in part["runs"])
    assert part["cpu_hours"] == pytest.approx(6 * (30 + 3) / 3600)  # 6 runs: 30 s training, 3 evaluations of 1 s
    assert [e["level"] for e in part["curves"]["G"]] == [32, 64, 128]
    e = part["curves"]["G"][1]
    assert e["n"] == 3 and e["seeds"] == [0, 1, 2] and e["values"]["test_psnr"] == pytest.approx([20.5, 20.51, 20.52])
    assert e["test_psnr_min"] == pytest.approx(20.5) and e["test_psnr_max"] == pytest.approx(20.52)
    assert "flattened at 128 images" in rc.report(results, ["A"], scale="tiny")
    assert "no runs in the results yet" in rc.report(results, ["C"], scale="tiny")
    assert "No convergence study" in rc.report(None, ["A"], scale="tiny")
    fig = rc.figure(results, parts=["A"], path=tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 1000 and len(fig.axes) == 2
    hollow = lambda f: [ln for ln in f.axes[0].lines if ln.get_markerfacecolor() == "white"]
    assert not hollow(fig)  # every seed at every level
    part["curves"]["G"][-1]["n"] = 2  # a level one seed has not reached yet
    (line,) = hollow(rc.figure(results, parts=["A"]))
    assert list(line.get_xdata()) == [128]


# ----------------------------------------------------------------------------- bad input

def test_unknown_parts_variants_and_seeds_are_clear_errors_before_anything_loads(capsys):
    with pytest.raises(ValueError, match=r"unknown part\(s\) \['D'\].*\['A', 'B', 'C'\]"):
        cv.select("tiny", ["A", "D"])
    with pytest.raises(ValueError, match=r"unknown variant\(s\) \['G\+L9'\].*A: \['G', 'G \(param-matched\)'"):
        cv.select("tiny", ["A"], ["G", "G+L9"])
    with pytest.raises(ValueError, match="seeds"):
        cv.select("tiny", ["A"], seeds=[0, 0])
    assert cv.select("tiny", ["A", "B"], ["G+L1+L2"], [3]) == {"A": (["G+L1+L2"], [3]), "B": (["G+L1+L2"], [3])}
    assert cv.select("tiny", ["B", "C"], ["two-stage xs"]) == {"C": (["two-stage xs"], [0, 1, 2])}
    assert cv.select("cpu", ["C"])["C"][0] == ["two-stage xs", "two-stage xl", "xs at the FLOPs of xl"]
    with pytest.raises(ValueError, match="unknown scale"):
        cv.run_study("huge")
    spec = importlib.util.spec_from_file_location("convergence_cli", REPO / "benchmarks" / "convergence.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    assert cli.main(["--scale", "tiny", "--part", "D"]) == 2
    assert "unknown part" in capsys.readouterr().err
    assert cli.main(["--scale", "tiny", "--variants", "G+L9"]) == 2
    assert "unknown variant" in capsys.readouterr().err


# ----------------------------------------------------------------------------- a tiny study, straight and in pieces

STUDY = dict(scale="tiny", parts=["A"], variants=["G+L1+L2"], seeds=[0], max_images=64, eval_images=32, workers=1)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Part A's full model, one seed, levels 32 and 64 images at tiny: straight, and in pieces — to the first level
    (``until_images``), a call stopped at once (``minutes=0``), one paused a step into the second level (its deadline
    already past, as at a chunk's end), and the call that finishes it."""
    from sbt_lib.workbook.pipeline import convergence

    tmp = tmp_path_factory.mktemp("convergence")
    straight = cv.run_study(**STUDY, root=tmp / "straight", out=tmp / "straight", command_line="straight")
    root, out = tmp / "pieces", tmp / "out"
    first = cv.run_study(**STUDY, root=root, out=out, until_images=32)
    folder = variant_run(root / "A", "G+L1+L2", 0)
    curve_first = cv.read_curve(folder)
    stamp = (folder / "curve.json").stat().st_mtime_ns
    at_once = cv.run_study(**STUDY, root=root, out=out, minutes=0)
    unchanged = (folder / "curve.json").stat().st_mtime_ns == stamp

    real = convergence._train

    def past_deadline(run, until, *shared):
        run.deadline = time.time()  # already past: the engine pauses after one step, with a checkpoint
        return real(run, until, *shared)

    convergence._train = past_deadline
    try:
        paused = cv.run_study(**STUDY, root=root, out=out)
    finally:
        convergence._train = real
    paused_step = json.loads((folder / "checkpoint.json").read_text())["step"]
    last = cv.run_study(**STUDY, root=root, out=out, command_line="last")
    return dict(straight=straight, first=first, at_once=at_once, unchanged=unchanged, paused=paused,
                paused_step=paused_step, last=last, curve_first=curve_first, folder=folder, out=out)


def test_a_study_made_in_pieces_is_the_study_made_straight(made):
    runs = made["first"]["parts"]["A"]["runs"]
    assert [r["images"] for r in runs[0]["curve"]] == [32] and not made["first"]["paused"]
    assert made["at_once"]["paused"] and made["unchanged"]  # minutes=0: nothing trained, nothing rewritten
    assert made["paused"]["paused"] and made["paused_step"] == 3  # one step past the first level (2 steps of 16)
    assert [r["images"] for r in made["paused"]["parts"]["A"]["runs"][0]["curve"]] == [32]
    last = made["last"]["parts"]["A"]["runs"][0]
    assert not made["last"]["paused"] and last["finished"] and last["steps"] == 4
    assert last["curve"][0] == made["curve_first"][0]  # the first level was not trained or evaluated again
    straight = made["straight"]["parts"]["A"]["runs"][0]["curve"]
    for piece, whole in zip(last["curve"], straight):  # resumed exactly: the same numbers as the straight run
        for key in ("test_psnr", "test_ssim", "fd_effnet", "fd_hog", "swap_drop"):
            assert piece[key] == whole[key], key


def test_the_results_file_and_the_figure(made):
    path = rc.results_file("tiny", made["out"])
    saved = json.loads(path.read_text())
    assert path.with_suffix(".png").stat().st_size > 1000
    assert saved["command"] == "last" and [c["command"] for c in saved["commands"]][-1] == "last"
    assert {"processor", "cpu_threads", "torch"} <= set(saved["machine"]) and saved["levels"] == [32, 64]
    assert set(saved["anchors"]) == {"PCA", "base"} and saved["anchors"]["PCA"]["values"] == 32
    assert {"test_psnr", "fd_effnet", "fd_hog"} <= set(saved["anchors"]["base"])
    part = saved["parts"]["A"]
    assert part["variants"] == ["G+L1+L2"] and part["seeds"] == [0] and part["finished"]
    assert part["images_per_s"] > 0 and part["cpu_hours"] > 0 and part["threads_per_run"]
    assert part["recipe"]["min_lr_ratio"] == 1.0 and part["recipe"]["train_size"] is None  # the whole split
    assert part["ended_by"] in ("flattened", "max_images") and part["end_level"] in (32, 64)
    record = part["runs"][0]["curve"][-1]
    assert {"steps", "images", "test_psnr", "test_ssim", "fd_effnet", "fd_hog", "swap_drop", "train_seconds",
            "eval_seconds", "threads", "params", "test_images"} <= set(record)
    assert record["test_images"] == 32
    entry = part["curves"]["G+L1+L2"][-1]
    assert {"level", "images", "seeds", "n", "test_psnr_mean", "test_psnr_std", "test_psnr_min", "test_psnr_max",
            "fd_effnet_mean", "fd_hog_mean", "values"} <= set(entry)
    assert {"holds", "reason", "level", "levels"} <= set(part["stopping"])
    assert saved == json.loads(json.dumps(saved))  # plain JSON


def test_a_lost_root_is_restored_from_the_results_file_and_nothing_evaluated_is_redone(made, tmp_path):
    """A new machine has the committed results but not the run folders: the study rebuilds its root from them, keeps
    every evaluation, and retrains a run only to evaluate the levels it lacks (the same numbers: CPU runs are exact)."""
    saved = json.loads(rc.results_file("tiny", made["out"]).read_text())
    cv.restore(tmp_path / "whole", rc.results_file("tiny", made["out"]))
    assert cv.collect(tmp_path / "whole")["parts"] == saved["parts"]

    cut = json.loads(json.dumps(saved))  # the results as a chunk that reached only the first level left them
    run = cut["parts"]["A"]["runs"][0]
    run["curve"], run["steps"] = run["curve"][:1], 2
    (tmp_path / "out").mkdir()
    rc.results_file("tiny", tmp_path / "out").write_text(json.dumps(cut))
    again = cv.run_study(**STUDY, root=tmp_path / "root", out=tmp_path / "out")
    curve = again["parts"]["A"]["runs"][0]["curve"]
    assert curve[0] == saved["parts"]["A"]["runs"][0]["curve"][0]  # kept as recorded, with its time and seconds
    assert [r["images"] for r in curve] == [32, 64] and again["parts"]["A"]["runs"][0]["finished"]
    for key in ("test_psnr", "fd_effnet", "fd_hog", "swap_drop"):
        assert curve[1][key] == saved["parts"]["A"]["runs"][0]["curve"][1][key], key
