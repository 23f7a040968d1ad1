"""The workbook end to end: scales, the reproduce runner, and every notebook headless at ``tiny``."""
import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from papermill.iorw import load_notebook_node
from papermill.parameterize import parameterize_notebook

from sbt_lib.__main__ import main
from sbt_lib.models.tokenizer_config import TokenizerConfig
from sbt_lib.objective.objective import ObjectiveConfig
from sbt_lib.train import TrainConfig
from sbt_lib.workbook.cli import runner as rp
from sbt_lib.workbook.config.params import FLAT_NAMES, RUN_NAMES, notebook_params, resolve
from sbt_lib.workbook.config.scales import NOTEBOOKS

REPO = Path(__file__).resolve().parents[1]


def test_resolve_overrides_one_value_and_rejects_unknown_names():
    p = resolve("01_decomposition", "cpu", STEPS=7, width=None)
    assert p.training.steps == 7 and p.tokenizer.width == NOTEBOOKS["01_decomposition"]["cpu"]["width"]
    with pytest.raises(TypeError, match="valid: .*steps"):
        resolve("01_decomposition", "cpu", stepz=3)
    with pytest.raises(ValueError, match="valid"):
        resolve("01_decomposition", "huge")


def test_parameters_are_typed_sections_with_prefixed_names_for_side_models():
    p = resolve("03_ot_alignment", "tiny", vae_steps=5, steps=9, ot_weight=0.3)
    assert isinstance(p.tokenizer, TokenizerConfig) and isinstance(p.training, TrainConfig)
    assert isinstance(p.objective, ObjectiveConfig)
    assert (p.vae.steps, p.training.steps, p.objective.ot_weight) == (5, 9, 0.3)
    q = p.replace(local_2d="s", seed=3)
    assert (q.tokenizer.local_2d, q.seed, q.vae.steps) == ("s", 3, 5)
    assert p.tokenizer.local_2d != "s" and p.seed == 0  # replace copies
    assert FLAT_NAMES["probe_steps"] == ("probe", "steps") and FLAT_NAMES["steps"] == ("training", "steps")
    assert p.flat()["vae_steps"] == 5
    with pytest.raises(TypeError, match="valid"):
        p.replace(vae_stepz=1)
    with pytest.raises(ValueError, match="multiple of num_heads"):  # a section's own checks run on replace
        p.replace(width=33)


def test_auto_is_resolved_once_and_loading_leaves_the_parameters_alone():
    from sbt_lib.workbook.pipeline.caches import load_data

    p = resolve("01_decomposition", "cpu", dataset="auto", train_size=16, test_size=8)
    assert p.data.dataset in ("cifar10", "photos") and (p.data.note is None) == (p.data.dataset == "cifar10")
    before = json.dumps(p.flat(), default=str)
    train_set, test_set = load_data(p)
    assert json.dumps(p.flat(), default=str) == before  # the builders read the parameters, never write them
    assert (len(train_set), len(test_set)) == (16, 8)


def test_cpu_scale_is_a_real_bottleneck():
    p = resolve("01_decomposition", "cpu")
    assert p.tokenizer.token_values * 8 <= 3 * p.tokenizer.image_size ** 2


def cell_names(path: Path) -> list[str]:
    """The names assigned in a notebook's parameters cell, in order, repeats included."""
    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    return [t.id for node in ast.parse(cell.source).body if isinstance(node, ast.Assign) for t in node.targets]


def test_notebooks_are_committed_clean_and_parameterized():
    for path in rp.notebooks():
        nb = nbformat.read(path, as_version=4)
        raw = json.loads(path.read_text())  # nbformat.read adds missing ids silently: read the file itself
        assert all("id" in c for c in raw["cells"]), f"{path.name}: every cell needs an id (nbformat 4.5)"
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), f"{path.name} has outputs"
        tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, f"{path.name} needs exactly one cell tagged 'parameters'"
        names = cell_names(path)
        assert len(names) == len(set(names)), f"{path.name} names a parameter twice"
        assert {"scale", "dataset", "seed", "out_dir"} <= set(names)
        unknown = set(names) - set(FLAT_NAMES) - set(RUN_NAMES)
        assert not unknown, f"{path.name}: {unknown} are not config field names"
        assert 'notebook_params("' + path.stem + '", globals())' in "".join(c.source for c in code)
        # papermill reads every line (`papermill --help-notebook`); a comment it cannot parse drops the parameter
        from papermill.translators import PythonTranslator
        parsed = [p.name for p in PythonTranslator.inspect(tagged[0])]
        assert parsed == names, f"{path.name}: papermill cannot parse {sorted(set(names) - set(parsed))}"


# A measured value in a notebook's prose: a mean ± std, or a metric followed by its number ("PSNR 21.3", "gFD-EffNet@2000
# of 140.7").  Notebook markdown explains the method; what depends on a number is printed from the results.
MEASURED = re.compile(r"\d\s*±\s*\d|\b(?:PSNR|SSIM|gFD|rFD|rFID|gFID|KID|FD-HOG)(?:-EffNet)?(?:@\d+)?\s*"
                      r"(?:of|=|:|is|at|was|reaches)?\s*\d+\.\d")


def test_notebook_prose_states_no_measured_value_and_no_training_loop():
    assert MEASURED.search("G+L1+L2 reaches 20.73 ± 0.10 dB") and MEASURED.search("gFD-EffNet@2000 of 140.7")
    assert not MEASURED.search("until it gains less than 0.05 dB and 2% rFD per doubling (Table 3, 64 values)")
    for path in rp.notebooks():
        nb = nbformat.read(path, as_version=4)
        for i, cell in enumerate(nb.cells):
            if cell.cell_type == "markdown":
                found = MEASURED.search(cell.source)
                assert not found, f"{path.name} cell {i}: {found.group(0)!r} in markdown; print it from the results"
            else:  # training lives in the library (sbt_lib.train, the pipeline's trainers), not in a notebook
                assert not re.search(r"\.backward\(|zero_grad\(|optimizer\.step\(", cell.source), \
                    f"{path.name} cell {i} trains a model itself; call the library's trainer"


def test_library_docstrings_and_comments_state_no_measured_value():
    """Docstrings and comments say what and why; measured values live in the results that record them."""
    lib = Path(rp.__file__).parents[3]
    paths = sorted(lib.glob("sbt_lib/**/*.py"))
    assert len(paths) > 50
    for path in paths:
        source = path.read_text()
        tree = ast.parse(source)
        nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef)))]
        texts = [ast.get_docstring(n) or "" for n in nodes]
        texts += [line[line.index("#"):] for line in source.splitlines() if "#" in line]
        found = next((m.group(0) for t in texts if (m := MEASURED.search(t))), None)
        assert found is None, f"{path.relative_to(lib)}: {found!r}; point to the benchmark or results that measure it"


@pytest.mark.parametrize("notebook", [p.stem for p in rp.notebooks()])
def test_a_papermill_override_reaches_the_typed_parameters(notebook):
    """Papermill's own injection of ``-p name=value`` for every name of the cell, read back by the
    notebook's one line: each value lands in its section's field."""
    path = rp.NOTEBOOK_DIR / f"{notebook}.ipynb"
    bundle = resolve(notebook, "tiny").flat()
    overrides = {n: ((2 * bundle[n] or 1) if isinstance(bundle.get(n), int) and not isinstance(bundle[n], bool)
                     else bundle.get(n)) for n in cell_names(path) if n not in RUN_NAMES}  # valid changes
    overrides = {**{k: v for k, v in overrides.items() if v is not None}, "scale": "tiny"}
    nb = parameterize_notebook(load_notebook_node(str(path)), overrides)
    namespace = {}
    for cell in nb.cells[:3]:
        if {"parameters", "injected-parameters"} & set(cell.metadata.get("tags", [])):
            exec(cell.source, namespace)
    P = notebook_params(notebook, namespace)
    assert P.scale == "tiny"
    flat = P.flat()
    for name, value in overrides.items():
        if name != "scale":
            assert flat[name] == value, name


@pytest.mark.parametrize("notebook", [p.stem for p in rp.notebooks()])
def test_every_notebook_refuses_an_unknown_parameter(notebook):
    with pytest.raises(ValueError, match="stepz.*valid: .*steps"):
        rp._check_parameters(rp.NOTEBOOK_DIR / f"{notebook}.ipynb", {"stepz": 3})


def test_unknown_parameter_lists_the_valid_ones(tmp_path, capsys):
    code = main(["reproduce", "--scale", "tiny", "--out", str(tmp_path), "-p", "STEPZ=3"])
    assert code == 1
    err = capsys.readouterr().err
    assert "stepz" in err and "steps" in err and "valid" in err
    assert not list(tmp_path.glob("*.ipynb"))  # checked before anything ran


def test_a_relative_dataset_path_is_the_callers(tmp_path, monkeypatch):
    """``--dataset mydata`` means ./mydata of the caller, though the kernels run in notebooks/."""
    seen = []
    monkeypatch.setattr(rp, "run_notebook", lambda path, out, params, log_output=False: seen.append(params))
    for cwd in (tmp_path, tmp_path / "deeper"):
        cwd.mkdir(exist_ok=True)
        monkeypatch.chdir(cwd)
        rp.reproduce("tiny", dataset="mydata", only=["01"], out=tmp_path / "out")
        assert seen[-1]["dataset"] == str(cwd / "mydata")
    assert rp.resolve_dataset_arg("cifar10") == "cifar10" and rp.resolve_dataset_arg(None) is None


def test_unknown_notebook_prefix():
    with pytest.raises(ValueError, match="available"):
        rp.notebooks(["99"])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The whole workbook at the tiny scale, through the command line, as a user runs it."""
    out = tmp_path_factory.mktemp("reproduce")
    env = {**os.environ, "SBT_CACHE": str(tmp_path_factory.mktemp("cache"))}  # trained 2D VAEs, feature caches
    sockets_before = set(rp.NOTEBOOK_DIR.glob("kernel-ipc*"))
    proc = subprocess.run([sys.executable, "-m", "sbt_lib", "reproduce", "--scale", "tiny", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "without encryption" not in proc.stdout + proc.stderr  # local kernels talk over IPC
    assert set(rp.NOTEBOOK_DIR.glob("kernel-ipc*")) <= sockets_before  # ... and leave no socket in notebooks/
    return out


def test_reproduce_writes_notebooks_run_folders_and_summary(tiny_run):
    summary = (tiny_run / "summary.md").read_text()
    for path in rp.notebooks():
        assert (tiny_run / path.name).exists()
        assert (tiny_run / path.stem / "metrics.json").exists()
        assert f"## {path.stem}" in summary


def test_every_comparison_notebook_records_its_verdicts_and_the_summary_lists_them(tiny_run):
    summary = (tiny_run / "summary.md").read_text()
    for path in rp.notebooks()[1:]:  # 01 shows one tokenizer; 02-06 compare
        verdicts = json.loads((tiny_run / path.stem / "metrics.json").read_text())["verdicts"]
        assert verdicts and all(("std" in v or "spread" in v) for v in verdicts), (path.stem, verdicts)
        section = summary[summary.index(f"## {path.stem}"):]
        assert "Verdicts:" in section.split("\n## ")[0], path.stem


def test_notebook_01_metrics_and_figures(tiny_run):
    run = tiny_run / "01_decomposition"
    m = json.loads((run / "metrics.json").read_text())
    for key in ("test_psnr", "test_ssim", "bicubic_psnr", "pca_psnr", "token_values", "pixel_values",
                "scratch_seconds", "codebook_assignment_entropy", "swap_drop"):
        assert key in m, key
    assert m["pca_values"] == m["token_values"] and m["dataset_note"] is None
    assert m["scale"] == "tiny" and m["dataset"] == "shapes"
    assert "fd_effnet" in m and "fid" not in m and m["feature_space"].startswith("FD-EffNetLite0")  # offline
    assert m["token_values"] == 8 * 4 and m["pixel_values"] == 3 * 16 * 16
    assert 5 < m["test_psnr"] < 60 and 5 < m["bicubic_psnr"] < 60
    assert -1 <= m["test_ssim"] <= 1
    # at tiny there is no shipped base: it is trained beside the notebooks, and the from-scratch run in the folder
    assert m["base_folder"].endswith("base/tokenizer") and m["base_record"] is None
    # the table: the base, the from-scratch run and both anchors, by distortion and by perception (HOG too)
    rows = m["table"]
    assert list(rows)[0] == "base tokenizer" and {"PCA (anchor)", "bicubic (anchor)"} <= set(rows) and len(rows) == 4
    for r in rows.values():
        assert {"psnr", "ssim", "fd_effnet", "kid_effnet", "fd_hog"} <= set(r) and r["values"] == m["token_values"]
    assert rows["base tokenizer"]["psnr"] == pytest.approx(m["test_psnr"], abs=1e-4)
    for fig in ("training_curve.png", "reconstructions.png", "codebook_usage.png", "groups_removed.png",
                "linear_probes.png"):
        assert (run / fig).stat().st_size > 1000, fig
    assert (run / "checkpoint.safetensors").exists()
    assert m["groups"] == ["global", "local_1d", "local_2d"]
    assert sum(m["fusion_weights"].values()) == pytest.approx(1.0)
    # the cost table covers every part and adds up
    parts = ("encoder", "quantizers", "aligner_1d", "aligner_2d", "fusion", "decoder")
    assert all(m["costs"][p]["params"] > 0 for p in parts if p != "fusion")
    assert sum(m["costs"][p]["params"] for p in parts) == m["costs"]["total"]["params"]
    # linear probes: every factor of shapes, from every group, with chance beside it
    assert set(m["probes"]) == {"shape", "colour", "position", "size", "texture", "frequency", "orientation"}
    for row in m["probes"].values():
        assert set(row) == {"global", "local_1d", "local_2d", "pixels (PCA)", "teacher (effnet_lite0)", "chance"}
        assert all(0 <= v <= 1 for v in row.values())


def test_notebook_02_one_entry_per_variant(tiny_run):
    run = tiny_run / "02_bootstrapping"
    m = json.loads((run / "metrics.json").read_text())
    variants = ["G", "G (param-matched)", "G+L1", "G+L1+L2 (non-causal)", "G+L1+L2 (shared codebook)",
                "G+L1+L2 (gain-shape locals)", "G+L1+L2"]
    assert list(m["variants"]) == variants
    assert list(m["fusion"]) == ["soft residual", "concat"]
    assert len(m["seeds"]) >= 2
    for name, v in {**m["variants"], **m["fusion"]}.items():
        assert v["seeds"] == len(m["seeds"]), name
        assert len(v["values"]["test_psnr"]) == len(m["seeds"])
        assert v["test_psnr_std"] >= 0 and 5 < v["test_psnr_mean"] < 60
    # every variant stands on the base: the same global tokens, the base's frozen encoder in every run
    assert m["z_global_identical"] is True and m["base"]["config"]["num_tokens"] == m["num_tokens"]
    # the control's decoder side is the nearest in size to the full model's; G's is smaller
    sizes = m["decoder_side_params"]
    assert abs(sizes["G (param-matched)"] - sizes["G+L1+L2"]) <= abs(sizes["G"] - sizes["G+L1+L2"])
    assert sizes["G"] < sizes["G+L1"] < sizes["G+L1+L2"] and m["control"]["decoder_depth"] >= 1
    # the swap check: one entry per variant with local tokens, and the base's own
    assert set(m["swap_drop"]) == set(variants[2:]) | {"concat"} | {k for k in m["table2"] if k != "no local REPA"}
    assert isinstance(m["base"]["swap_drop"], float)
    # Table 2: the baseline and each local teacher of the scale (tiny: HOG), with the feature-space distance
    assert list(m["table2"]) == ["no local REPA", "REPA-local: hog"] and m["teachers_skipped"] == {}
    assert all("fd_effnet_mean" in v for v in {**m["variants"], **m["table2"]}.values())
    assert m["feature_space"].startswith("FD-EffNetLite0")
    assert set(m["anchors"]) == {"bicubic", "PCA"} and m["anchors"]["PCA"]["values"] == m["num_tokens"] * m["token_dim"]
    assert len(m["runs"]) == (len(variants) + 2) * len(m["seeds"])  # + concat + REPA-local: hog
    assert all(r["steps"] == m["steps"] for r in m["runs"])
    for fig in ("table3_psnr.png", "table3_fd.png", "decomposition_panel.png",
                "decomposition_inside_full_model.png", "fusion_psnr.png", "table2_psnr.png"):
        assert (run / fig).stat().st_size > 1000, fig


def test_notebook_03_ot_with_and_without(tiny_run):
    run = tiny_run / "03_ot_alignment"
    m = json.loads((run / "metrics.json").read_text())
    assert list(m["variants"]) == ["without L_OT", "with L_OT"]
    assert set(m["anchors"]) == {"bicubic", "PCA"}
    for v in m["variants"].values():
        assert v["seeds"] == len(m["seeds"]) and 5 < v["test_psnr_mean"] < 60
    assert m["psnr_gain_with_ot"] == pytest.approx(m["psnr[with L_OT]"] - m["psnr[without L_OT]"])
    # the baseline is notebook 02's full model, evaluated from its folder rather than trained twice
    m02 = json.loads((tiny_run / "02_bootstrapping" / "metrics.json").read_text())
    for r in (r for r in m["runs"] if r["variant"] == "without L_OT"):
        assert "02_bootstrapping" in r["run"]
        twin = next(q for q in m02["runs"] if q["variant"] == "G+L1+L2" and q["seed"] == r["seed"])
        assert r["test_psnr"] == pytest.approx(twin["test_psnr"])
    assert m["toy_check"]["library_vs_pot"] < 1e-8 and m["toy_check"]["naive_vs_pot"] < 1e-6
    assert m["num_latents_2d"] == (16 // 2) ** 2
    spread = m["source_spread"]
    assert 0 <= spread["with L_OT"] <= spread["uniform source"] + 1e-6
    sweep = {float(k): v for k, v in m["eps_sweep"].items()}
    its = [sweep[e]["iterations"] for e in sorted(sweep)]
    assert its == sorted(its, reverse=True)  # smaller ε, more iterations
    assert {r["solver"] for r in m["solvers"]} == {"sbt_lib.objective.ot.sinkhorn", "ot.batch.solve_batch",
                                                   "ot.sinkhorn2 (loop)"}
    assert all(r["max_rel_cost_diff"] < 1e-4 for r in m["solvers"])
    for fig in ("sinkhorn_points.png", "vae_reconstructions.png", "ot_psnr.png", "transport_plans.png",
                "token_sources.png", "eps_sweep.png", "convergence.png"):
        assert (run / fig).stat().st_size > 1000, fig


def test_notebook_04_two_stage_scaling(tiny_run):
    run = tiny_run / "04_aligner_scaling"
    m = json.loads((run / "metrics.json").read_text())
    sizes = m["stage2"]["aligners"]
    assert len(sizes) >= 4 and len(m["seeds"]) >= 2
    assert list(m["two_stage"]) == [f"two-stage {s}" for s in sizes]
    assert list(m["control"]) == [f"{sizes[0]} at the FLOPs of {s}" for s in sizes[1:]]
    assert m["z_global_identical"] and all(m["z_global_identical"].values())  # stage 2 on the base keeps z_global
    assert len(m["z_global_identical"]) == len(sizes) * len(m["seeds"])
    params = [m["two_stage"][f"two-stage {s}"]["aligner_2d_params"] for s in sizes]
    assert params == sorted(params) and params[-1] > 10 * params[0]
    flops = [m["flops_per_step"][s] for s in sizes]
    assert flops == sorted(flops) and flops[0] > 0  # a larger aligner costs more per step ...
    steps = [m["control_steps"][f"{sizes[0]} at the FLOPs of {s}"] for s in sizes[1:]]
    assert steps == sorted(steps) and steps[0] >= m["stage2"]["steps"]  # ... so the small one gets more steps
    for s, n in zip(sizes[1:], steps):  # equal compute, to the rounding of a step
        assert abs(n * flops[0] - m["stage2"]["steps"] * m["flops_per_step"][s]) <= flops[0]
    for v in {**m["two_stage"], **m["control"]}.values():
        assert v["seeds"] == len(m["seeds"]) and 5 < v["test_psnr_mean"] < 60 and "fd_effnet_mean" in v
    assert set(m["swap_drop"]) == set(m["two_stage"])
    assert [h["label"] for h in m["headlines"]][2] == "z_global identical to the base"
    for fig in ("fig6_scaling.png", "reconstructions_by_size.png"):
        assert (run / fig).stat().st_size > 1000, fig


def test_notebook_05_generation(tiny_run):
    run = tiny_run / "05_generation"
    m = json.loads((run / "metrics.json").read_text())
    assert m["tokenizers_from"].endswith("04_aligner_scaling")  # reused notebook 04's tokenizers
    assert m["generator"]["from"].endswith("05_generation/generators/global")  # trained once, beside the notebooks
    comparison = m["comparison"]
    assert len(comparison) == 3 and all(c["label"] == m["label"] for c in comparison.values())
    a, b, c = comparison.values()
    assert all(s["seeds"] == len(m["comparison_seeds"]) == 2 for s in (a, b, c))
    assert b["tokens"] > a["tokens"] == c["tokens"] and b["gflops_forward_mean"] > 2 * a["gflops_forward_mean"]
    assert b["steps_mean"] < a["steps_mean"] == c["steps_mean"]  # same compute: fewer steps for the longer sequence
    assert abs(b["gflops_train_mean"] - a["gflops_train_mean"]) < 0.2 * a["gflops_train_mean"]
    assert m["label"].endswith(f"@{m['generator']['samples']}")
    assert m["gfd_below_gaussian"] == pytest.approx(1 - m["main"]["gfd"] / m["gaussian"]["gfd"])
    assert set(m["sweep"]) == set(json.loads((tiny_run / "04_aligner_scaling" / "metrics.json").read_text())["stage2"]["aligners"])
    assert 0 < m["accounting"]["saving"] < 1 and m["accounting"]["per_size_tflops"] > m["accounting"]["once_tflops"]
    assert {"euler", "heun", "sde", "dopri5"} <= {k.split(" ")[0] for k in m["samplers"]}
    assert list(m["guidance"]) == ["1.0", "1.5", "2.0", "3.0", "4.0", "6.0"]
    assert set(m["floors"]) == {"real", "decoded"} and all(v["gfd"] > 0 for v in m["floors"].values())
    for fig in ("samples_by_class.png", "samples_by_start.png", "samples_compared.png", "gfd_by_aligner_size.png",
                "samplers.png", "guidance.png", "samples_by_guidance.png", "trajectory.png"):
        assert (run / fig).stat().st_size > 1000, fig


def test_notebook_06_tokenizers_compared(tiny_run):
    run = tiny_run / "06_tokenizers_compared"
    m = json.loads((run / "metrics.json").read_text())
    names = ["SoftVQ", "SelfBootTok", "SoftVQ + CRT 0.1", "SoftVQ + CRT 1", "SoftVQ + GloTok 0.1", "SelfBootTok + CRT 0.1"]
    assert list(m["summary"]) == names and all(s["seeds"] == 2 for s in m["summary"].values())
    assert m["variants"]["SoftVQ + GloTok 0.1"]["residual_recovery"] is True
    for row in m["rows"]:  # every tokenizer is fine-tuned from the one base, its encoder included
        assert "finetuned_from" in json.loads((Path(row["run"]) / "checkpoint.json").read_text())["base"]
    for row in m["rows"]:  # every tokenizer run has its generator, measured with the same label
        assert row["gfd_label"] == m["label"] and row["generator_steps"] > 0 and row["tokens"] == 8
        assert {"test_psnr", "test_ssim", m["feature_distance"], "gfd", "gkid", "generator_gflops_forward"} <= set(row)
    flops = {row["generator_gflops_forward"] for row in m["rows"]}
    assert len(flops) == 1  # the same generator on the same global tokens for every tokenizer
    assert {"bicubic", "PCA"} <= set(m["anchors"]) and len(m["verdicts"]) == 5
    assert [r["tokenizer"] for r in m["paper_rows"]] == ["SoftVQ", "SelfBootTok", "CRT", "GloTok"]
    for fig in ("compression_generation.png", "crt_weight.png"):
        assert (run / fig).stat().st_size > 1000, fig


def test_failing_notebook_names_itself_and_its_cell(tmp_path, monkeypatch):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('scale = "cpu"\ndataset = None\nseed = 0\nout_dir = None')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell("raise RuntimeError('boom')")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    folder = tmp_path / "notebooks"
    folder.mkdir()
    nbformat.write(nb, folder / "01_broken.ipynb")
    monkeypatch.setattr(rp, "NOTEBOOK_DIR", folder)
    expected = r"01_broken failed in cell \[\d+\] `raise RuntimeError\('boom'\)` \(RuntimeError: boom\)"
    with pytest.raises(rp.NotebookFailed, match=expected):
        rp.reproduce("tiny", out=tmp_path / "out")
    executed = nbformat.read(tmp_path / "out" / "01_broken.ipynb", as_version=4)
    assert any(o.get("ename") == "RuntimeError" for c in executed.cells for o in c.get("outputs", []))
