"""The 2D VAE of the OT term, the per-image feature cache, and the OT term wired into training."""
import pytest
import torch

from sbt_lib.workbook.pipeline import trainers
from sbt_lib.checkpoint import load_checkpoint
from sbt_lib.data.datasets import load_dataset
from sbt_lib.data.cache import FeatureCache
from sbt_lib.objective.objective import Objective
from sbt_lib.workbook.config.params import resolve
from sbt_lib.models.tokenizer import SelfBootTok
from sbt_lib.train import TrainConfig, Trainer, train
from sbt_lib.models.vae2d import VAE2D, VAE2DConfig, as_2d_encoder
from sbt_lib.workbook.pipeline.vae2d import train_vae2d


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SBT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_vae_latents_are_raster_order_tokens():
    torch.manual_seed(0)
    vae = VAE2D(VAE2DConfig(image_size=16, downsample=4, latent_channels=3, channels=8))
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    mean, _ = vae.posterior(images)
    x = vae.latents(images)
    assert x.shape == (2, 16, 3)  # (16/4)² positions × 3 channels
    assert torch.equal(x[:, 5], mean[:, :, 1, 1])  # position 5 = row 1, column 1
    recon, kl = vae(images)
    assert recon.shape == images.shape and kl.shape == (2,) and (kl >= 0).all()
    with pytest.raises(ValueError, match="expects images B×3×16×16"):
        vae.latents(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="power of two"):
        VAE2DConfig(downsample=3)


def test_vae_trains_once_and_is_cached(cache, tiny_shapes):
    cfg = VAE2DConfig(image_size=16, channels=8)
    vae = train_vae2d(tiny_shapes, cfg, steps=30, batch_size=16, progress=False)
    images = tiny_shapes.images_at(torch.arange(32))
    with torch.no_grad():
        err_trained = (vae.decode(vae.posterior(images)[0]) - images).square().mean()
        err_init = (VAE2D(cfg).decode(VAE2D(cfg).posterior(images)[0]) - images).square().mean()
    assert err_trained < 0.5 * err_init  # it learned something
    again = train_vae2d(tiny_shapes, cfg, steps=30, batch_size=16, progress=True)  # a bar changes nothing
    assert again.fingerprint() == vae.fingerprint()  # loaded, not retrained
    assert len(list((cache / "vae2d").iterdir())) == 1
    other = load_dataset("shapes", "train", image_size=16, size=128, seed=1)  # other images: another key
    train_vae2d(other, cfg, steps=2, batch_size=16, progress=False)
    assert len(list((cache / "vae2d").iterdir())) == 2


def test_feature_cache_computes_once_and_reloads(cache, tiny_shapes):
    calls = []

    def encoder(images):
        calls.append(len(images))
        return images.mean((2, 3))  # B×3

    first = FeatureCache(encoder, tiny_shapes, "mean-rgb", batch_size=50, progress=False)
    assert calls == [50, 50, 28] and first.shape == (3,)
    second = FeatureCache(encoder, tiny_shapes, "mean-rgb", batch_size=50, progress=False)
    assert calls == [50, 50, 28]  # loaded from disk
    idx = torch.tensor([3, 100, 3])
    expected = tiny_shapes.images_at(idx).mean((2, 3))
    assert torch.allclose(second[idx], expected, atol=1e-2)  # float16 storage
    assert second[idx].dtype == torch.float32
    FeatureCache(encoder, tiny_shapes, "another-encoder", batch_size=128, progress=False)
    assert calls[-1] == 128  # another name is another cache


def test_as_2d_encoder_accepts_maps_and_tokens():
    maps = as_2d_encoder(lambda im: torch.ones(len(im), 4, 2, 3))
    assert maps(torch.zeros(5, 3, 8, 8)).shape == (5, 6, 4)
    assert as_2d_encoder(lambda im: torch.ones(len(im), 7, 4))(torch.zeros(5, 3, 8, 8)).shape == (5, 7, 4)
    with pytest.raises(ValueError, match="B×c×h×w maps or B×N×c tokens"):
        as_2d_encoder(lambda im: torch.ones(len(im), 4))(torch.zeros(5, 3, 8, 8))


def _ot_setup(tiny_config, data):
    torch.manual_seed(0)
    model = SelfBootTok(tiny_config, local_1d=True, local_2d="xs")
    latents = FeatureCache(lambda im: im.unfold(2, 4, 4).unfold(3, 4, 4).mean((-1, -2)).flatten(2).transpose(1, 2),
                           data, "avgpool4", folder=False, progress=False)  # 16 positions × 3 channels
    return model, Objective(tokenizer_cfg=model.cfg, latents_2d=latents, ot_weight=0.5)


def test_ot_term_is_logged_and_trains_the_2d_aligner(tiny_config, tiny_shapes):
    model, objective = _ot_setup(tiny_config, tiny_shapes)
    terms = objective(model, tiny_shapes.get_batch(torch.arange(8)))
    assert set(terms) == {"rec", "ot"} and terms["ot"] > 0
    terms["ot"].backward()
    assert model.aligner_2d.head.weight.grad.abs().sum() > 0  # L_OT reaches the 2D aligner …
    assert objective.ot.proj.weight.grad.abs().sum() > 0  # … and its projector
    assert model.last_layer.grad is None  # but not the decoder


def test_ot_term_needs_a_2d_aligner_and_latents(tiny_config, tiny_shapes):
    with pytest.raises(ValueError, match="OT term needs a tokenizer with local_2d tokens"):
        Objective(tokenizer_cfg=SelfBootTok(tiny_config, local_2d=None).cfg, ot_weight=0.1)
    with pytest.raises(ValueError, match="needs latents_2d"):
        Objective(tokenizer_cfg=SelfBootTok(tiny_config, local_2d="xs").cfg, ot_weight=0.1)


def test_projector_trains_and_survives_resume(tiny_config, tiny_shapes, tmp_path):
    cfg = TrainConfig(steps=6, batch_size=8, warmup=2, progress=False, log_every=1, device="cpu")  # bit-exact on CPU
    model, objective = _ot_setup(tiny_config, tiny_shapes)
    before = objective.ot.proj.weight.detach().clone()
    t = Trainer(model, objective, tiny_shapes, cfg, out_dir=tmp_path)
    for _ in range(3):
        t.train_step()
    t.save()
    assert not torch.equal(objective.ot.proj.weight, before)  # the projector is optimised
    saved = load_checkpoint(tmp_path / "checkpoint")[0]
    assert torch.equal(saved["loss.ot.proj.weight"], objective.ot.proj.weight.detach())
    straight_model, straight_obj = _ot_setup(tiny_config, tiny_shapes)
    straight = train(straight_model, straight_obj, tiny_shapes, cfg)
    model2, objective2 = _ot_setup(tiny_config, tiny_shapes)
    resumed = train(model2, objective2, tiny_shapes, cfg, out_dir=tmp_path)
    assert torch.equal(objective2.ot.proj.weight, straight_obj.ot.proj.weight)
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)


def test_builders_make_the_ot_objective_from_parameters(cache, tiny_shapes):
    params = resolve("03_ot_alignment", "tiny", local_1d=True, local_2d="xs", vae_steps=3)
    model = trainers.build_tokenizer(params, tiny_shapes)
    objective = trainers.build_objective(params, model, tiny_shapes, progress=False)
    assert objective.ot is not None and objective.cfg.ot_weight == params.objective.ot_weight
    assert objective.latents_2d.shape == (64, params.vae.latent_channels)  # (16/2)² positions
    assert trainers.build_objective(params.replace(ot_weight=0.0), model, tiny_shapes).ot is None


def test_inference_batches_default_to_the_device_and_do_not_change_the_result(cache, tiny_shapes):
    from sbt_lib.batch import inference_batch_size, map_batches

    assert inference_batch_size("cpu") == 64 and inference_batch_size(torch.device("cuda", 0)) == 250
    calls = []

    def encoder(images):
        calls.append(len(images))
        return images.mean((2, 3))

    cached = FeatureCache(encoder, tiny_shapes, "mean-rgb-default-batch", progress=False)
    assert calls == [64, 64]  # 128 images in batches of 64 on the CPU
    images = tiny_shapes.images_at(torch.arange(len(tiny_shapes)))
    whole = encoder(images)
    assert torch.equal(map_batches(encoder, images), whole) and calls[-1] == 128 - 64
    assert torch.allclose(cached[torch.arange(len(tiny_shapes))], whole, atol=1e-2)
