"""Codebooks started from data: k-means (against scikit-learn), SoftVQ.init_codebook and
SelfBootTok.init_codebooks, and the builder that calls it."""
import pytest
import torch
import torch.nn.functional as F

from sbt_lib.eval.metrics import psnr
from sbt_lib.models.quantizer import SoftVQ, kmeans
from sbt_lib.models.tokenizer import SelfBootTok
from sbt_lib.models.tokenizer_config import TokenizerConfig
from sbt_lib.workbook.config.params import resolve
from sbt_lib.workbook.pipeline import trainers

TINY = dict(image_size=16, patch_size=4, width=32, encoder_depth=1, decoder_depth=1, num_heads=2, num_tokens=4,
            token_dim=4, codebook_size=16, conv_channels=8, trunk="conv", linear_path=True, keep_norm=True, tau=0.3)
FULL = dict(local_1d=True, local_2d="xs")


def blobs(n_per: int = 200, seed: int = 0):
    """Four tight clusters far apart in 3-D, and their centres."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[5.0, 0, 0], [0, 5, 0], [0, 0, 5], [-5, -5, -5]])
    x = (centres.repeat_interleave(n_per, 0) + 0.05 * torch.randn(4 * n_per, 3, generator=g))
    return x[torch.randperm(len(x), generator=g)], centres


def matched_error(found: torch.Tensor, true: torch.Tensor) -> float:
    """Largest distance from a true centre to its nearest found centroid."""
    return torch.cdist(true, found).min(1).values.max().item()


def smooth_images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g) * 2 - 1
    return F.interpolate(coarse, size=16, mode="bilinear", align_corners=False)


def test_kmeans_finds_separated_clusters_euclidean_and_spherical():
    x, centres = blobs()
    assert matched_error(kmeans(x, 4, generator=torch.Generator().manual_seed(0)), centres) < 0.05
    found = kmeans(x, 4, spherical=True, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(found.norm(dim=1), torch.ones(4))
    assert matched_error(found, F.normalize(centres, dim=1)) < 0.02


def test_kmeans_is_as_good_as_scikit_learn_and_reproducible():
    from sklearn.cluster import KMeans

    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 6, generator=g) * torch.linspace(3, 0.3, 6)  # no cluster structure: a hard case

    def inertia(c):
        return torch.cdist(x, c).min(1).values.square().sum().item()

    ours = kmeans(x, 64, iters=30, generator=torch.Generator().manual_seed(1))
    sk = KMeans(64, n_init=1, max_iter=30, random_state=1).fit(x.numpy())
    assert inertia(ours) < 1.03 * sk.inertia_
    assert inertia(ours) < 0.8 * inertia(x[:64])  # far better than the first 64 points
    torch.testing.assert_close(ours, kmeans(x, 64, iters=30, generator=torch.Generator().manual_seed(1)))
    assert not torch.equal(ours, kmeans(x, 64, iters=30, generator=torch.Generator().manual_seed(2)))


def test_kmeans_refuses_fewer_points_than_centroids():
    with pytest.raises(ValueError, match="n ≥ k"):
        kmeans(torch.randn(10, 3), 16)


def test_softvq_started_from_data_quantizes_it_better_than_random_codewords():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(3000, 4, generator=g) * torch.tensor([3.0, 1.0, 0.3, 0.1])  # directions far from uniform
    q = SoftVQ(4, codebook_size=32, tau=0.3, keep_norm=True)
    before = F.mse_loss(q(tokens).z, tokens).item()
    q.init_codebook(tokens, torch.Generator().manual_seed(0))
    after = F.mse_loss(q(tokens).z, tokens).item()
    assert after < 0.7 * before, (before, after)
    with pytest.raises(ValueError, match="dimension 4"):
        q.init_codebook(torch.randn(100, 3))


@pytest.mark.parametrize("variant", [{}, FULL, {**FULL, "shared_codebook": True}])
def test_init_codebooks_starts_the_tokenizer_closer_to_its_linear_code(variant):
    torch.manual_seed(0)
    m = SelfBootTok(**TINY, **variant).fit_linear_path(smooth_images(400)).eval()
    test = smooth_images(64, seed=1)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    start = psnr(m(test)[0], test).mean().item()
    m.init_codebooks(smooth_images(400), torch.Generator().manual_seed(0))
    after = psnr(m(test)[0], test).mean().item()
    linear = psnr(m.linear_path.decode(m.linear_path.encode(test)), test).mean().item()
    # random codewords lose 0.6-0.8 dB of the linear code here; k-means wins back more than half of it
    assert after - start > 0.5 * (linear - start) and after <= linear + 1e-3, (start, after, linear)
    changed = {k for k in before if not torch.equal(before[k], m.state_dict()[k])}
    assert changed == {f"quantizers.{q}.codebook" for q in m.quantizers}  # the codebooks and nothing else


def test_init_codebooks_reads_the_encoder_network_once_it_adds_something():
    torch.manual_seed(0)
    m = SelfBootTok(**TINY).fit_linear_path(smooth_images(400)).eval()
    torch.nn.init.normal_(m.encoder.to_tokens.weight, std=0.5)  # a network that no longer starts at zero
    x = smooth_images(200)
    m.init_codebooks(x, torch.Generator().manual_seed(3))
    expected = kmeans((m.encoder(x) + m.linear_path.encode(x)).flatten(0, 1), 16, 10, spherical=True,
                      generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(m.quantizer("global").codebook, expected)


def test_build_tokenizer_starts_the_codebooks_from_the_training_set_seeded():
    from sbt_lib.data.datasets import load_dataset

    P = resolve("02_bootstrapping", "tiny")
    assert P.tokenizer.codebook_init == "kmeans"  # the recipe of every scale but the paper's
    train_set = load_dataset("shapes", "train", image_size=16, size=128, seed=0)
    a, b = (trainers.build_tokenizer(P, train_set) for _ in range(2))
    c = trainers.build_tokenizer(P.replace(seed=1), train_set)
    random = trainers.build_tokenizer(P.replace(codebook_init="random"), train_set)
    book = lambda m: m.quantizer("global").codebook  # noqa: E731
    torch.testing.assert_close(book(a), book(b))
    assert not torch.equal(book(a), book(c)) and not torch.equal(book(a), book(random))
    with pytest.raises(ValueError, match="codebook_init='kmeans'.*pass train_set"):
        trainers.build_tokenizer(P.replace(linear_path=False))


def test_an_unknown_codebook_init_is_refused():
    with pytest.raises(ValueError, match="codebook_init.*valid"):
        TokenizerConfig(codebook_init="kmeans++")
