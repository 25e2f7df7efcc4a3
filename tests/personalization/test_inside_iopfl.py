"""IOP-FL personal-model update: P ← α·P + (1−α)·W and its decomposed form."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data_specs.task_spec import TaskSpec, build_unet
from personalization.errors import PersonalizationError, StateDictError
from personalization.inside.iopfl import update_personal, update_personal_decomposed


def _random_state(gen: torch.Generator, counter: int) -> dict[str, torch.Tensor]:
    return {
        "enc.weight": torch.randn(6, 3, 3, 3, generator=gen),
        "enc.bias": torch.randn(6, generator=gen),
        "bn.running_mean": torch.randn(6, generator=gen).double(),
        "bn.num_batches_tracked": torch.tensor(counter, dtype=torch.int64),
    }


def _unet_states() -> tuple[dict, dict, dict]:
    """θ, W and P of a real tiny U-Net: W is θ after some local change, P an older model."""
    torch.manual_seed(0)
    spec = TaskSpec(channels=(4, 8), strides=(2,), norm="batch")
    theta = build_unet(spec).state_dict()
    personal = build_unet(spec).state_dict()
    model = build_unet(spec)
    model.load_state_dict(theta)
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 1, 32, 32))  # moves BatchNorm statistics and the counters
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    local = {k: v.clone() for k, v in model.state_dict().items()}
    return theta, local, personal


def _reference(p: dict, w: dict, alpha: float) -> dict[str, np.ndarray]:
    out = {}
    for key, wv in w.items():
        if wv.is_floating_point():
            out[key] = alpha * p[key].double().numpy() + (1 - alpha) * wv.double().numpy()
        else:
            out[key] = wv.numpy()
    return out


@pytest.mark.parametrize("alpha", [0.1, 0.5, 0.9])
def test_update_matches_reference_and_decomposed_form_on_random_states(alpha: float) -> None:
    gen = torch.Generator().manual_seed(1)
    p, w, theta = _random_state(gen, 5), _random_state(gen, 9), _random_state(gen, 2)
    mixed = update_personal(p, w, alpha)
    decomposed = update_personal_decomposed(p, w, theta, alpha)
    ref = _reference(p, w, alpha)
    for key in w:
        assert mixed[key].dtype == w[key].dtype
        np.testing.assert_allclose(mixed[key].numpy(), ref[key], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(decomposed[key], mixed[key], rtol=1e-5, atol=1e-6)
    assert mixed["bn.num_batches_tracked"].item() == 9
    assert decomposed["bn.num_batches_tracked"].item() == 9


def test_update_on_a_real_unet_mixes_weights_and_norm_statistics() -> None:
    theta, local, personal = _unet_states()
    alpha = 0.3
    mixed = update_personal(personal, local, alpha)
    decomposed = update_personal_decomposed(personal, local, theta, alpha)
    ref = _reference(personal, local, alpha)
    assert list(mixed) == list(local)
    for key in local:
        np.testing.assert_allclose(mixed[key].numpy(), ref[key], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(decomposed[key], mixed[key], rtol=1e-5, atol=1e-6)
    stat = "model.0.conv.unit0.adn.N.running_mean"
    assert not torch.equal(local[stat], personal[stat])  # the statistics did move
    torch.testing.assert_close(mixed[stat], alpha * personal[stat] + (1 - alpha) * local[stat])
    assert mixed["model.0.conv.unit0.adn.N.num_batches_tracked"].item() == 1


@pytest.mark.parametrize("decomposed", [False, True])
def test_first_round_personal_is_a_copy_of_the_local_model(decomposed: bool) -> None:
    w = _random_state(torch.Generator().manual_seed(2), 4)
    if decomposed:
        personal = update_personal_decomposed(None, w, w, 0.7)
    else:
        personal = update_personal(None, w, 0.7)
    for key in w:
        assert torch.equal(personal[key], w[key])
    before = personal["enc.bias"].clone()
    w["enc.bias"].add_(1.0)  # training goes on in place; the personal model must not follow
    assert torch.equal(personal["enc.bias"], before)


def test_alpha_zero_gives_w_and_alpha_one_keeps_p_exactly() -> None:
    gen = torch.Generator().manual_seed(3)
    p, w = _random_state(gen, 1), _random_state(gen, 2)
    zero, one = update_personal(p, w, 0.0), update_personal(p, w, 1.0)
    for key in w:
        assert torch.equal(zero[key], w[key])
    for key in ("enc.weight", "enc.bias", "bn.running_mean"):
        assert torch.equal(one[key], p[key])
    assert one["bn.num_batches_tracked"].item() == 2  # counters always follow W


def test_inputs_are_not_modified() -> None:
    gen = torch.Generator().manual_seed(4)
    p, w = _random_state(gen, 1), _random_state(gen, 2)
    p_copy = {k: v.clone() for k, v in p.items()}
    w_copy = {k: v.clone() for k, v in w.items()}
    update_personal(p, w, 0.4)
    for key in p:
        assert torch.equal(p[key], p_copy[key]) and torch.equal(w[key], w_copy[key])


def test_half_precision_keeps_its_dtype() -> None:
    p = {"w": torch.full((3,), 1000.0, dtype=torch.float16)}
    w = {"w": torch.full((3,), 1001.0, dtype=torch.float16)}
    mixed = update_personal(p, w, 0.5)["w"]
    assert mixed.dtype == torch.float16
    assert mixed.tolist() == [1000.5] * 3


def test_refuses_bad_alpha_and_mismatched_models() -> None:
    gen = torch.Generator().manual_seed(5)
    p, w = _random_state(gen, 1), _random_state(gen, 2)
    with pytest.raises(PersonalizationError, match="alpha"):
        update_personal(p, w, 1.5)
    with pytest.raises(StateDictError, match=r"enc\.bias"):
        update_personal(p | {"enc.bias": torch.zeros(7)}, w, 0.5)
    with pytest.raises(StateDictError, match=r"extra"):
        update_personal_decomposed(p, w, w | {"extra": torch.zeros(1)}, 0.5)
