"""InsidePolicy: local keys, proximal strength and the personal model after a round, per method."""

from __future__ import annotations

import pytest
import torch

from data_specs.constants import PersonalizationMethod
from data_specs.task_spec import TaskSpec, build_unet
from data_specs.wire import PersonalizationConfig, TrainConfig
from personalization.errors import PersonalizationError
from personalization.inside import InsidePolicy, fedbn_local_keys

SPEC = TaskSpec(channels=(4, 8), strides=(2,), norm="batch")


def _states() -> tuple[dict, dict, dict]:
    torch.manual_seed(0)
    global_, local, personal = (build_unet(SPEC).state_dict() for _ in range(3))
    return global_, local, personal


def _policy(method: str, **kwargs: float) -> InsidePolicy:
    return InsidePolicy.from_config(PersonalizationConfig(method=method, **kwargs))


def test_from_train_config_carries_every_field() -> None:
    train = TrainConfig(
        fedprox_mu=0.01,
        personalization=PersonalizationConfig(
            method="ditto", alpha=0.3, ditto_lambda=0.2, ditto_epochs=2
        ),
    )
    policy = InsidePolicy.from_train_config(train)
    assert policy == InsidePolicy(
        method=PersonalizationMethod.DITTO,
        alpha=0.3,
        fedprox_mu=0.01,
        ditto_lambda=0.2,
        ditto_epochs=2,
    )


@pytest.mark.parametrize(
    ("method", "keeps", "trains"),
    [
        ("none", False, False),
        ("fedprox", False, False),
        ("iopfl", True, False),
        ("fedbn", True, False),
        ("ditto", True, True),
    ],
)
def test_what_each_method_keeps(method: str, keeps: bool, trains: bool) -> None:
    policy = _policy(method)
    assert (policy.keeps_personal, policy.trains_personal) == (keeps, trains)
    expected_keys = fedbn_local_keys(SPEC) if method == "fedbn" else []
    assert policy.local_keys(SPEC) == expected_keys


def test_fedbn_keys_are_nonempty_norm_keys() -> None:
    keys = _policy("fedbn").local_keys(SPEC)
    assert len(keys) == 15 and all(".adn.N." in k for k in keys)


def test_iopfl_after_round_is_the_moving_average() -> None:
    global_, local, personal = _states()
    policy = _policy("iopfl", alpha=0.25)
    first = policy.after_round(None, local, global_)
    assert first is not None and all(torch.equal(first[k], local[k]) for k in local)
    later = policy.after_round(personal, local, global_)
    assert later is not None
    key = "model.0.conv.unit0.conv.weight"
    torch.testing.assert_close(later[key], 0.25 * personal[key] + 0.75 * local[key])


def test_fedbn_round_uses_own_norm_layers_then_keeps_the_trained_model() -> None:
    global_, local, personal = _states()
    policy = _policy("fedbn")
    keys = policy.local_keys(SPEC)
    start = policy.start_state(global_, personal, local_keys=keys)
    for key in global_:
        assert start[key] is (personal[key] if key in keys else global_[key])
    assert policy.start_state(global_, None, local_keys=keys) == global_
    with pytest.raises(PersonalizationError, match="local_keys"):
        policy.start_state(global_, personal, local_keys=[])
    kept = policy.after_round(personal, local, global_)
    assert kept is not None and all(torch.equal(kept[k], local[k]) for k in local)
    assert kept[keys[0]] is not local[keys[0]]  # a copy, not the live model's tensor


def test_ditto_trains_from_theta_first_then_keeps_its_own_v() -> None:
    global_, local, personal = _states()
    policy = _policy("ditto")
    v0 = policy.personal_start(None, global_)
    assert v0 is not None and all(torch.equal(v0[k], global_[k]) for k in global_)
    v1 = policy.personal_start(personal, global_)
    assert v1 is not None and all(torch.equal(v1[k], personal[k]) for k in personal)
    kept = policy.after_round(personal, local, global_)
    assert kept is not None and all(torch.equal(kept[k], personal[k]) for k in personal)
    with pytest.raises(PersonalizationError, match="Ditto"):
        policy.after_round(None, local, global_)


@pytest.mark.parametrize("method", ["none", "fedprox"])
def test_methods_without_personal_model(method: str) -> None:
    global_, local, personal = _states()
    policy = _policy(method)
    assert policy.after_round(personal, local, global_) is None
    assert policy.personal_start(personal, global_) is None
    assert policy.start_state(global_, personal, local_keys=[]) == global_


def test_fedprox_mu_follows_the_train_config() -> None:
    train = TrainConfig(fedprox_mu=0.05, personalization=PersonalizationConfig(method="fedprox"))
    assert InsidePolicy.from_train_config(train).fedprox_mu == 0.05
    assert InsidePolicy.from_train_config(TrainConfig()).fedprox_mu == 0.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"method": "bogus"},
        {"alpha": 1.2},
        {"fedprox_mu": -1.0},
        {"ditto_lambda": -0.1},
        {"ditto_epochs": 0},
    ],
)
def test_direct_construction_validates(kwargs: dict) -> None:
    with pytest.raises(PersonalizationError):
        InsidePolicy(**kwargs)
