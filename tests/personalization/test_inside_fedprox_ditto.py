"""FedProx proximal term and Ditto penalty: values and gradients against closed forms."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from personalization.errors import PersonalizationError, StateDictError
from personalization.inside.ditto import ditto_penalty, ditto_personal_step
from personalization.inside.fedprox import anchor_params, proximal_term


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.PReLU(), nn.Conv2d(3, 2, 1))


def _moved(model: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen))


def test_proximal_term_value_and_gradient() -> None:
    model = _model(0)
    anchor = anchor_params(model)
    _moved(model, 1)
    mu = 0.3
    term = proximal_term(model, anchor, mu)
    w = nn.utils.parameters_to_vector(model.parameters()).detach()
    g = torch.cat([anchor[n].flatten() for n, _ in model.named_parameters()])
    assert term.item() == pytest.approx(mu / 2 * float(((w - g) ** 2).sum()), rel=1e-5)
    term.backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, mu * (p.detach() - anchor[name]))
        assert anchor[name].grad is None


def test_anchor_is_a_detached_copy_that_training_does_not_move() -> None:
    model = _model(0)
    anchor = anchor_params(model)
    before = {k: v.clone() for k, v in anchor.items()}
    _moved(model, 2)
    assert all(torch.equal(anchor[k], before[k]) and not anchor[k].requires_grad for k in anchor)
    assert "1.running_mean" not in anchor  # buffers are not parameters


def test_proximal_term_skips_frozen_parameters_and_accepts_full_state_dicts() -> None:
    model = _model(0)
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    _moved(model, 3)
    model[0].weight.requires_grad_(False)
    term = proximal_term(model, global_state, 1.0)
    expected = sum(
        float(((p.detach() - global_state[n]) ** 2).sum())
        for n, p in model.named_parameters()
        if n != "0.weight"
    )
    assert term.item() == pytest.approx(expected / 2, rel=1e-5)


def test_proximal_term_is_zero_at_the_anchor_and_for_mu_zero() -> None:
    model = _model(0)
    anchor = anchor_params(model)
    assert proximal_term(model, anchor, 5.0).item() == 0.0
    _moved(model, 4)
    assert proximal_term(model, anchor, 0.0).item() == 0.0
    assert proximal_term(model, anchor, 1.0).item() > 0.0


def test_proximal_term_refuses_bad_inputs() -> None:
    model = _model(0)
    anchor = anchor_params(model)
    with pytest.raises(PersonalizationError, match=r"mu: .*greater than or equal to 0"):
        proximal_term(model, anchor, -1.0)
    with pytest.raises(StateDictError, match=r"3\.weight"):
        proximal_term(model, {k: v for k, v in anchor.items() if k != "3.weight"}, 1.0)
    with pytest.raises(StateDictError, match="shape"):
        proximal_term(model, anchor | {"3.bias": torch.zeros(5)}, 1.0)


def test_ditto_penalty_gradient_equals_closed_form() -> None:
    personal = _model(0)
    theta = anchor_params(_model(1))
    lam = 0.7
    penalty = ditto_penalty(personal, theta, lam)
    diff = [(p.detach() - theta[n]) for n, p in personal.named_parameters()]
    assert penalty.item() == pytest.approx(
        lam / 2 * sum(float((d**2).sum()) for d in diff), rel=1e-5
    )
    penalty.backward()
    for (_, p), d in zip(personal.named_parameters(), diff, strict=True):
        torch.testing.assert_close(p.grad, lam * d)


def test_ditto_personal_step_is_one_sgd_step_on_loss_plus_penalty() -> None:
    personal = nn.Linear(4, 1)
    theta = {k: torch.randn_like(v) for k, v in personal.state_dict().items()}
    theta_before = {k: v.clone() for k, v in theta.items()}
    v0 = {k: v.detach().clone() for k, v in personal.named_parameters()}
    lr, lam = 0.1, 0.5
    opt = torch.optim.SGD(personal.parameters(), lr=lr)

    def loss_fn(m: nn.Module) -> torch.Tensor:  # f(v) = ½‖v‖², so ∇f(v) = v
        return sum(0.5 * (p**2).sum() for p in m.parameters())

    reported = ditto_personal_step(personal, theta, loss_fn, opt, lam)
    assert reported == pytest.approx(sum(0.5 * float((v**2).sum()) for v in v0.values()))
    for name, p in personal.named_parameters():
        expected = v0[name] - lr * (v0[name] + lam * (v0[name] - theta[name]))
        torch.testing.assert_close(p.detach(), expected)
        assert torch.equal(theta[name], theta_before[name])


def test_ditto_personal_step_refuses_non_finite_or_non_scalar_losses() -> None:
    personal = nn.Linear(2, 1)
    theta = anchor_params(personal)
    opt = torch.optim.SGD(personal.parameters(), lr=0.1)
    before = personal.weight.detach().clone()
    with pytest.raises(PersonalizationError, match="not finite"):
        ditto_personal_step(personal, theta, lambda m: m.weight.sum() * float("nan"), opt, 0.1)
    with pytest.raises(PersonalizationError, match="scalar"):
        ditto_personal_step(personal, theta, lambda m: m.weight, opt, 0.1)
    assert torch.equal(personal.weight.detach(), before)
    with pytest.raises(PersonalizationError, match="lambda"):
        ditto_penalty(personal, theta, -0.1)
