"""The ``paper`` preset, the lazily read ImageNet folder it trains on, the DINOv2 start of its encoder,
and the errors a user meets when the data or the weights are missing."""
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from sbt_lib.data.cache import FeatureCache, OnlineFeatures
from sbt_lib.data.datasets import LazyImageFolder, dataset_fingerprint, load_dataset
from sbt_lib.models.encoder_init import copy_block, init_encoder_from_vit
from sbt_lib.models.tokenizer import SelfBootTok
from sbt_lib.models.two_stage import stage2_tokenizer
from sbt_lib.train import TrainConfig, train
from sbt_lib.weights import MissingWeightsError
from sbt_lib.workbook.config.params import resolve
from sbt_lib.workbook.config.scales import NOTEBOOKS, epochs
from sbt_lib.workbook.pipeline import caches, trainers


def test_the_paper_preset_has_the_papers_sizes():
    P = resolve("05_generation", "paper")
    t = P.tokenizer
    assert all("paper" in bundle for bundle in NOTEBOOKS.values())
    assert (t.image_size, t.patch_size, t.width, t.encoder_depth, t.num_heads) == (256, 16, 768, 12, 12)  # DINOv2-B
    assert (t.num_tokens, t.token_dim, t.encoder_init, P.data.dataset) == (64, 32, "dinov2_b", "imagenet")
    assert P.training.steps == epochs(50, P.training.batch_size) == round(50 * 1_281_167 / 256)
    assert (P.generator.size, P.generator.steps, P.generator.samples) == ("XL", 800_000, 50_000)
    with torch.device("meta"):  # sizes counted without allocating 600M parameters
        model = SelfBootTok(t)
        sizes = {a: stage2_tokenizer(model, a, "encoder").num_params()["aligner_2d"] / 1e6 for a in P.stage2.aligners}
    assert 80 < model.num_params()["encoder"] / 1e6 < 90  # ViT-B
    assert [round(sizes[a], -1) for a in P.stage2.aligners] == [10, 150, 300, 590]


def test_missing_imagenet_says_where_it_was_looked_for_and_the_layout(tmp_path, monkeypatch):
    monkeypatch.setenv("SBT_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"imagenet/\{train,val\}/<wnid>/\*\.JPEG") as e:
        caches.load_data(resolve("05_generation", "paper"))
    assert str(tmp_path / "imagenet" / "train") in str(e.value)
    run = subprocess.run([sys.executable, "-m", "sbt_lib", "train", "base", "--scale", "paper"],
                         env={**__import__("os").environ, "SBT_DATA": str(tmp_path)}, capture_output=True, text=True)
    assert run.returncode == 1 and "ImageNet not found" in run.stderr and "Traceback" not in run.stderr


def test_missing_dinov2_weights_say_which_file_to_put_where(offline):
    P = resolve("05_generation", "tiny", encoder_init="dinov2_b", trunk="patch", conv_channels=0)
    with pytest.raises(MissingWeightsError, match="vit_base_patch14_dinov2") as e:
        trainers.build_tokenizer(P, None)
    assert "SBT_WEIGHTS" in str(e.value)


@pytest.fixture
def imagenet(tmp_path):
    """A miniature ImageNet folder: 2 classes, JPEGs of assorted sizes, train and val."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 2)):
        for wnid in ("n01440764", "n01443537"):
            folder = tmp_path / "imagenet" / split / wnid
            folder.mkdir(parents=True)
            for i in range(n):
                h, w = rng.integers(20, 48, size=2)
                Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"{wnid}_{i}.JPEG")
    return tmp_path


def test_imagenet_is_read_lazily_centre_cropped_and_trains(imagenet):
    train_set = load_dataset("imagenet", "train", image_size=16, root=str(imagenet))
    test_set = load_dataset("imagenet", "test", image_size=16, root=str(imagenet))
    assert isinstance(train_set, LazyImageFolder) and (len(train_set), len(test_set)) == (12, 4)
    assert train_set.classes == ["n01440764", "n01443537"] and train_set.targets.tolist() == [0] * 6 + [1] * 6
    batch = train_set.get_batch(torch.tensor([0, 7]))
    assert batch.images.shape == (2, 3, 16, 16) and -1 <= batch.images.min() and batch.images.max() <= 1
    assert batch.targets.tolist() == [0, 1]
    assert dataset_fingerprint(train_set)["n"] == 12 and dataset_fingerprint(train_set) != dataset_fingerprint(test_set)
    assert len(load_dataset("imagenet", "train", image_size=16, root=str(imagenet), size=4)) == 4  # balanced subset
    P = resolve("05_generation", "tiny", repa_global_weight=0.5)
    assert caches._cache(train_set) is OnlineFeatures  # teacher features per batch, not a 126 GB cache
    teacher = caches.teacher_cache("effnet_lite0", P, train_set, P.tokenizer.num_tokens, progress=False)
    assert torch.allclose(teacher[torch.tensor([3])], teacher[torch.tensor([3])]) and len(teacher) == 12
    model = SelfBootTok(P.tokenizer)
    from sbt_lib.objective.objective import Objective
    result = train(model, Objective(P.objective, model.cfg, teacher_features={"global": teacher}), train_set,
                   TrainConfig(steps=2, batch_size=4, progress=False))
    assert result.step == 2 and any("repa_global" in h for h in result.history)
    assert caches._cache(load_dataset("shapes", "train", image_size=16, size=8)) is FeatureCache  # in memory: cached


def _vit():
    torch.manual_seed(0)
    vit = timm.models.VisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2,
                                        init_values=0.3, class_token=True)
    for name, p in vit.named_parameters():  # LayerScale and norms away from their defaults
        if "gamma" in name or "norm" in name or "pos_embed" in name:
            p.data.uniform_(0.2, 1.5) if "gamma" in name or "weight" in name else p.data.normal_(0, 0.1)
    return vit.eval()


def test_a_vit_with_layer_scale_copies_into_the_encoder_exactly():
    vit = _vit()
    P = resolve("05_generation", "tiny", trunk="patch", conv_channels=0, width=32, num_heads=2, patch_size=4)
    model = SelfBootTok(P.tokenizer).eval()
    names = init_encoder_from_vit(model, vit)
    assert "encoder.blocks.0" in names
    x = torch.randn(2, 17, 32)
    for ours, theirs in zip(model.encoder.blocks, vit.blocks):
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)  # LayerScale folded, exactly
    images = torch.rand(2, 3, 16, 16) * 2 - 1  # the tokenizer's [-1, 1]; the ViT sees ImageNet-normalised ones
    mean, std = torch.tensor((0.485, 0.456, 0.406)), torch.tensor((0.229, 0.224, 0.225))  # DINOv2's (ImageNet)
    normalised = ((images + 1) / 2 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    theirs = vit.patch_embed(normalised) + vit.pos_embed[:, 1:]
    ours = model.encoder.patch_embed(images) + model.encoder.patch_pos
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="trunk='patch'"):
        init_encoder_from_vit(SelfBootTok(resolve("05_generation", "tiny").tokenizer), vit)
    block = timm.models.vision_transformer.Block(32, 2, qkv_bias=True)
    copy_block(block, vit.blocks[1])
    torch.testing.assert_close(block(x), vit.blocks[1](x), atol=1e-5, rtol=1e-5)


def test_the_engine_prefetches_the_next_steps_batch_of_a_lazy_folder(imagenet):
    train_set = load_dataset("imagenet", "train", image_size=16, root=str(imagenet))
    fresh = load_dataset("imagenet", "train", image_size=16, root=str(imagenet))
    asked = []
    real_prefetch = train_set.prefetch
    train_set.prefetch = lambda indices: asked.append(indices.tolist()) or real_prefetch(indices)
    P = resolve("05_generation", "tiny")
    cfg = TrainConfig(steps=3, batch_size=4, progress=False)
    from sbt_lib.objective.objective import Objective
    from sbt_lib.batch import batch_indices
    result = train(SelfBootTok(P.tokenizer), Objective(), train_set, cfg)
    assert result.step == 3
    assert asked == [batch_indices(12, 4, s, 0).tolist() for s in (1, 2)]  # steps 1 and 2, while 0 and 1 ran
    step2 = batch_indices(12, 4, 2, 0)
    train_set.prefetch(batch_indices(12, 4, 0, 0))
    assert torch.equal(train_set.images_at(batch_indices(12, 4, 0, 0)), fresh.images_at(batch_indices(12, 4, 0, 0)))
    assert torch.equal(train_set.images_at(step2), fresh.images_at(step2))
