import numpy as np
import pytest
import torch

from sbt_lib.eval.probes import chance_level, probe_accuracy, probe_table


def _data(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    informative = np.eye(4)[y][:, None, :] + 0.3 * rng.standard_normal((n, 3, 4))  # N×3×4 "tokens"
    noise = rng.standard_normal((n, 3, 4))
    return {"informative": torch.tensor(informative), "noise": torch.tensor(noise)}, {"factor": y}


def test_probe_reads_an_informative_group_and_not_noise():
    (ftr, ytr), (fte, yte) = _data(400, 0), _data(200, 1)
    table = probe_table(ftr, fte, ytr, yte)
    row = table["factor"]
    assert row["informative"] > 0.95
    assert abs(row["noise"] - 0.25) < 0.12
    assert row["chance"] == pytest.approx(chance_level(ytr["factor"], yte["factor"]))
    assert 0.15 < row["chance"] < 0.4


def test_chance_level_is_the_majority_class():
    assert chance_level([0, 0, 1], [0, 1, 1, 1]) == 0.25


def test_mismatched_groups_are_an_error():
    f, y = _data(20, 0)
    with pytest.raises(ValueError, match="differ"):
        probe_table(f, {"noise": f["noise"]}, y, y)


def test_probe_accuracy_accepts_arrays():
    x = np.arange(40, dtype=float)[:, None]
    y = (x[:, 0] > 20).astype(int)
    assert probe_accuracy(x, y, x, y) >= 0.95
    assert probe_accuracy(x, y, x, y, c=100.0) == 1.0


def test_probe_groups_reference_rows():
    """The PCA row is a linear code of the pixels; the teacher row (a frozen ImageNet network) reads the
    object's position, which no linear code of these images does: the factor is there, non-linearly."""
    from sbt_lib.data.datasets import load_dataset
    from sbt_lib.models.tokenizer import SelfBootTok
    from sbt_lib.workbook.report.analysis import probe_groups

    train = load_dataset("shapes", "train", 32, size=600)
    test = load_dataset("shapes", "test", 32, size=300)
    model = SelfBootTok(image_size=32, width=32, encoder_depth=1, decoder_depth=1, num_heads=2, num_tokens=8,
                        token_dim=4, codebook_size=16)
    table = probe_groups(model, train, test)
    assert {"global", "pixels (PCA)", "teacher (effnet_lite0)", "chance"} <= set(table["position"])
    pos = table["position"]
    assert pos["teacher (effnet_lite0)"] > pos["pixels (PCA)"] + 0.25 and pos["teacher (effnet_lite0)"] > pos["chance"] + 0.4
    assert "teacher (effnet_lite0)" not in probe_groups(model, train, test, teacher=None)["position"]
