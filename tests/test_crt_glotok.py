"""CRT's causal regulariser and GloTok's histogram relations and residual recovery (notebook 06)."""
import pytest
import torch
import torch.nn.functional as F

from sbt_lib.data.datasets import load_dataset
from sbt_lib.models.tokenizer import SelfBootTok
from sbt_lib.objective.crt import CausalRegularizer
from sbt_lib.objective.glotok import histogram_relation_loss, histograms
from sbt_lib.objective.objective import Objective, ObjectiveConfig
from sbt_lib.workbook.config.params import resolve
from sbt_lib.workbook.pipeline import trainers


@pytest.fixture(scope="module")
def setup():
    P = resolve("05_generation", "tiny")
    train_set = load_dataset("shapes", "train", image_size=16, size=64, seed=0)
    return P, train_set, train_set.get_batch(torch.arange(8))


def _model(P, **kw):
    torch.manual_seed(0)
    return SelfBootTok(P.tokenizer, **kw)


def test_crt_predicts_each_code_from_the_tokens_before_it_only():
    torch.manual_seed(0)
    crt = CausalRegularizer(token_dim=4, num_tokens=6, codebook_size=10)
    z = torch.randn(2, 6, 4)
    moved = z.clone()
    moved[:, 3] += 1.0
    a, b = crt.logits(z), crt.logits(moved)
    assert torch.equal(a[:, :4], b[:, :4])  # positions 0..3 see tokens < them: not token 3
    assert not torch.allclose(a[:, 4:], b[:, 4:])
    z.requires_grad_(True)
    q = torch.softmax(torch.randn(2, 6, 10), -1).requires_grad_(True)
    crt(z, q).backward()
    assert q.grad is None and z.grad[:, :-1].abs().sum() > 0 and z.grad[:, -1].abs().sum() == 0  # targets detached


def test_the_crt_term_is_logged_and_reaches_the_encoder(setup):
    P, train_set, batch = setup
    model = _model(P)
    objective = Objective(ObjectiveConfig(crt_weight=0.5), model.cfg)
    terms = objective(model, batch)
    assert set(terms) == {"rec", "crt"} and terms["crt"] > 0
    terms["crt"].backward()
    assert model.encoder.to_tokens.weight.grad.abs().sum() > 0
    assert objective.crt.head.weight.grad.abs().sum() > 0  # the predictor trains with the tokenizer
    assert model.decoder.head.last.weight.grad is None or model.decoder.head.last.weight.grad.abs().sum() == 0


def test_histogram_relation_is_zero_for_matching_relations_and_reaches_the_encoder(setup):
    probs = torch.softmax(torch.randn(6, 5, 12), -1)
    assert histogram_relation_loss(probs, histograms(probs)).abs() < 1e-6  # the same relations: KL 0
    assert histogram_relation_loss(probs, torch.randn(6, 32)) > 1e-3
    with pytest.raises(ValueError, match="at least 3"):
        histogram_relation_loss(probs[:2], torch.randn(2, 32))
    P, train_set, batch = setup
    Q = P.replace(glotok_weight=1.0)
    model = _model(Q)
    objective = trainers.build_objective(Q, model, train_set, progress=False)
    terms = objective(model, batch)
    assert set(terms) == {"rec", "glotok"} and terms["glotok"] > 0
    terms["glotok"].backward()
    assert model.encoder.to_tokens.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="relation"):
        Objective(ObjectiveConfig(glotok_weight=1.0), model.cfg)


def test_residual_recovery_is_the_identity_at_initialisation_and_learns_the_residual(setup):
    P, _, batch = setup
    plain, with_residual = _model(P), _model(P, residual_recovery=True)
    assert with_residual.num_params()["residual"] > 0 and plain.num_params()["residual"] == 0
    missing, unexpected = with_residual.load_state_dict(plain.state_dict(), strict=False)  # the same weights elsewhere
    assert not unexpected and missing and all(k.startswith("residual.") for k in missing)
    with torch.no_grad():
        assert torch.equal(plain(batch.images)[0], with_residual(batch.images)[0])  # bit-identical at init
    objective = Objective(ObjectiveConfig(residual_weight=1.0), with_residual.cfg)
    opt = torch.optim.Adam(with_residual.residual.parameters(), lr=1e-3)  # the residuals are small: 1e-2 overshoots
    losses = []
    for _ in range(30):
        terms = objective(with_residual, batch)
        opt.zero_grad()
        terms["residual"].backward()
        opt.step()
        losses.append(terms["residual"].item())
    assert losses[-1] < 0.8 * losses[0]  # it learns what quantization took away
    with pytest.raises(ValueError, match="residual_recovery"):
        Objective(ObjectiveConfig(residual_weight=1.0), plain.cfg)


def test_with_every_switch_off_the_objective_is_the_old_one_bit_for_bit(setup):
    P, _, batch = setup
    model = _model(P)
    objective = Objective(ObjectiveConfig(crt_weight=0.0, glotok_weight=0.0, residual_weight=0.0), model.cfg)
    assert objective.crt is None and not list(objective.parameters())
    terms = objective(model, batch)
    with torch.no_grad():
        expected = F.mse_loss(model(batch.images)[0].float(), batch.images.float())
    assert set(terms) == {"rec"} and torch.equal(terms["rec"].detach(), expected)
    assert "residual" not in " ".join(model.state_dict())
