"""Aggregation strategies against straightforward numpy/scipy references."""

from __future__ import annotations

import weakref
from collections.abc import Mapping

import numpy as np
import pytest
from scipy.stats import trim_mean

from aggregator.strategies import (
    DEFAULTS,
    ClientUpdate,
    MappingReader,
    StrategyError,
    aggregate_streaming,
    build_strategy,
)

SHAPES = {
    "enc.conv.weight": (6, 3, 3, 3, 3),
    "enc.conv.bias": (6,),
    "enc.norm.weight": (6,),
    "enc.norm.running_mean": (6,),
    "enc.norm.num_batches_tracked": (),
    "head.weight": (2, 6, 1, 1, 1),
    "scale": (),
}
LOCAL = frozenset({"enc.norm.weight", "enc.norm.running_mean"})
FLOAT_KEYS = [k for k in SHAPES if k != "enc.norm.num_batches_tracked"]
SHARED_FLOAT = [k for k in FLOAT_KEYS if k not in LOCAL]


def make_global(rng: np.random.Generator) -> dict[str, np.ndarray]:
    out = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
    out["enc.norm.num_batches_tracked"] = np.array(40, dtype=np.int64)
    return out


def make_updates(rng: np.random.Generator, k: int = 5, scale: float = 0.1) -> list[ClientUpdate]:
    updates = []
    for i in range(k):
        t = {key: (scale * rng.standard_normal(s)).astype(np.float32) for key, s in SHAPES.items()}
        t["enc.norm.num_batches_tracked"] = np.array(rng.integers(5, 50), dtype=np.int64)
        updates.append(ClientUpdate(f"site-{i}", int(rng.integers(1, 100)), t))
    return updates


def stack(updates: list[ClientUpdate], key: str) -> np.ndarray:
    return np.stack([u.tensors[key].astype(np.float64) for u in updates])


def weights_of(updates: list[ClientUpdate]) -> np.ndarray:
    return np.array([u.num_samples for u in updates], dtype=np.float64)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def test_fedavg_is_the_sample_weighted_average(rng: np.random.Generator) -> None:
    theta, updates = make_global(rng), make_updates(rng, k=7)
    new, state = build_strategy("fedavg", {}).aggregate(theta, updates, {}, frozenset())
    assert state == {}
    for key in FLOAT_KEYS:
        ref = theta[key] + np.average(stack(updates, key), axis=0, weights=weights_of(updates))
        assert new[key].dtype == np.float32 and new[key].shape == theta[key].shape
        np.testing.assert_allclose(new[key], ref, rtol=1e-6, atol=1e-6)


def test_fedavg_server_lr_scales_the_step(rng: np.random.Generator) -> None:
    theta, updates = make_global(rng), make_updates(rng)
    new, _ = build_strategy("fedavg", {"server_lr": 0.5}).aggregate(theta, updates, {}, LOCAL)
    for key in SHARED_FLOAT:
        step = np.average(stack(updates, key), axis=0, weights=weights_of(updates))
        np.testing.assert_allclose(new[key], theta[key] + 0.5 * step, rtol=1e-6, atol=1e-6)


def run_rounds(name: str, params: Mapping[str, float], rounds: int, rng: np.random.Generator):
    """Three rounds of the strategy and of a hand-written float64 reference step."""
    strategy = build_strategy(name, params)
    p = {**DEFAULTS[name], **params}
    theta = make_global(rng)
    ref = {k: theta[k].astype(np.float64) for k in SHARED_FLOAT}
    m = {k: np.zeros_like(v) for k, v in ref.items()}
    v = {k: np.full_like(x, p.get("tau", 0.0) ** 2) for k, x in ref.items()}
    state: dict[str, np.ndarray] = {}
    for _ in range(rounds):
        updates = make_updates(rng)
        theta, state = strategy.aggregate(theta, updates, state, LOCAL)
        for key in SHARED_FLOAT:
            d = np.average(stack(updates, key), axis=0, weights=weights_of(updates))
            if name == "fedavgm":
                m[key] = p["momentum"] * m[key] + d
                ref[key] = ref[key] + p["server_lr"] * m[key]
                continue
            m[key] = p["beta1"] * m[key] + (1 - p["beta1"]) * d
            if name == "fedadam":
                v[key] = p["beta2"] * v[key] + (1 - p["beta2"]) * d**2
            else:
                v[key] = v[key] - (1 - p["beta2"]) * d**2 * np.sign(v[key] - d**2)
            ref[key] = ref[key] + p["server_lr"] * m[key] / (np.sqrt(v[key]) + p["tau"])
    return theta, state, ref, m, v


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("fedavgm", {"momentum": 0.7, "server_lr": 0.9}),
        ("fedavgm", {}),
        ("fedadam", {"server_lr": 0.05, "tau": 1e-2}),
        ("fedyogi", {"server_lr": 0.05, "tau": 1e-2, "beta2": 0.9}),
        ("fedadam", {}),
        ("fedyogi", {}),
    ],
)
def test_server_optimisers_match_hand_written_steps(
    name: str, params: dict[str, float], rng: np.random.Generator
) -> None:
    theta, state, ref, m, v = run_rounds(name, params, rounds=3, rng=rng)
    expected_state = {f"m.{k}" for k in SHARED_FLOAT}
    if name != "fedavgm":
        expected_state |= {f"v.{k}" for k in SHARED_FLOAT}
    assert set(state) == expected_state
    for key in SHARED_FLOAT:
        np.testing.assert_allclose(theta[key], ref[key], rtol=2e-5, atol=2e-6)
        np.testing.assert_allclose(state[f"m.{key}"], m[key], rtol=2e-5, atol=1e-7)
        if name != "fedavgm":
            np.testing.assert_allclose(state[f"v.{key}"], v[key], rtol=2e-5, atol=1e-9)


def test_median_equals_numpy_median(rng: np.random.Generator) -> None:
    theta = make_global(rng)
    for k in (4, 5):  # even and odd number of sites
        updates = make_updates(rng, k=k)
        new, _ = build_strategy("median", {}).aggregate(theta, updates, {}, frozenset())
        for key in FLOAT_KEYS:
            med = np.median(np.stack([u.tensors[key] for u in updates]), axis=0)
            np.testing.assert_array_equal(new[key], theta[key] + med)


def test_median_resists_one_byzantine_site(rng: np.random.Generator) -> None:
    theta, updates = make_global(rng), make_updates(rng, k=5)
    evil = {k: np.full_like(v, 1e6) for k, v in updates[0].tensors.items()}
    updates[0] = ClientUpdate("site-0", 10**6, evil)
    new, _ = build_strategy("median", {}).aggregate(theta, updates, {}, frozenset())
    assert max(float(np.abs(new[k] - theta[k]).max()) for k in FLOAT_KEYS) < 1.0


@pytest.mark.parametrize(("k", "beta"), [(10, 0.1), (10, 0.25), (7, 0.2), (5, 0.0), (6, 0.49)])
def test_trimmed_mean_matches_scipy(k: int, beta: float, rng: np.random.Generator) -> None:
    theta, updates = make_global(rng), make_updates(rng, k=k)
    strategy = build_strategy("trimmed_mean", {"trim_fraction": beta})
    new, _ = strategy.aggregate(theta, updates, {}, frozenset())
    for key in FLOAT_KEYS:
        ref = theta[key] + trim_mean(stack(updates, key), beta, axis=0)
        np.testing.assert_allclose(new[key], ref, rtol=1e-6, atol=1e-6)


class CountingReader:
    """A reader that copies each tensor out and tracks how many of them are still alive."""

    def __init__(self, update: ClientUpdate, live: list[weakref.ref], peak: list[int]) -> None:
        self.site_id, self.num_samples = update.site_id, update.num_samples
        self._tensors, self._live, self._peak = update.tensors, live, peak
        self.keys_read: list[str] = []

    def get(self, key: str) -> np.ndarray:
        self.keys_read.append(key)
        arr = np.array(self._tensors[key], copy=True)
        self._live[:] = [r for r in self._live if r() is not None]
        self._peak[0] = max(self._peak[0], len(self._live))
        if arr.ndim:  # 0-d arrays cannot be weakly referenced reliably; skip them
            self._live.append(weakref.ref(arr))
        return arr


@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_streaming_equals_in_memory_bit_for_bit(name: str, rng: np.random.Generator) -> None:
    strategy = build_strategy(name, {})
    theta, state = make_global(rng), {}
    theta_s, state_s = dict(theta), {}
    for _ in range(3):
        updates = make_updates(rng, k=6)
        theta, state = strategy.aggregate(theta, updates, state, LOCAL)
        live: list[weakref.ref] = []
        readers = [CountingReader(u, live, [0]) for u in updates]
        theta_s, state_s = aggregate_streaming(strategy, theta_s, readers, state_s, LOCAL)
        assert not any(set(r.keys_read) & LOCAL for r in readers), "local keys must not be read"
    assert theta.keys() == theta_s.keys() and state.keys() == state_s.keys()
    for key in theta:
        assert theta[key].dtype == theta_s[key].dtype
        np.testing.assert_array_equal(theta[key], theta_s[key])
    for key in state:
        np.testing.assert_array_equal(state[key], state_s[key])


def test_streaming_weighted_mean_holds_one_site_tensor_at_a_time(rng: np.random.Generator) -> None:
    theta, updates = make_global(rng), make_updates(rng, k=8)
    live: list[weakref.ref] = []
    peak = [0]
    readers = [CountingReader(u, live, peak) for u in updates]
    aggregate_streaming(build_strategy("fedadam", {}), theta, readers, {}, frozenset())
    assert peak[0] == 0, f"{peak[0]} site tensors were still alive when the next was read"


def test_streaming_accepts_a_foreign_strategy(rng: np.random.Generator) -> None:
    class Halve:
        name = "halve"

        def aggregate(self, global_weights, updates, state, local_keys):
            return {k: v / 2 for k, v in global_weights.items()}, {"n": np.array(len(updates))}

    theta, updates = make_global(rng), make_updates(rng, k=3)
    new, state = aggregate_streaming(
        Halve(), theta, [MappingReader(u) for u in updates], {}, frozenset()
    )
    assert int(state["n"]) == 3 and np.array_equal(new["scale"], theta["scale"] / 2)


@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_local_keys_keep_the_global_value(name: str, rng: np.random.Generator) -> None:
    theta, updates = make_global(rng), make_updates(rng)
    for u in updates[:2]:  # FedBN sites may not even send their local keys
        for key in LOCAL:
            del u.tensors[key]  # type: ignore[attr-defined]
    new, state = build_strategy(name, {}).aggregate(theta, updates, {}, LOCAL)
    for key in LOCAL:
        np.testing.assert_array_equal(new[key], theta[key])
        assert new[key] is not theta[key]
        assert f"m.{key}" not in state and f"v.{key}" not in state
    assert any(not np.array_equal(new[k], theta[k]) for k in SHARED_FLOAT)


@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_integer_tensors_take_the_largest_count(name: str, rng: np.random.Generator) -> None:
    theta, updates = make_global(rng), make_updates(rng)
    key = "enc.norm.num_batches_tracked"
    new, state = build_strategy(name, {}).aggregate(theta, updates, {}, frozenset())
    assert new[key].dtype == np.int64 and new[key].shape == ()
    assert int(new[key]) == 40 + max(int(u.tensors[key]) for u in updates)
    assert not any(key in s for s in state)


@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_input_order_does_not_matter_and_inputs_are_untouched(
    name: str, rng: np.random.Generator
) -> None:
    theta, updates = make_global(rng), make_updates(rng, k=6)
    strategy = build_strategy(name, {})
    _, state0 = strategy.aggregate(theta, make_updates(rng, k=6), {}, LOCAL)
    frozen = {k: v.copy() for k, v in state0.items()}
    theta_copy = {k: v.copy() for k, v in theta.items()}
    a, sa = strategy.aggregate(theta, updates, state0, LOCAL)
    b, sb = strategy.aggregate(theta, [updates[i] for i in (3, 0, 5, 1, 4, 2)], state0, LOCAL)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
        np.testing.assert_array_equal(theta[key], theta_copy[key])
    for key in sa:
        np.testing.assert_array_equal(sa[key], sb[key])
    for key in state0:
        np.testing.assert_array_equal(state0[key], frozen[key])


@pytest.mark.parametrize(
    ("name", "params", "fragment"),
    [
        ("fedsgd", {}, "unknown aggregation strategy 'fedsgd'"),
        ("fedavg", {"momentum": 0.9}, "no parameter(s) ['momentum']"),
        ("median", {"trim_fraction": 0.1}, "allowed: none"),
        ("fedavgm", {"momentum": 1.0}, "'momentum' must be a number in [0, 1)"),
        ("fedadam", {"tau": 0}, "'tau' must be a number in (0, inf)"),
        ("fedyogi", {"beta2": -0.1}, "'beta2' must be a number in [0, 1)"),
        ("fedavg", {"server_lr": "1"}, "must be a number"),
        ("fedavg", {"server_lr": True}, "must be a number"),
        ("fedavg", {"server_lr": float("nan")}, "must be a number in (0, inf)"),
        ("trimmed_mean", {"trim_fraction": 0.5}, "'trim_fraction' must be a number in [0, 0.5)"),
        ("fedavg", [("server_lr", 1.0)], "params must be a JSON object"),
    ],
)
def test_bad_names_and_params_are_refused(name: str, params, fragment: str) -> None:
    with pytest.raises(StrategyError) as info:
        build_strategy(name, params)
    assert fragment in str(info.value)


def test_defaults_and_params_are_reported() -> None:
    s = build_strategy("fedyogi", {"tau": 1e-4})
    assert s.name == "fedyogi"
    assert s.params == {"server_lr": 0.01, "beta1": 0.9, "beta2": 0.99, "tau": 1e-4}


def test_bad_updates_are_refused_with_the_site_and_key(rng: np.random.Generator) -> None:
    theta, fedavg = make_global(rng), build_strategy("fedavg", {})

    def refused(updates: list[ClientUpdate], fragment: str, state=None) -> None:
        with pytest.raises(StrategyError) as info:
            fedavg.aggregate(theta, updates, state or {}, frozenset())
        assert fragment in str(info.value)

    refused([], "no updates to aggregate")
    u = make_updates(rng, k=2)
    refused([u[0], ClientUpdate("site-0", 3, u[1].tensors)], "two updates from site 'site-0'")
    refused(
        [ClientUpdate("a", 0, u[0].tensors), ClientUpdate("b", 0, u[1].tensors)], "num_samples=0"
    )
    refused([ClientUpdate("a", -1, u[0].tensors)], "num_samples must be an integer >= 0")
    bad = dict(u[1].tensors, **{"head.weight": np.zeros((2, 6), np.float32)})
    refused([u[0], ClientUpdate("b", 3, bad)], "'head.weight' has shape (2, 6), expected")
    bad = dict(u[1].tensors, **{"scale": np.array(1, dtype=np.int32)})
    refused([u[0], ClientUpdate("b", 3, bad)], "expected a float dtype")
    bad = {k: v for k, v in u[1].tensors.items() if k != "scale"}
    refused([u[0], ClientUpdate("b", 3, bad)], "missing keys ['scale']")
    bad = dict(u[1].tensors, extra=np.zeros(3, np.float32))
    refused([u[0], ClientUpdate("b", 3, bad)], "unknown keys ['extra']")
    with pytest.raises(StrategyError, match=r"server state 'm\.scale' has shape"):
        build_strategy("fedavgm", {}).aggregate(theta, u, {"m.scale": np.zeros(3)}, frozenset())
    readers = [MappingReader(ClientUpdate("a", 1, {}))]
    with pytest.raises(StrategyError, match="update of site 'a' has no tensor"):
        aggregate_streaming(fedavg, theta, readers, {}, frozenset())
