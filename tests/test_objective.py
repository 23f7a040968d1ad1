"""The full objective (Eq. 4-5): every term on, logged by name; the GAN step in the training engine;
REPA and its token↔patch correspondence; the KL term; teacher features served from the cache."""
import inspect
import math

import pytest
import torch

from sbt_lib.workbook.pipeline import trainers
from sbt_lib.checkpoint import load_checkpoint
from sbt_lib.data.cache import FeatureCache
from sbt_lib.objective.adversarial import ADVERSARIAL_DEFAULTS, Adversarial
from sbt_lib.objective.objective import FrozenInput, Objective, ObjectiveConfig
from sbt_lib.models.quantizer import kl_to_uniform
from sbt_lib.objective.repa import REPAlignment, patches_to_tokens, teacher_tokens
from sbt_lib.workbook.config.params import resolve
from sbt_lib.models.tokenizer import SelfBootTok
from sbt_lib.train import TrainConfig, Trainer, train

ALL_TERMS = dict(perceptual_weight=0.1, adv_weight=0.1, kl_weight=0.01, entropy_weight=0.01, repa_global_weight=0.5,
                 repa_local_weight=0.5, ot_weight=0.1)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SBT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _params(**kw):
    return resolve("base", "tiny", **{"local_1d": True, "local_2d": "xs", "vae_steps": 3, "adv_start": 0, **ALL_TERMS, **kw})


def _setup(data, **kw):
    params = _params(**kw)
    model = trainers.build_tokenizer(params, data)
    return model, trainers.build_objective(params, model, data, progress=False)


def test_every_term_is_on_and_named(cache, tiny_shapes):
    model, objective = _setup(tiny_shapes)
    terms = objective(model, tiny_shapes.get_batch(torch.arange(8), step=0))
    assert set(terms) == {"rec", "perceptual_effnet", "entropy", "kl", "repa_global", "repa_local", "ot", "adv_g"}
    assert all(torch.isfinite(v) for v in terms.values())
    d_terms = objective.critic_terms(tiny_shapes.get_batch(torch.arange(8), step=0))
    assert set(d_terms) == {"d_hinge", "d_lecam", "d_consistency"}
    # the frozen networks are not part of the objective's state (checkpoints stay small)
    assert not any(k.startswith("_frozen") or "teacher" in k for k in objective.state_dict())
    perceptual = objective._frozen["perceptual"]
    assert objective.to(torch.float64) is objective and next(perceptual.parameters()).dtype == torch.float64
    objective.to(torch.float32)  # .to() reaches the frozen networks, which stay out of the state
    assert objective.adversarial.discriminator.from_rgb.weight.requires_grad


def test_training_with_every_term_logs_each_and_steps_the_discriminator(cache, tiny_shapes):
    model, objective = _setup(tiny_shapes)
    cfg = TrainConfig(steps=3, batch_size=8, warmup=1, progress=False, log_every=1)
    disc_before = objective.adversarial.discriminator.out.weight.detach().clone()
    result = train(model, objective, tiny_shapes, cfg)
    rows = [r for r in result.history if "loss" in r]
    for key in ("perceptual_effnet", "repa_global", "repa_local", "ot", "kl", "adv_g", "d_hinge", "d_lecam",
                "d_consistency", "d_grad_norm"):
        assert all(key in r and math.isfinite(r[key]) for r in rows), key
    assert not torch.equal(objective.adversarial.discriminator.out.weight.cpu(), disc_before.cpu())  # D trained …
    # … by its own optimizer: the tokenizer's optimizer holds no discriminator parameter
    disc_ids = {id(p) for p in objective.adversarial.parameters()}
    trainer = Trainer(model, objective, tiny_shapes, cfg)
    assert not disc_ids & {id(p) for g in trainer.opt.param_groups for p in g["params"]}
    assert disc_ids == {id(p) for g in trainer.opt_d.param_groups for p in g["params"]}


def test_gan_state_survives_resume_exactly(cache, tiny_shapes, tmp_path):
    """4 steps + save + resume + 4 steps = 8 steps straight, LeCAM buffers and both optimizers included
    (bit-exact on the CPU; CUDA kernels need not be deterministic)."""
    cfg = TrainConfig(steps=8, batch_size=8, warmup=2, progress=False, log_every=1, device="cpu")
    terms = dict(perceptual_weight=0.0, repa_global_weight=0.0, repa_local_weight=0.0, ot_weight=0.0)
    model, straight_obj = _setup(tiny_shapes, **terms)
    straight = train(model, straight_obj, tiny_shapes, cfg)
    model, half_obj = _setup(tiny_shapes, **terms)
    t = Trainer(model, half_obj, tiny_shapes, cfg, out_dir=tmp_path)
    for _ in range(4):
        t.train_step()
    t.save()
    saved = load_checkpoint(tmp_path / "checkpoint")[0]
    assert saved["loss.adversarial.lecam.initialized"].item()
    assert torch.equal(saved["loss.adversarial.lecam.ema_real"], half_obj.adversarial.lecam.ema_real)
    assert any(k.startswith("optim_d.") for k in saved)
    model, resumed_obj = _setup(tiny_shapes, **terms)
    resumed = train(model, resumed_obj, tiny_shapes, cfg, out_dir=tmp_path)
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    for (name, a), b in zip(straight_obj.state_dict().items(), resumed_obj.state_dict().values()):
        assert torch.equal(a, b), name  # discriminator weights and LeCAM buffers


def test_teachers_do_not_run_during_training(cache, tiny_shapes, monkeypatch):
    model, objective = _setup(tiny_shapes, adv_weight=0.0, perceptual_weight=0.0)
    from sbt_lib.models import teachers

    def boom(*a, **k):
        raise AssertionError("a teacher ran during training")

    monkeypatch.setattr(teachers.Teacher, "forward", boom)
    train(model, objective, tiny_shapes, TrainConfig(steps=2, batch_size=8, warmup=1, progress=False))
    # and the features it trained on are the teacher's, looked up by index
    monkeypatch.undo()
    hog = teachers.load_teacher("hog", 16)
    idx = torch.tensor([5, 0])
    expected = patches_to_tokens(teacher_tokens(hog(tiny_shapes.images_at(idx))), model.cfg.num_tokens)
    assert torch.allclose(objective.teacher_features["local"][idx], expected, atol=1e-2)


def test_patches_to_tokens_is_raster_order_pooling():
    patches = torch.arange(4.0).view(1, 4, 1)  # P = 4 patches, C = 1
    assert patches_to_tokens(patches, 2).flatten().tolist() == [0.5, 2.5]  # tokens pair with patch pairs
    assert patches_to_tokens(patches, 8).flatten().tolist() == [0, 0, 1, 1, 2, 2, 3, 3]  # neighbours share
    fmap = torch.arange(6.0).view(1, 1, 2, 3)  # C = 1, h = 2, w = 3
    assert teacher_tokens(fmap).flatten().tolist() == [0, 1, 2, 3, 4, 5]  # row by row


def test_repa_loss_range_and_gradients():
    torch.manual_seed(0)
    repa = REPAlignment(token_dim=4, teacher_dim=6, hidden=16)
    tokens = torch.randn(2, 8, 4, requires_grad=True)
    target = torch.randn(2, 16, 6, requires_grad=True)
    loss = repa(tokens, target)
    assert 0 <= loss.item() <= 2
    loss.backward()
    assert tokens.grad.abs().sum() > 0 and repa.proj[0].weight.grad.abs().sum() > 0
    opt = torch.optim.Adam([tokens, *repa.parameters()], lr=0.05)
    for _ in range(100):
        opt.zero_grad()
        repa(tokens, target.detach()).backward()
        opt.step()
    assert repa(tokens, target).item() < 0.5 * loss.item()  # the tokens can be aligned
    with pytest.raises(ValueError, match="teacher features have 5 dims"):
        repa(tokens, torch.randn(2, 16, 5))


def test_kl_to_uniform():
    k = 8
    assert kl_to_uniform(torch.full((2, 3, k), 1 / k)).item() == pytest.approx(0.0, abs=1e-6)
    one_hot = torch.zeros(2, 3, k)
    one_hot[..., 0] = 1
    assert kl_to_uniform(one_hot).item() == pytest.approx(math.log(k), rel=1e-5)
    spread = torch.eye(k).view(1, k, k)  # every token one-hot, but on different codewords
    assert kl_to_uniform(spread).item() == pytest.approx(0.0, abs=1e-6)


def test_terms_without_their_inputs_are_clear_errors(tiny_config, tiny_shapes):
    cfg = SelfBootTok(tiny_config).cfg
    with pytest.raises(ValueError, match="teacher_features\\['global'\\]"):
        Objective(tokenizer_cfg=cfg, repa_global_weight=0.5)
    with pytest.raises(ValueError, match="needs a tokenizer with local_2d tokens"):
        Objective(tokenizer_cfg=SelfBootTok(tiny_config, local_2d=None).cfg, repa_local_weight=0.5,
                  repa_local_group="local_2d",
                  teacher_features={"local": FeatureCache(lambda x: x.flatten(2).transpose(1, 2), tiny_shapes,
                                                          "pixels", folder=False, progress=False)})
    with pytest.raises(ValueError, match="repa_local_group must be one of"):
        Objective(tokenizer_cfg=cfg, repa_local_group="global")
    with pytest.raises(TypeError, match="unknown ObjectiveConfig parameter"):
        Objective(tokenizer_cfg=cfg, repa_weight=0.5)


def test_the_objective_declares_every_frozen_input_it_reads(tiny_config, tiny_shapes):
    cfg = SelfBootTok(tiny_config).cfg
    assert ObjectiveConfig().frozen_inputs(cfg) == {}  # reconstruction alone reads nothing frozen
    on = ObjectiveConfig(ot_weight=0.1, repa_global_weight=0.5, repa_local_weight=0.5, glotok_weight=0.1)
    needs = on.frozen_inputs(cfg)
    assert set(needs) == {"latents_2d", "global", "local", "relation"}
    assert needs["global"] == FrozenInput("teacher", on.repa_global_teacher, cfg.num_tokens)
    assert needs["local"].tokens == cfg.num_group_tokens(on.repa_local_group)
    assert needs["relation"].tokens == 1

    def fake(need):  # a cache of the declared shape, made without any network
        width = 4 if need.kind == "latents_2d" else 6
        n = (tiny_config.image_size // 4) ** 2 if need.kind == "latents_2d" else need.tokens
        return FeatureCache(lambda x: torch.zeros(len(x), n, width), tiny_shapes, f"fake-{n}", folder=False,
                            progress=False)

    made = {name: fake(need) for name, need in needs.items()}
    Objective(on, cfg, latents_2d=made.pop("latents_2d"), teacher_features=made)  # what is declared suffices
    for missing in needs:  # ... and each declared input is needed
        made = {name: fake(need) for name, need in needs.items() if name != missing}
        with pytest.raises(ValueError, match="needs"):
            Objective(on, cfg, latents_2d=made.pop("latents_2d", None), teacher_features=made)


# ObjectiveConfig field -> Adversarial argument: the settings the two share
SHARED_ADVERSARIAL = {"disc_channels": "channels", "adv_start": "start_step", "adv_adaptive": "adaptive",
                      "lecam_weight": "lecam_weight", "consistency_weight": "consistency_weight"}


def test_adversarial_defaults_have_one_source(tiny_config):
    """ObjectiveConfig's adversarial defaults are Adversarial's (ADVERSARIAL_DEFAULTS), and keep the values
    every notebook run used (width 8, start 0, adaptive, LeCAM 0.001, bCR 4.0)."""
    cfg, signature = ObjectiveConfig(), inspect.signature(Adversarial).parameters
    for field, arg in SHARED_ADVERSARIAL.items():
        assert getattr(cfg, field) == signature[arg].default == getattr(ADVERSARIAL_DEFAULTS, arg), field
    assert (cfg.disc_channels, cfg.adv_start, cfg.adv_adaptive, cfg.lecam_weight, cfg.consistency_weight) == \
        (8, 0, True, 0.001, 4.0)
    assert cfg.adv_weight == 0.0  # λ2 is not shared: 0 means no adversarial term at all
    # and the objective hands its settings on to the term it builds
    adv = Objective(tokenizer_cfg=SelfBootTok(tiny_config).cfg, adv_weight=0.3, lecam_weight=0.01).adversarial
    assert (adv.weight, adv.lecam_weight, adv.consistency_weight, adv.start_step, adv.adaptive) == \
        (0.3, 0.01, 4.0, 0, True)
