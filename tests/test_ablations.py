import pytest

from sbt_lib.workbook import ablations as ab
from sbt_lib.workbook.runs import slug, variant_run
from sbt_lib.models.tokenizer import TokenizerConfig


def test_table3_variants_are_the_paper_rows():
    v = ab.table3_variants("xs")
    assert list(v) == ["G", "G+L1", "G+L1+L2 (non-causal)", "G+L1+L2 (shared codebook)", "G+L1+L2"]
    groups = {name: TokenizerConfig(**sw).groups for name, sw in v.items()}
    assert groups["G"] == ("global",) and groups["G+L1"] == ("global", "local_1d")
    assert all(g == ("global", "local_1d", "local_2d") for n, g in groups.items() if "L2" in n)
    assert TokenizerConfig(**v["G+L1+L2 (non-causal)"]).causal is False
    assert TokenizerConfig(**v["G+L1+L2 (shared codebook)"]).shared_codebook is True
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
    s = ab.summarize(rows)
    assert list(s) == ["A", "B"]
    assert s["A"]["test_psnr_mean"] == pytest.approx(21.0)
    assert s["A"]["test_psnr_std"] == pytest.approx(2**0.5)  # sample std (ddof=1)
    assert s["A"]["values"]["test_psnr"] == [20.0, 22.0] and s["A"]["seeds"] == 2
    assert s["B"]["test_psnr_std"] == 0.0
    table = ab.summary_table(s, baseline="B", anchors={"PCA": {"psnr": 20.5, "ssim": 0.6, "values": 256}})
    assert "| A |" in table and "+2.00" in table and "21.00 ± 1.41" in table
    assert "| *PCA at 256 values (anchor)* | – | 20.50 | 0.600 | +1.50 |" in table


def test_verdict_reads_a_difference_against_the_seed_spread():
    s = {"A": {"test_psnr_mean": 21.0, "test_psnr_std": 0.1}, "B": {"test_psnr_mean": 20.0, "test_psnr_std": 0.2},
         "C": {"test_psnr_mean": 20.1, "test_psnr_std": 0.3}}
    assert "+1.00 dB" in ab.verdict(s, "A", "B") and "clearly better than" in ab.verdict(s, "A", "B")
    assert "clearly worse than" in ab.verdict(s, "B", "A")
    assert "within the seed-to-seed spread" in ab.verdict(s, "C", "B")
    assert "more than every variant's seed std" in ab.seed_spread(s)
    assert "does not separate" in ab.seed_spread({k: s[k] for k in ("B", "C")})


def test_run_variants_reuses_the_same_run_of_another_notebook_and_only_that(tmp_path):
    """Notebook 03's baseline is notebook 02's full model: a finished run with the same parameters in the other
    folder is evaluated there, not retrained; a run with other parameters there is left alone."""
    from sbt_lib.workbook import builders
    from sbt_lib.workbook.params import resolve

    P = resolve("02_bootstrapping", "tiny", steps=4, seeds=1, test_size=16)
    train_set, test_set = builders.load_data(P)
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
