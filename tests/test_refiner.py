"""The pixel refiner and its refine stage: the identity at the start, only the refiner trains,
z_global stays bit for bit, it learns, and its checkpoint loads back."""
import pytest
import torch

from sbt_lib.models.refiner import PixelRefiner
from sbt_lib.models.tokenizer import SelfBootTok
from sbt_lib.models.tokenizer_config import TokenizerConfig
from sbt_lib.models.two_stage import refined_tokenizer
from sbt_lib.workbook.config.params import resolve
from sbt_lib.workbook.pipeline import caches, trainers
from sbt_lib.workbook.pipeline.runs import load_tokenizer


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    """The base recipe at tiny with a fixed linear path (MSE only), trained a few steps, and its data."""
    P = resolve("base", "tiny", linear_path=True, perceptual_weight=0.0, adv_weight=0.0, ema=0.0, steps=10,
                train_size=128, test_size=32)
    train_set, test_set = caches.load_data(P)
    model = trainers.train_tokenizer(P, train_set, test_set, tmp_path_factory.mktemp("stage1"), progress=False,
                                     evaluate=False).model.cpu().eval()
    return P, model, train_set


def test_an_untrained_refiner_is_the_identity():
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(PixelRefiner(8)(x), x)
    with pytest.raises(ValueError, match="channels"):
        PixelRefiner(0)
    with pytest.raises(ValueError, match="refiner"):
        TokenizerConfig(refiner=-1)


def test_refined_tokenizer_starts_as_its_parent_and_trains_only_the_refiner(parent):
    P, model, train_set = parent
    child = refined_tokenizer(model, 4).eval()
    images = train_set.images_at(torch.arange(8))
    with torch.no_grad():
        assert torch.equal(child.encode_global(images), model.encode_global(images))
        torch.testing.assert_close(child(images)[0], model(images)[0])
    trainable = {n for n, p in child.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("refiner.") for n in trainable)
    assert child.num_params()["refiner"] > 0 and model.num_params()["refiner"] == 0
    with pytest.raises(ValueError, match="already has a refiner"):
        refined_tokenizer(child, 4)


def test_the_refine_stage_learns_and_keeps_z_global(parent, tmp_path):
    P, model, train_set = parent
    Q = P.replace(stage2_refiner=8, stage2_refiner_steps=400, lr=5e-3)  # measured: 0.84× the parent's MSE, in 2 s
    result = trainers.train_refiner(Q, model, train_set, tmp_path, progress=False)
    images = train_set.images_at(torch.arange(len(train_set)))
    loaded = load_tokenizer(tmp_path)
    with torch.no_grad():
        before = ((model(images)[0] - images) ** 2).mean()
        after = ((loaded(images)[0] - images) ** 2).mean()
        assert torch.equal(loaded.encode_global(images), model.encode_global(images))
        torch.testing.assert_close(loaded(images)[0], result.model.cpu().eval()(images)[0])
    assert loaded.cfg.refiner == 8
    assert after < 0.93 * before, (before.item(), after.item())


def test_the_refine_stage_trains_at_its_own_learning_rate(parent, tmp_path):
    """``stage2_refiner_lr`` sets the refiner's peak lr; unset, the refiner follows ``lr``."""
    P, model, train_set = parent
    for refiner_lr, peak in ((3e-3, 3e-3), (None, 7e-4)):
        Q = P.replace(stage2_refiner=4, stage2_refiner_steps=10, stage2_refiner_lr=refiner_lr, lr=7e-4, warmup=2,
                      log_every=1)
        history = trainers.train_refiner(Q, model, train_set, tmp_path / str(refiner_lr), progress=False).history
        assert max(h["lr"] for h in history if "lr" in h) == pytest.approx(peak)


def test_the_refine_stage_says_what_it_needs(parent, tmp_path):
    P, model, train_set = parent
    with pytest.raises(ValueError, match="stage2_refiner"):
        trainers.train_refiner(P.replace(stage2_refiner=0), model, train_set, tmp_path, progress=False)


def test_a_refiner_changes_nothing_before_the_decoder():
    """The refiner reads only decoded pixels: the encoder and every group's tokens are the plain model's."""
    torch.manual_seed(0)
    plain = SelfBootTok(TokenizerConfig(image_size=16, width=32, num_heads=2, num_tokens=4, token_dim=4,
                                        codebook_size=16, conv_channels=4, local_1d=True, local_2d="xs"))
    with_refiner = refined_tokenizer(plain, 4)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        a, b = plain.encode(images), with_refiner.encode(images)
    assert all(torch.equal(a.tokens[g], b.tokens[g]) for g in a.tokens)
