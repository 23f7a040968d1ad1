"""Two-stage aligner scaling (paper §3.4): stage 2 grows the 2D aligner with z_global fixed."""
import json
import os
import signal

import pytest
import torch

from sbt_lib.eval.flops import training_step_flops
from sbt_lib.models.aligners import LocalAligner2D
from sbt_lib.models.two_stage import FREEZE, stage2_tokenizer
from sbt_lib.objective.stage2 import Stage2Loss
from sbt_lib.train import Trainer
from sbt_lib.workbook.config.params import resolve
from sbt_lib.workbook.pipeline import caches, trainers
from sbt_lib.workbook.pipeline.runs import load_tokenizer


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    """A tiny stage-1 tokenizer of notebook 04 (xs aligner), trained a few steps, and its data."""
    P = resolve("04_aligner_scaling", "tiny", steps=4, train_size=64, test_size=16)
    train_set, test_set = caches.load_data(P)
    out = tmp_path_factory.mktemp("stage1")
    parent = trainers.train_tokenizer(P, train_set, test_set, out, progress=False, evaluate=False).model.eval()
    return P, parent, train_set, test_set


def test_aligner_presets_span_30x_at_cpu_and_name_the_paper_sizes():
    P = resolve("04_aligner_scaling", "cpu")
    t = P.tokenizer
    count = {n: LocalAligner2D.from_preset(n, t.token_dim, t.local_tokens, num_global_tokens=t.num_tokens).num_params()
             for n in P.stage2.aligners}
    assert max(count.values()) / min(count.values()) >= 30, count
    with torch.device("meta"):  # the paper's sizes, counted without memory (64 tokens × 32, as in the paper)
        for name in ("10M", "50M", "150M", "300M", "600M"):
            n = LocalAligner2D.from_preset(name, 32, 64).num_params()
            assert abs(n / (float(name[:-1]) * 1e6) - 1) < 0.15, (name, n)


@pytest.mark.parametrize("freeze", list(FREEZE))
def test_stage2_keeps_z_global_bit_identical(stage1, tmp_path, freeze):
    P, parent, train_set, test_set = stage1
    images = test_set.images_at(torch.arange(8))
    with torch.no_grad():
        before = parent.encode_global(images)
    Q = P.replace(stage2_freeze=freeze, stage2_steps=3, ema=0.5)
    result = trainers.train_stage2(Q, parent, "s", train_set, test_set, tmp_path, progress=False)
    for child in (result.model, result.ema, load_tokenizer(tmp_path)):
        child = child.cpu().eval()
        assert child.cfg.local_2d == "s"
        with torch.no_grad():
            assert torch.equal(child.encode_global(images), before)
    trained = {n for n, p in result.model.named_parameters() if p.requires_grad}
    assert trained and all(n.startswith("aligner_2d.") or n.startswith("quantizers.local_2d.") for n in trained) \
        if freeze == "all" else not any(n.startswith(("encoder.", "quantizers.global.")) for n in trained)
    assert any(n.startswith("decoder.") for n in trained) == (freeze == "encoder")


def test_stage2_actually_trains_the_new_aligner(stage1, tmp_path):
    P, parent, train_set, test_set = stage1
    start = stage2_tokenizer(parent, "s", seed=P.seed).aligner_2d.state_dict()
    trained = trainers.train_stage2(P.replace(stage2_steps=3), parent, "s", train_set, test_set, tmp_path,
                                    progress=False).model.cpu().aligner_2d.state_dict()
    assert any(not torch.equal(v, trained[k]) for k, v in start.items())


@pytest.mark.parametrize("freeze", ["none", "nothing", "decoder"])
def test_a_setting_that_would_change_z_global_is_refused(stage1, freeze):
    _, parent, _, _ = stage1
    with pytest.raises(ValueError, match="z_global would change.*generator.*reused"):
        stage2_tokenizer(parent, "m", freeze=freeze)


def test_stage2_needs_a_2d_aligner_to_grow(stage1):
    P, _, train_set, _ = stage1
    flat = trainers.build_tokenizer(P.replace(local_2d=None), train_set)
    with pytest.raises(ValueError, match="has none"):
        stage2_tokenizer(flat, "m")


def test_cached_global_tokens_give_the_loss_of_the_live_encoder(stage1):
    P, parent, train_set, _ = stage1
    cache = caches.global_token_cache(parent, train_set, P, progress=False)
    child = stage2_tokenizer(parent, "m", seed=0).eval()
    batch = train_set.get_batch(torch.arange(5, 21))
    cached, live = Stage2Loss(cache)(child, batch)["rec"], Stage2Loss(None)(child, batch)["rec"]
    assert torch.allclose(cached, live, rtol=1e-5, atol=1e-7)
    assert torch.allclose(cache[batch.indices], parent.encode_global(batch.images).detach(), atol=1e-6)


def test_a_stage2_step_costs_less_than_a_stage1_step(stage1):
    P, parent, train_set, _ = stage1
    batch = train_set.get_batch(torch.arange(16))
    child = stage2_tokenizer(parent, "m", seed=0)
    full = trainers.build_tokenizer(P.replace(local_2d="m"), train_set)
    stage2 = training_step_flops(child, Stage2Loss(caches.global_token_cache(parent, train_set, P, False)), batch)
    stage1_flops = training_step_flops(full, trainers.build_objective(P, full, train_set, progress=False), batch)
    assert 0 < stage2 < stage1_flops


def test_stage2_resume_is_exact(stage1, tmp_path, monkeypatch):
    """Stage 2 interrupted by Ctrl-C (a real SIGINT, during step 2 of 4) stops at a step boundary, saves, and
    run again ends with the weights of 4 steps straight."""
    P, parent, train_set, test_set = stage1
    Q = P.replace(stage2_steps=4)
    straight = trainers.train_stage2(Q, parent, "s", train_set, test_set, tmp_path / "a", progress=False)
    step = Trainer.train_step

    def interrupted(self):
        if self.step == 2:
            os.kill(os.getpid(), signal.SIGINT)  # held until the step ends
        return step(self)

    monkeypatch.setattr(Trainer, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        trainers.train_stage2(Q, parent, "s", train_set, test_set, tmp_path / "b", progress=False)
    assert json.loads((tmp_path / "b" / "checkpoint.json").read_text())["step"] == 3  # step 2 finished, then saved
    monkeypatch.setattr(Trainer, "train_step", step)
    resumed = trainers.train_stage2(Q, parent, "s", train_set, test_set, tmp_path / "b", progress=False)
    assert resumed.step == 4
    for name, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name


# ----------------------------------------------------------------------------- variants on a base tokenizer

BASE = dict(image_size=16, patch_size=8, width=32, encoder_depth=1, decoder_depth=1, num_heads=2, num_tokens=8,
            token_dim=4, codebook_size=32, conv_channels=8, trunk="conv", dense_path=True, local_1d=True,
            local_2d="xs")


@pytest.mark.parametrize("switches", [dict(local_1d=False, local_2d=None), dict(local_2d=None), dict(causal=False),
                                      dict(fusion="concat"), dict(shared_codebook=True), dict(decoder_depth=2)])
def test_a_variant_on_a_base_has_exactly_its_global_tokens_and_trains_only_after_them(switches):
    from sbt_lib.models.tokenizer import SelfBootTok
    from sbt_lib.models.two_stage import on_base

    torch.manual_seed(0)
    base = SelfBootTok(**BASE).eval()
    variant = on_base(base, seed=1, **switches).eval()
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    torch.testing.assert_close(variant.encode_global(x), base.encode_global(x), rtol=0, atol=0)
    trainable = {n for n, p in variant.named_parameters() if p.requires_grad}
    assert trainable and not any(n.startswith(("encoder.", "quantizers.global.", "quantizers.shared.")) for n in trainable)
    assert any(n.startswith("decoder.") for n in trainable)


def test_a_variant_on_a_base_inherits_the_decoder_where_it_fits_or_starts_fresh():
    from sbt_lib.models.tokenizer import SelfBootTok
    from sbt_lib.models.two_stage import on_base

    torch.manual_seed(0)
    base = SelfBootTok(**BASE)
    same = on_base(base, seed=1)
    for k, v in base.state_dict().items():
        torch.testing.assert_close(same.state_dict()[k], v)  # the same switches: the base itself
    fresh = on_base(base, seed=1, inherit_decoder=False)
    assert not torch.equal(fresh.decoder.queries, base.decoder.queries)
    g = on_base(base, seed=1, local_1d=False, local_2d=None)  # a shorter memory: token positions cannot be inherited
    torch.testing.assert_close(g.decoder.queries, base.decoder.queries)
    assert g.decoder.token_pos.shape != base.decoder.token_pos.shape


def test_a_finetuned_variant_starts_as_the_base_and_trains_everything():
    from sbt_lib.models.tokenizer import SelfBootTok
    from sbt_lib.models.two_stage import on_base

    torch.manual_seed(0)
    base = SelfBootTok(**BASE).eval()
    g = on_base(base, seed=1, finetune=True, local_1d=False, local_2d=None, residual_recovery=True).eval()
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    torch.testing.assert_close(g.encode_global(x), base.encode_global(x), rtol=0, atol=0)  # the base's code at the start
    torch.testing.assert_close(g.decoder.queries, base.decoder.queries)  # its decoder too, where the shapes fit
    assert all(p.requires_grad for p in g.parameters())  # ... and then everything trains, the encoder included
    assert any(n.startswith("residual.") for n, _ in g.named_parameters())  # a part the base lacks starts fresh


def test_a_variant_on_a_base_cannot_change_the_global_tokens():
    from sbt_lib.models.tokenizer import SelfBootTok
    from sbt_lib.models.two_stage import on_base

    with pytest.raises(ValueError, match="num_tokens"):
        on_base(SelfBootTok(**BASE), num_tokens=4)


def test_the_objective_on_cached_global_tokens_is_the_objective_on_the_frozen_encoder(tmp_path, monkeypatch):
    """A decoder-side variant reads its global tokens from a cache: the same terms, to float precision, as running
    the frozen encoder every step; and a term that could only train the encoder is refused."""
    from sbt_lib.batch import Batch
    from sbt_lib.data.cache import FeatureCache
    from sbt_lib.data.datasets import load_dataset
    from sbt_lib.models.tokenizer import SelfBootTok
    from sbt_lib.models.two_stage import on_base
    from sbt_lib.objective.objective import Objective, ObjectiveConfig

    monkeypatch.setenv("SBT_CACHE", str(tmp_path))
    data = load_dataset("shapes", "train", image_size=16, size=32, seed=0)
    torch.manual_seed(0)
    base = SelfBootTok(**BASE).eval()
    variant = on_base(base, seed=1, local_2d=None)
    with torch.no_grad():
        z = FeatureCache(base.encode_global, data, "zglobal-test", dtype=torch.float32, progress=False)
    idx = torch.tensor([3, 7, 11])
    batch = Batch(images=data.images_at(idx), targets=torch.zeros(3, dtype=torch.long), indices=idx)
    cfg = ObjectiveConfig(entropy_weight=0.01)
    grads = []
    for objective in (Objective(cfg, variant.cfg, z_global=z), Objective(cfg, variant.cfg)):
        variant.zero_grad()
        terms = objective(variant, batch)
        sum(terms.values()).backward()
        grads.append({n: p.grad.clone() for n, p in variant.named_parameters() if p.grad is not None})
        grads.append(terms["rec"].detach())
    torch.testing.assert_close(grads[1], grads[3])  # the same reconstruction
    assert set(grads[0]) == set(grads[2]) and grads[0]  # the same trainable tensors get gradients, the same ones
    for name in grads[0]:  # (the global codebook's entropy is a constant of the frozen encoder: no gradient)
        torch.testing.assert_close(grads[0][name], grads[2][name], rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="repa_global_weight"):
        Objective(ObjectiveConfig(repa_global_weight=0.5), variant.cfg, z_global=z)


def test_the_parameter_matched_control_has_about_the_full_models_decoder_side():
    from sbt_lib.models.tokenizer import SelfBootTok
    from sbt_lib.models.two_stage import decoder_side_params, on_base
    from sbt_lib.workbook.pipeline.ablations import matched_control

    base = SelfBootTok(**BASE)
    full = dict(local_1d=True, local_2d="m")
    control = matched_control(base, full)
    assert control["local_1d"] is False and control["local_2d"] is None and control["decoder_depth"] > 1
    target = decoder_side_params(on_base(base, **full))
    counts = {d: decoder_side_params(on_base(base, local_1d=False, local_2d=None, decoder_depth=d)) for d in range(1, 13)}
    assert abs(counts[control["decoder_depth"]] - target) == min(abs(c - target) for c in counts.values())
    assert decoder_side_params(base) < sum(p.numel() for p in base.parameters())  # the encoder is not counted
