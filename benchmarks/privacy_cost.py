"""Cost of secure aggregation against plain FedAvg for one round, in process (issue 21).

Each site's protocol work (keys, shares, ring encoding, masking, unmask answer) and the
server's (relay, running sum, unmasking) are timed with ``time.perf_counter`` on the real ACDC
model size, and every message is counted in bytes. The plain baseline is what fedseg does
today for the same round: each site encodes its float32 difference as a safetensors bundle,
the server decodes it and takes the weighted mean (``build_strategy("fedavg")``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from data_specs.constants import BundleKind
from data_specs.privacy.ring import RingScale, decode_mean, encode_weighted
from data_specs.privacy.secagg_common import SecAggParams
from data_specs.privacy.secagg_server import SecAggServer
from data_specs.privacy.secagg_site import SecAggSite
from data_specs.weights.bundle import BundleMeta, decode_bundle, encode_bundle

INDEX_BYTES = 4  # a site index on the wire


@dataclass
class RoundCost:
    """One round's cost: the slowest site's seconds, the server's seconds, bytes up and down."""

    label: str
    sites: int
    site_s: float  # per-site critical path (sites run in parallel in a deployment)
    server_s: float
    up_bytes: int  # all sites together
    down_bytes: int
    max_error: float | None = None  # against plain FedAvg, for secure aggregation


def _updates(n: int, size: int, seed: int) -> tuple[list[np.ndarray], list[int]]:
    rng = np.random.default_rng(seed)
    updates = [rng.normal(0, 0.01, size).astype(np.float32) for _ in range(n)]
    counts = [int(c) for c in rng.integers(100, 400, n)]
    return updates, counts


def plain_round(tensors: dict[str, tuple[int, ...]], n: int, seed: int = 0) -> RoundCost:
    """Today's round: float32 diff bundles, decoded and averaged by the server."""
    from aggregator.strategies import ClientUpdate, build_strategy

    size = sum(int(np.prod(s)) for s in tensors.values())
    flat, counts = _updates(n, size, seed)
    site_times, bodies = [], []
    for i in range(n):
        started = time.perf_counter()
        parts, offset = {}, 0
        for key, shape in tensors.items():
            count = int(np.prod(shape))
            parts[key] = flat[i][offset : offset + count].reshape(shape)
            offset += count
        meta = BundleMeta(spec_hash="0" * 64, round=1, kind=BundleKind.DIFF, num_samples=counts[i])
        bodies.append(encode_bundle(parts, meta))
        site_times.append(time.perf_counter() - started)
    started = time.perf_counter()
    theta = {k: np.zeros(s, np.float32) for k, s in tensors.items()}
    updates = [
        ClientUpdate(f"s{i:03d}", counts[i], decode_bundle(b).tensors) for i, b in enumerate(bodies)
    ]
    build_strategy("fedavg").aggregate(theta, updates, {}, frozenset())
    server = time.perf_counter() - started
    return RoundCost("plain FedAvg", n, max(site_times), server, sum(map(len, bodies)), 0)


def secagg_round(
    size: int, n: int, *, neighbours: int | None, threshold: int, drop: int = 0, seed: int = 0
) -> RoundCost:
    """One secure-aggregation round; the last ``drop`` sites vanish after sharing their secrets."""
    scale = RingScale(bits=32, bound=1.0, max_total_samples=1_000_000, max_sites=1000)
    params = SecAggParams(threshold, scale, neighbours, context=b"bench/round-1/attempt-0")
    flat, counts = _updates(n, size, seed)
    rng = np.random.default_rng(seed + 1)
    timer = {i: 0.0 for i in range(1, n + 1)}
    server_s, up, down = 0.0, 0, 0

    def site_step(i: int, fn, *args):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        out = fn(*args)
        timer[i] += time.perf_counter() - started
        return out

    sites = {i: SecAggSite(i, params) for i in range(1, n + 1)}
    server = SecAggServer(params)
    for i, s in sites.items():
        advert = site_step(i, s.advertise)
        up += INDEX_BYTES + len(advert.c_public) + len(advert.s_public)
        t = time.perf_counter()
        server.receive_advert(advert)
        server_s += time.perf_counter() - t
    t = time.perf_counter()
    adverts = server.close_adverts()
    server_s += time.perf_counter() - t
    down += n * len(adverts) * (INDEX_BYTES + 64)
    for i, s in sites.items():
        boxes = site_step(i, s.share, adverts)
        up += sum(INDEX_BYTES + len(b) for b in boxes.values())
        t = time.perf_counter()
        server.receive_shares(i, boxes)
        server_s += time.perf_counter() - t
    survivors = [i for i in sites if i <= n - drop]
    for i in survivors:
        inbox = server.inbox(i)
        down += sum(INDEX_BYTES + len(b) for b in inbox.values())
        vector = site_step(
            i,
            lambda i=i, inbox=inbox: sites[i].mask(
                encode_weighted(flat[i - 1], counts[i - 1], scale, rng).vector, inbox
            ),
        )
        up += vector.nbytes
        t = time.perf_counter()
        server.receive_masked(i, vector)
        server_s += time.perf_counter() - t
    for i in survivors:
        request = server.unmask_request(i)
        down += INDEX_BYTES * (len(request.survivors) + len(request.dropped))
        response = site_step(i, sites[i].unmask, request)
        up += sum(
            INDEX_BYTES + len(v)
            for table in (response.seed_shares, response.key_shares)
            for v in table.values()
        )
        t = time.perf_counter()
        server.receive_unmask(response)
        server_s += time.perf_counter() - t
    t = time.perf_counter()
    total, _ = server.finish()
    mean, _ = decode_mean(total, scale)
    server_s += time.perf_counter() - t
    kept = [k - 1 for k in survivors]
    expected = np.average(
        np.stack([flat[k] for k in kept]), axis=0, weights=[counts[k] for k in kept]
    )
    graph = "all pairs" if neighbours is None or neighbours >= n - 1 else f"{neighbours} neighbours"
    label = f"secure aggregation ({graph}, t={threshold}{f', {drop} dropped' if drop else ''})"
    return RoundCost(
        label,
        n,
        max(timer[i] for i in survivors),
        server_s,
        up,
        down,
        float(np.max(np.abs(mean - expected))),
    )


def median_cost(runs: list[RoundCost]) -> RoundCost:
    """The run with the median total seconds (timings on a shared machine are noisy)."""
    ordered = sorted(runs, key=lambda r: r.site_s + r.server_s)
    return ordered[len(ordered) // 2]
