"""Direction check: an update pointing against the round's median is left out, honest ones never."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from aggregator.api.deps import Services
from aggregator.rounds.guards.direction_guard import median_cosines, opposing_updates
from aggregator.rounds.guards.safeguards import guard_detail, guard_readers
from aggregator.strategies import aggregate_streaming, build_strategy
from data_specs.weights.bundle import BundleMeta, decode_bundle, encode_bundle
from tests.aggregator.helpers import API, Federation


@dataclass
class ArrayReader:
    site_id: str
    num_samples: int
    diffs: dict[str, np.ndarray]

    def get(self, key: str) -> np.ndarray:
        return self.diffs[key].copy()


def _honest(rng: np.random.Generator, k: int, noise: float) -> list[ArrayReader]:
    """K non-IID sites: a shared step plus a large site-specific part."""
    shared = {"w": rng.standard_normal(4000).astype(np.float32), "b": np.ones(3, np.float32)}
    return [
        ArrayReader(
            f"site-{i}",
            10,
            {
                key: value + noise * rng.standard_normal(value.shape).astype(np.float32)
                for key, value in shared.items()
            },
        )
        for i in range(k)
    ]


def _flip(reader: ArrayReader) -> ArrayReader:
    return ArrayReader(reader.site_id, reader.num_samples, {k: -v for k, v in reader.diffs.items()})


def test_cosines_match_numpy_over_chunks_and_keys() -> None:
    rng = np.random.default_rng(1)
    readers = [
        ArrayReader(f"s{i}", 1, {"big": rng.standard_normal(40000).astype(np.float32)})
        for i in range(4)
    ]
    stacked = np.stack([r.diffs["big"].astype(np.float64) for r in readers])
    median = np.median(stacked, axis=0)
    want = stacked @ median / np.linalg.norm(stacked, axis=1) / np.linalg.norm(median)
    got = median_cosines(readers, ["big", "missing"])
    assert np.allclose([got[f"s{i}"] for i in range(4)], want, rtol=1e-9)


@pytest.mark.parametrize("k", [3, 5, 8])
def test_a_sign_flipped_update_of_honest_norm_is_left_out(k: int) -> None:
    rng = np.random.default_rng(k)
    readers = _honest(rng, k, noise=1.0)
    readers[-1] = _flip(readers[-1])
    kept, report = guard_readers(
        readers, ["w", "b"], robust_norm_multiple=3.0, min_update_cosine=0.0
    )
    assert [r.site_id for r in kept] == [f"site-{i}" for i in range(k - 1)]
    assert list(report.opposed) == [f"site-{k - 1}"] and report.opposed[f"site-{k - 1}"] < 0
    assert not report.clipped  # honest norm: the norm bound alone would have let it through
    assert guard_detail([report])["dropped_opposing"] == {
        f"site-{k - 1}": round(report.opposed[f"site-{k - 1}"], 6)
    }
    new, _ = aggregate_streaming(
        build_strategy("fedavg", {}), {"w": np.zeros(4000, np.float32)}, kept, {}, frozenset()
    )
    honest_mean = np.mean([r.diffs["w"] for r in readers[:-1]], axis=0)
    assert np.allclose(new["w"], honest_mean, atol=1e-6)


@pytest.mark.parametrize("k", [3, 5, 10])
@pytest.mark.parametrize("noise", [0.5, 3.0, 20.0])
def test_honest_non_iid_updates_are_never_left_out(k: int, noise: float) -> None:
    """Noise up to 20x the shared step (cosines between sites near 0): nobody is dropped."""
    for seed in range(20):
        readers = _honest(np.random.default_rng(seed), k, noise)
        kept, report = guard_readers(
            readers, ["w", "b"], robust_norm_multiple=3.0, min_update_cosine=0.0
        )
        assert len(kept) == k and not report.opposed, (seed, report)


def test_two_updates_are_never_checked() -> None:
    """With 2 updates the median is the mean: the check is skipped, even for opposite updates."""
    a = ArrayReader("a", 1, {"w": np.ones(10, np.float32)})
    b = ArrayReader("b", 1, {"w": -np.ones(10, np.float32) * 0.5})
    kept, report = guard_readers([a, b], ["w"], robust_norm_multiple=None, min_update_cosine=0.9)
    assert len(kept) == 2 and not report.opposed


def test_at_most_a_minority_is_left_out_lowest_cosine_first() -> None:
    assert opposing_updates({"a": -0.9, "b": -0.5, "c": -0.1, "d": 0.2}, min_cosine=0.0) == {
        "a": -0.9
    }
    assert opposing_updates(
        {"a": -0.9, "b": -0.5, "c": -0.1, "d": 0.2, "e": 0.3}, min_cosine=0.0
    ) == {"a": -0.9, "b": -0.5}
    assert opposing_updates({"a": -0.9, "b": 0.5}, min_cosine=0.0) == {}


def test_updates_without_direction_are_kept() -> None:
    zero = ArrayReader("z", 1, {"w": np.zeros(6, np.float32)})
    ones = [ArrayReader(f"o{i}", 1, {"w": np.ones(6, np.float32)}) for i in range(2)]
    cosines = median_cosines([zero, *ones], ["w"])
    assert math.isnan(cosines["z"]) and cosines["o0"] == pytest.approx(1.0)
    kept, report = guard_readers(
        [zero, *ones], ["w"], robust_norm_multiple=None, min_update_cosine=0.0
    )
    assert len(kept) == 3 and not report.opposed
    # Every update zero: the median has no direction, nothing is dropped.
    zeros = [ArrayReader(f"z{i}", 1, {"w": np.zeros(6, np.float32)}) for i in range(3)]
    assert len(guard_readers(zeros, ["w"], robust_norm_multiple=3.0, min_update_cosine=0.0)[0]) == 3


def _upload(fed: Federation, name: str, sign: float) -> None:
    task = fed.next_task(name)
    assert task is not None
    theta = decode_bundle(fed.model(name, task["task_id"])).tensors
    weights = {
        k: (v + np.float32(sign * 0.01) * np.arange(v.size, dtype=np.float32).reshape(v.shape))
        if v.dtype.kind == "f"
        else v
        for k, v in theta.items()
    }
    meta = BundleMeta(spec_hash=task["spec_hash"], round=task["round"], num_samples=10)
    r = fed.upload(name, task["task_id"], encode_bundle(weights, meta), 10)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("setting", ["default", "off"])
def test_the_round_event_names_the_opposing_site(
    fed: Federation, services: Services, setting: str
) -> None:
    overrides = {} if setting == "default" else {"min_update_cosine": None}
    exp = fed.create_experiment(rounds=1, **overrides)
    fed.start(exp)
    services.orchestrator.step()
    for name, sign in (("site-a", 1.0), ("site-b", 1.0), ("site-c", -1.0)):
        _upload(fed, name, sign)
    services.orchestrator.step()
    assert fed.rounds(exp)[0]["status"] == "closed"
    events = fed.client.get(f"{API}/events", params={"experiment_id": exp}, headers=fed.rh).json()
    closed = [e for e in events if e["kind"] == "round.closed"]
    assert len(closed) == 1, events
    if setting == "default":
        assert list(closed[0]["detail"]["dropped_opposing"]) == ["site-c"], closed
    else:
        assert "dropped_opposing" not in closed[0]["detail"], closed


def test_the_threshold_is_bounded() -> None:
    from pydantic import ValidationError

    from data_specs.researcher.experiments import ExperimentCreate
    from data_specs.task_spec import TaskSpec

    spec = TaskSpec(spatial_dims=2, channels=(4, 8), strides=(2,), patch_size=(32, 32))
    assert ExperimentCreate(name="x", spec=spec, rounds=1).min_update_cosine == 0.0
    with pytest.raises(ValidationError, match="min_update_cosine"):
        ExperimentCreate(name="x", spec=spec, rounds=1, min_update_cosine=1.5)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 6, 7, 9, 16, 17, 20])
def test_column_median_is_numpys_median_bit_for_bit(k: int) -> None:
    """The sorting network (K <= 16) and the sort (K > 16) both give np.median's numbers."""
    from aggregator.rounds.guards.direction_guard import column_median

    rng = np.random.default_rng(k)
    block = rng.standard_normal((k, 2000)) * 10.0 ** (np.arange(k)[:, None] % 7)
    block[:, :50] = np.round(block[:, :50])  # ties
    before = block.copy()
    work = np.full_like(block, np.nan)
    assert np.array_equal(column_median(block, work), np.median(block, axis=0))
    assert np.array_equal(column_median(block), np.median(block, axis=0))
    assert np.array_equal(block, before)  # the input is left alone


def test_the_sorting_network_is_several_times_faster_than_numpys_median() -> None:
    import time

    from aggregator.rounds.guards.direction_guard import column_median

    block = np.random.default_rng(0).standard_normal((5, 16384))
    work = np.empty_like(block)

    def best(fn: object) -> float:
        times = []
        for _ in range(15):
            start = time.process_time()
            fn()  # type: ignore[operator]
            times.append(time.process_time() - start)
        return min(times)

    fast = best(lambda: column_median(block, work))
    slow = best(lambda: np.sort(block.T, axis=1))  # the per-row sort the guard used before
    assert fast < slow / 1.5
