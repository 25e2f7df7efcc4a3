"""Safeguards: sample caps, robust norm clipping, non-finite updates and rounds that cannot freeze."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from aggregator.api.deps import Services
from aggregator.errors import AggregationError, TooManyRequestsError
from aggregator.rate_limits import RateLimiter, UploadSlots
from aggregator.rounds.guards.safeguards import guard_readers, require_finite
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


def _readers(attack: str | None, rng: np.random.Generator) -> tuple[list[ArrayReader], np.ndarray]:
    true_step = rng.standard_normal(500).astype(np.float32)
    readers = []
    for i in range(5):
        step = true_step + 0.1 * rng.standard_normal(500).astype(np.float32)
        n = 50
        if i == 4 and attack == "scale":
            step = step * 100
        elif i == 4 and attack == "flip":
            step = -100 * step
        elif i == 4 and attack == "samples":
            n = 10**9
            step = -step
        readers.append(ArrayReader(f"site-{i}", n, {"w": step}))
    return readers, true_step


@pytest.mark.parametrize("attack", ["scale", "flip", "samples"])
@pytest.mark.parametrize("strategy", ["fedavg", "trimmed_mean"])
def test_one_malicious_site_of_five_barely_moves_the_average(attack: str, strategy: str) -> None:
    rng = np.random.default_rng(0)
    readers, _ = _readers(attack, rng)
    if attack == "samples":
        # What the orchestrator does with a claim of 10^9 from a site that declared 50 cases at
        # enrolment (aggregator.rounds.guards.safeguards.cap_samples): its weight is an honest site's.
        for r in readers:
            r.num_samples = min(r.num_samples, 50)
    theta = {"w": np.zeros(500, np.float32)}
    guarded, report = guard_readers(readers, ["w"], robust_norm_multiple=3.0)
    new, _ = aggregate_streaming(
        build_strategy(strategy, {"trim_fraction": 0.2} if strategy == "trimmed_mean" else {}),
        theta,
        guarded,
        {},
        frozenset(),
    )
    clean_readers, _ = _readers(None, np.random.default_rng(0))
    clean, _ = aggregate_streaming(
        build_strategy(strategy, {"trim_fraction": 0.2} if strategy == "trimmed_mean" else {}),
        theta,
        clean_readers,
        {},
        frozenset(),
    )
    unguarded, _ = aggregate_streaming(
        build_strategy(strategy, {"trim_fraction": 0.2} if strategy == "trimmed_mean" else {}),
        theta,
        _readers(attack, np.random.default_rng(0))[0],
        {},
        frozenset(),
    )

    def error(w: np.ndarray) -> float:
        return float(np.linalg.norm(w - clean["w"]) / np.linalg.norm(clean["w"]))

    cosine = float(new["w"] @ clean["w"] / np.linalg.norm(new["w"]) / np.linalg.norm(clean["w"]))
    assert cosine > 0.9, (attack, strategy, cosine, report)  # still the honest direction
    if strategy == "trimmed_mean" or attack != "flip":
        assert error(new["w"]) < 0.45, (attack, strategy, error(new["w"]), report)
    else:
        # A x100 flip clipped to 3x the median norm still cancels part of the honest step.
        assert error(new["w"]) < 0.85
    if attack in ("scale", "flip") and strategy == "fedavg":
        assert error(new["w"]) < error(unguarded["w"]) / 10  # unguarded: ~20x off
    if attack in ("scale", "flip"):
        assert "site-4" in report.clipped


def test_non_finite_updates_are_left_out_and_an_all_bad_round_is_refused() -> None:
    good = ArrayReader("a", 1, {"w": np.ones(4, np.float32)})
    bad = ArrayReader("b", 1, {"w": np.array([np.inf, 0, 0, 0], np.float32)})
    kept, report = guard_readers([good, bad], ["w"], robust_norm_multiple=None)
    assert [r.site_id for r in kept] == ["a"] and report.dropped == ("b",)
    with pytest.raises(AggregationError, match="non-finite"):
        guard_readers([bad], ["w"], robust_norm_multiple=3.0)


def test_a_non_finite_aggregate_is_refused() -> None:
    require_finite({"w": np.ones(3, np.float32)})
    with pytest.raises(AggregationError, match="not finite"):
        require_finite({"w": np.array([1.0, np.inf], np.float32)})


def _upload_all(fed: Federation, services: Services, value: float, n: int = 10) -> None:
    for name in fed.sites:
        task = fed.next_task(name)
        assert task is not None
        theta = decode_bundle(fed.model(name, task["task_id"])).tensors
        weights = {
            k: np.full(v.shape, value, np.float32) if v.dtype.kind == "f" else v.astype(v.dtype)
            for k, v in theta.items()
        }
        body = encode_bundle(
            weights,
            BundleMeta(spec_hash=task["spec_hash"], round=task["round"], num_samples=n),
        )
        r = fed.upload(name, task["task_id"], body, n)
        assert r.status_code == 200, r.text
    services.orchestrator.step()


def test_overflowing_updates_end_the_round_with_a_reason(
    fed: Federation, services: Services
) -> None:
    exp = fed.create_experiment(rounds=3, max_round_retries=0, robust_norm_multiple=None)
    fed.start(exp)
    services.orchestrator.step()
    _upload_all(fed, services, 3e38)  # finite, accepted: the new global is 3e38 everywhere
    assert fed.rounds(exp)[0]["status"] == "closed"
    _upload_all(fed, services, -3e38)  # W - θ = -6e38 overflows float32
    info = fed.experiment(exp)
    assert info["status"] == "failed", info
    assert "non-finite" in info["failure_reason"]
    statuses = [r["status"] for r in fed.rounds(exp)]
    assert "aggregating" not in statuses
    services.orchestrator.step()  # nothing left to step: no error, no log per second


def test_step_failures_fail_the_experiment_after_a_few_tries(
    fed: Federation, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    exp = fed.create_experiment(rounds=1)
    fed.start(exp)
    orchestrator = services.orchestrator

    def broken(experiment_id: str) -> set[str]:
        raise RuntimeError("database on fire")

    monkeypatch.setattr(orchestrator, "_advance", broken)
    for _ in range(3):
        orchestrator.step()
    info = fed.experiment(exp)
    assert info["status"] == "failed" and "database on fire" in info["failure_reason"]


def test_rate_limiter_refills_and_upload_slots_cap_concurrency() -> None:
    now = [0.0]
    limiter = RateLimiter(per_minute=60, burst=2, clock=lambda: now[0])
    assert limiter.hit("k") and limiter.hit("k") and not limiter.hit("k")
    with pytest.raises(TooManyRequestsError):
        limiter.check("k", what="tries")
    with pytest.raises(TooManyRequestsError):  # any key of several
        limiter.check("never-hit", "k", what="tries")
    limiter.check("never-hit", "other", what="tries")  # keys never hit have their burst
    now[0] += 1.0
    assert limiter.hit("k")
    slots = UploadSlots(1)
    with slots.hold(), pytest.raises(TooManyRequestsError), slots.hold():
        pass
    with slots.hold():
        assert slots.active == 1


def test_sample_counts_are_capped_by_the_fingerprint_and_the_enrolment(
    fed: Federation, services: Services
) -> None:
    from aggregator.rounds.guards.safeguards import cap_samples
    from tests.data_specs.fingerprint_data import make_fingerprint

    volumes = make_fingerprint(num_cases=30, shape=(64.0, 64.0, 32.0), spatial_dims=3)
    # A 2D task on volumes: 30 cases, but the site's sample counts are its slices.
    sliced = make_fingerprint(num_cases=30, shape=(128.0, 128.0, 10.0), spatial_dims=2)
    for site, fingerprint in (("site-a", volumes), ("site-c", sliced)):
        r = fed.client.put(
            f"{API}/sites/me/fingerprint",
            json=fingerprint.model_dump(mode="json"),
            headers=fed.sh(site),
        )
        assert r.status_code == 200, r.text
    with services.database.session() as session:
        capped = cap_samples(
            session,
            claimed={"a": 10**9, "b": 40, "c": 300},
            site_ids={k: fed.sites[f"site-{k}"][0] for k in "abc"},
        )
    # site-a: its fingerprint's 30 training cases; site-b declared nothing and its claim is
    # under 10 x the round's median; site-c's 300 slices of 30 volumes stay 300.
    assert capped == {"a": 30, "b": 40, "c": 300}
