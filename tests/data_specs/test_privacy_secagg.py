"""Secure aggregation: ring quantisation, Shamir, masks, and a 5-site round with a dropout."""

from __future__ import annotations

import contextlib
import os

import numpy as np
import pytest

from data_specs.errors import PrivacyError
from data_specs.privacy import shamir
from data_specs.privacy.masks import KeyPair, agree, mask_stream, open_sealed, seal
from data_specs.privacy.ring import (
    RingScale,
    decode_mean,
    encode_weighted,
    from_ring,
    ring_sum,
    to_ring,
)
from data_specs.privacy.secagg_common import SecAggParams, UnmaskRequest, neighbour_graph
from data_specs.privacy.secagg_server import SecAggServer
from data_specs.privacy.secagg_site import SecAggSite


def test_ring_round_trip_of_signed_values_wraps_modulo_2_to_the_bits() -> None:
    values = np.array([-5, 0, 7, -(2**31), 2**31 - 1], dtype=np.int64)
    ring = to_ring(values, 32)
    assert ring.dtype == np.uint32
    assert ring[0] == 2**32 - 5
    np.testing.assert_array_equal(from_ring(ring, 32), values)
    # a sum that wraps around in the ring still reads back as the signed sum
    np.testing.assert_array_equal(from_ring(ring_sum([to_ring(values[:1], 32)] * 3, 32), 32), [-15])


def test_weighted_encoding_decodes_to_the_fedavg_mean_within_one_step() -> None:
    rng = np.random.default_rng(0)
    scale = RingScale(bits=32, bound=0.5, max_total_samples=10_000, max_sites=10)
    updates = [rng.normal(0, 0.1, 1000).astype(np.float32) for _ in range(4)]
    counts = [10, 200, 35, 1]
    vectors = [
        encode_weighted(u, n, scale, rng).vector for u, n in zip(updates, counts, strict=True)
    ]
    mean, total = decode_mean(ring_sum(vectors, 32), scale)
    expected = np.average(np.stack(updates), axis=0, weights=counts)
    assert total == sum(counts)
    assert np.max(np.abs(mean - expected)) <= len(counts) * scale.step(total)


def test_clipping_to_the_bound_is_counted() -> None:
    scale = RingScale(bound=0.1, max_total_samples=10, max_sites=2)
    enc = encode_weighted(
        np.array([0.05, 0.5, -0.7], np.float32), 1, scale, np.random.default_rng(0)
    )
    assert enc.clipped == 2
    mean, _ = decode_mean(enc.vector, scale)
    np.testing.assert_allclose(mean, [0.05, 0.1, -0.1], atol=scale.step(1))


def test_encoding_refuses_nan_and_counts_outside_the_ring() -> None:
    scale = RingScale(max_total_samples=100)
    with pytest.raises(PrivacyError, match="NaN"):
        encode_weighted(np.array([np.nan]), 1, scale, np.random.default_rng(0))
    with pytest.raises(PrivacyError, match="num_samples"):
        encode_weighted(np.zeros(2), 101, scale, np.random.default_rng(0))


def test_shamir_recovers_from_any_threshold_subset_and_not_from_fewer() -> None:
    secret = os.urandom(32)
    shares = shamir.split(secret, threshold=3, holders=[1, 2, 3, 4, 5])
    assert shamir.combine({k: shares[k] for k in (1, 4, 5)}, threshold=3) == secret
    assert shamir.combine({k: shares[k] for k in (2, 3, 5)}, threshold=3) == secret
    with pytest.raises(PrivacyError, match="3 needed"):
        shamir.combine({k: shares[k] for k in (1, 2)}, threshold=3)
    # two right shares and one of another holder's give a different value (or none at all)
    forged = {1: shares[1], 2: shares[2], 3: shares[4]}
    with contextlib.suppress(PrivacyError):
        assert shamir.combine(forged, threshold=3) != secret


def test_agreement_is_symmetric_and_masks_cancel_in_pairs() -> None:
    a, b = KeyPair.generate(), KeyPair.generate()
    k_ab = agree(a.private, b.public, info=b"x")
    assert k_ab == agree(b.private, a.public, info=b"x")
    assert k_ab != agree(b.private, a.public, info=b"y")
    m = mask_stream(k_ab, 100, 32)
    assert m.dtype == np.uint32 and len(set(m.tolist())) > 90
    np.testing.assert_array_equal(m - mask_stream(k_ab, 100, 32), np.zeros(100, np.uint32))


def test_sealed_shares_do_not_open_under_other_associated_data() -> None:
    key = os.urandom(32)
    box = seal(key, b"share", associated=b"1->2")
    assert open_sealed(key, box, associated=b"1->2") == b"share"
    with pytest.raises(PrivacyError):
        open_sealed(key, box, associated=b"3->2")


def test_neighbour_graph_is_symmetric_with_the_asked_degree() -> None:
    graph = neighbour_graph(range(1, 21), 6, b"ctx")
    for i, ns in graph.items():
        assert i not in ns and 6 <= len(ns) <= 7
        assert all(i in graph[j] for j in ns)
    assert neighbour_graph([1, 2, 3], None, b"") == {
        1: frozenset({2, 3}),
        2: frozenset({1, 3}),
        3: frozenset({1, 2}),
    }


def _run_round(
    updates: list[np.ndarray],
    counts: list[int],
    params: SecAggParams,
    *,
    drop_after_masking: set[int] = frozenset(),  # type: ignore[assignment]
    drop_after_sharing: set[int] = frozenset(),  # type: ignore[assignment]
) -> tuple[np.ndarray, int, frozenset[int], SecAggServer]:
    rng = np.random.default_rng(1)
    sites = {i + 1: SecAggSite(i + 1, params) for i in range(len(updates))}
    server = SecAggServer(params)
    for site in sites.values():
        server.receive_advert(site.advertise())
    adverts = server.close_adverts()
    for i, site in sites.items():
        server.receive_shares(i, site.share(adverts))
    for i, site in sites.items():
        if i in drop_after_sharing:
            continue
        enc = encode_weighted(updates[i - 1], counts[i - 1], params.scale, rng)
        masked = site.mask(enc.vector, server.inbox(i))
        # a masked vector alone looks nothing like the update
        assert not np.array_equal(masked, enc.vector)
        server.receive_masked(i, masked)
    for i in sorted(server.uploaded):
        if i in drop_after_masking:
            continue
        server.receive_unmask(sites[i].unmask(server.unmask_request(i)))
    total, survivors = server.finish()
    mean, count = decode_mean(total, params.scale)
    return mean, count, survivors, server


@pytest.mark.parametrize(("neighbours", "threshold"), [(None, 3), (2, 2)])
def test_five_sites_one_dropping_mid_round_matches_plain_fedavg(
    neighbours: int | None, threshold: int
) -> None:
    rng = np.random.default_rng(7)
    updates = [rng.normal(0, 0.05, 3000).astype(np.float32) for _ in range(5)]
    counts = [40, 12, 77, 5, 30]
    scale = RingScale(bits=32, bound=1.0, max_total_samples=100_000, max_sites=10)
    params = SecAggParams(
        threshold=threshold, scale=scale, neighbours=neighbours, context=b"exp/r1/a0"
    )
    # site 4 shares its secrets, then drops before uploading (its neighbours masked with it)
    mean, count, survivors, _ = _run_round(updates, counts, params, drop_after_sharing={4})
    keep = [0, 1, 2, 4]
    expected = np.average(
        np.stack([updates[k] for k in keep]), axis=0, weights=[counts[k] for k in keep]
    )
    assert survivors == {1, 2, 3, 5}
    assert count == sum(counts[k] for k in keep)
    assert np.max(np.abs(mean - expected)) <= len(keep) * scale.step(count)


def test_a_site_dropping_after_its_upload_is_still_summed() -> None:
    rng = np.random.default_rng(3)
    updates = [rng.normal(0, 0.05, 500).astype(np.float32) for _ in range(5)]
    counts = [1] * 5
    params = SecAggParams(threshold=3, scale=RingScale(max_total_samples=100, max_sites=10))
    mean, count, survivors, _ = _run_round(updates, counts, params, drop_after_masking={2})
    assert survivors == {1, 2, 3, 4, 5} and count == 5
    np.testing.assert_allclose(
        mean, np.mean(np.stack(updates), axis=0), atol=5 * params.scale.step(5)
    )


def test_too_many_dropouts_cannot_be_unmasked() -> None:
    updates = [np.zeros(10, np.float32)] * 5
    params = SecAggParams(threshold=4, scale=RingScale(max_total_samples=100, max_sites=10))
    with pytest.raises(PrivacyError, match=r"threshold is 4|needed"):
        _run_round(updates, [1] * 5, params, drop_after_sharing={1, 2})


def test_server_keeps_only_the_running_sum() -> None:
    updates = [np.full(10, 0.1, np.float32)] * 3
    params = SecAggParams(threshold=2, scale=RingScale(max_total_samples=100, max_sites=10))
    *_, server = _run_round(updates, [1] * 3, params)
    arrays = [v for v in vars(server).values() if isinstance(v, np.ndarray)]
    assert len(arrays) == 1  # the sum; no per-site vector is held


def test_a_site_refuses_to_reveal_both_secrets_of_one_neighbour() -> None:
    params = SecAggParams(threshold=2, scale=RingScale(max_total_samples=100, max_sites=10))
    sites = [SecAggSite(i, params) for i in (1, 2, 3)]
    adverts = {s.index: s.advertise() for s in sites}
    boxes = {s.index: s.share(adverts) for s in sites}
    inbox = {v: boxes[v][1] for v in (2, 3)}
    sites[0].mask(np.zeros(4, np.uint32), inbox)
    with pytest.raises(PrivacyError, match="both"):
        sites[0].unmask(UnmaskRequest(survivors=frozenset({2}), dropped=frozenset({2})))
    with pytest.raises(PrivacyError, match="named dropped"):
        sites[0].unmask(UnmaskRequest(survivors=frozenset(), dropped=frozenset({1})))
