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
