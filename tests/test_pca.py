import pytest
import torch
from sklearn.decomposition import PCA as SkPCA

from sbt_lib.models.pca import PCA, pca_anchor


@pytest.fixture(autouse=True)
def fresh_fits(tmp_path, monkeypatch):
    """Every test here fits anew: no fit kept on disk by an earlier run, none in memory."""
    from sbt_lib.models import pca as module

    monkeypatch.setenv("SBT_CACHE", str(tmp_path))
    monkeypatch.setattr(module, "_CACHE", {})


def images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 3, 3, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(coarse, size=8, mode="bilinear", align_corners=False) * 0.9


def test_pca_matches_scikit_learn():
    train, test = images(200), images(20, seed=1)
    ours = PCA.fit(train, 12)
    sk = SkPCA(n_components=12, svd_solver="full").fit(train.flatten(1).double().numpy())
    torch.testing.assert_close(ours.std, torch.from_numpy(sk.explained_variance_).float().sqrt(), rtol=1e-4, atol=0)
    expected = torch.from_numpy(sk.inverse_transform(sk.transform(test.flatten(1).double().numpy()))).float()
    torch.testing.assert_close(ours.decode(ours.encode(test)).flatten(1), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.roundtrip(test), expected.clamp(-1, 1).view_as(test), atol=1e-5, rtol=0)


def test_more_components_reconstruct_better_and_the_anchor_uses_values():
    train, test = images(200), images(20, seed=1)
    err = [(pca_anchor(train, test, k) - test).square().mean().item() for k in (2, 8, 27)]
    assert err[0] > err[1] > err[2] and err[2] < 1e-8  # 27 = all the degrees of freedom of these images


def test_clear_errors():
    with pytest.raises(ValueError, match="B×C×H×W"):
        PCA.fit(torch.zeros(10, 12), 2)
    with pytest.raises(ValueError, match="k ≤"):
        PCA.fit(images(5), 10)


def test_a_fit_is_kept_on_disk_and_read_back_exactly(tmp_path, monkeypatch):
    """A new process (an empty memory cache) reads the fit from disk instead of fitting again; a file it
    cannot read is fitted again and replaced."""
    from sbt_lib.models import pca as module

    train = images(200, seed=3)
    first = PCA.fit(train, 12)
    (saved,) = (tmp_path / "pca").iterdir()
    module._CACHE.clear()
    with monkeypatch.context() as m:
        m.setattr(PCA, "_fit", classmethod(lambda cls, *a: pytest.fail("fitted again instead of read from disk")))
        again = PCA.fit(train, 12)
    for name in ("mean", "basis", "std"):
        assert torch.equal(getattr(again, name), getattr(first, name)), name
    assert again.shape == first.shape and PCA.fit(train, 11).k == 11  # another k: another fit
    saved.write_bytes(b"not a safetensors file")
    module._CACHE.clear()
    assert torch.equal(PCA.fit(train, 12).basis, first.basis)
    assert PCA._load(saved, first.shape) is not None  # replaced by a good file


@pytest.mark.parametrize("n", [200, 60])  # more images than values (192 each): covariance; fewer: Gram matrix
def test_the_components_are_scikit_learns_with_its_signs(n):
    train = images(n, seed=2) + 0.05 * torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    ours = PCA.fit(train, 20)
    sk = SkPCA(n_components=20, svd_solver="full").fit(train.flatten(1).double().numpy())
    torch.testing.assert_close(ours.basis, torch.from_numpy(sk.components_.T).float(), atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.std, torch.from_numpy(sk.explained_variance_).float().sqrt(), rtol=1e-5, atol=0)
    torch.testing.assert_close(ours.basis.T @ ours.basis, torch.eye(20), atol=1e-5, rtol=0)
