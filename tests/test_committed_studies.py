"""The committed studies a notebook reads instead of training at ``cpu``: used only where complete and where their
recipe is the notebook's own, and merged run by run."""
import json

import pytest
import torch

from sbt_lib.workbook.config.params import resolve
from sbt_lib.workbook.pipeline import compare, generation_study

NOTEBOOK = "06_tokenizers_compared"


def variants(P):
    hist_w, residual_w = P.study.glotok_weights
    return compare.tokenizer_variants(P.tokenizer.local_2d, P.study.crt_weights, hist_w, residual_w)


def study(P, rows, complete=True):
    return {"command": "python benchmarks/tokenizers_compared.py", "machine": {"processor": "Test CPU"},
            "seconds": 1.0, "complete": complete, "recipe": compare.study_recipe(P, variants(P)), "rows": rows,
            "floor": {"gfd": 58.6, "kid": 0.0, "label": "gFD-EffNet@2000"}}


def generator_row(variant, seed, gfd):
    return {"variant": variant, "seed": seed, "gfd": gfd, "gkid": 0.1, "gfd_label": "gFD-EffNet@2000", "tokens": 16,
            "generator_seconds": 300.0, "generator_steps": 2770, "generator_wall_seconds": 330.0,
            "generator_gflops_forward": 0.027, "ceiling_gfd": 140.0, "ceiling_gkid": 0.1}


@pytest.fixture
def committed(tmp_path, monkeypatch):
    """Point the study file of every scale into tmp_path; returns a writer."""
    monkeypatch.setattr(compare, "study_file", lambda scale: tmp_path / f"tokenizers_compared_{scale}.json")

    def write(P, data):
        compare.study_file(P.scale).write_text(json.dumps(data))
    return write


def test_the_committed_generators_are_used_only_complete_and_with_the_notebooks_recipe(committed):
    P = resolve(NOTEBOOK, "cpu", dataset="cifar10")
    rows = [generator_row(v, s, 200.0 + s) for v in variants(P) for s in P.seeds]
    assert compare.committed_generators(P, variants(P)) is None  # nothing committed
    committed(P, study(P, rows, complete=False))
    assert compare.committed_generators(P, variants(P)) is None  # a study stopped half-way
    committed(P, study(P, rows))
    assert compare.committed_generators(P, variants(P))["rows"] == rows
    older = [{k: v for k, v in r.items() if not k.startswith("ceiling")} for r in rows]
    committed(P, study(P, older))
    assert compare.committed_generators(P, variants(P)) is None  # written before the notebook showed ceilings
    for change in (dict(generator_steps=100), dict(seed=5), dict(steps=7), dict(crt_weights=[0.3, 1.0])):
        Q = P.replace(**change)
        assert compare.committed_generators(Q, variants(Q)) is None, change


def test_saved_generators_join_their_runs_and_name_a_missing_one(committed):
    P = resolve(NOTEBOOK, "cpu", dataset="cifar10")
    saved = study(P, [generator_row("SoftVQ", 0, 210.0), generator_row("SoftVQ", 1, 220.0)])
    runs = [{"variant": "SoftVQ", "seed": 1, "test_psnr": 20.0}, {"variant": "SoftVQ", "seed": 0, "test_psnr": 21.0}]
    merged = compare.with_saved_generators(runs, saved)
    assert [(r["seed"], r["gfd"], r["test_psnr"]) for r in merged] == [(1, 220.0, 20.0), (0, 210.0, 21.0)]
    with pytest.raises(KeyError, match="SelfBootTok"):
        compare.with_saved_generators([{"variant": "SelfBootTok", "seed": 0}], saved)


def test_a_generator_needs_as_many_held_out_images_as_samples():
    P = resolve(NOTEBOOK, "tiny")
    with pytest.raises(ValueError, match="test_images"):
        compare.with_generators(P, variants(P), [], None, torch.zeros(P.generator.samples - 1, 3, 8, 8))


def test_notebook_05s_comparison_is_read_only_where_its_recipe_matches(tmp_path, monkeypatch):
    monkeypatch.setattr(generation_study, "comparison_file", lambda scale: tmp_path / f"compare_{scale}.json")
    P = resolve("05_generation", "cpu", dataset="cifar10")
    assert generation_study.committed_comparison(P) is None
    (tmp_path / "compare_cpu.json").write_text(json.dumps({"recipe": generation_study.comparison_recipe(P)}))
    assert generation_study.committed_comparison(P) is not None
    assert generation_study.committed_comparison(P.replace(generator_compare_steps=1)) is None


def test_the_committed_comparisons_are_the_notebooks_and_not_the_reused_generators_sampling():
    """Notebook 05's (a)/(b)/(c) and notebook 06's generators keep their own recipe (``compare_*``, and 06's pinned
    sampling): the reused generator's guidance, interval and training times do not reach them."""
    P = resolve("05_generation", "cpu", dataset="cifar10")
    assert generation_study.committed_comparison(P) is not None  # the committed benchmarks/generator_compare_cpu.json
    reused = dict(generator_guidance=5.0, generator_guidance_from=0.5, generator_time_sampling="uniform")
    assert generation_study.comparison_recipe(P.replace(**reused)) == generation_study.comparison_recipe(P)
    assert generation_study.comparison_recipe(P.replace(generator_compare_guidance=3.0)) != \
        generation_study.comparison_recipe(P)
    P6 = resolve(NOTEBOOK, "cpu", dataset="cifar10")
    assert compare.saved_study(compare.study_file("cpu"), compare.study_recipe(P6, variants(P6))) is not None
