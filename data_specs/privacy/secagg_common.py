"""What both ends of secure aggregation share: parameters, messages and the neighbour graph.

The protocol is SecAgg (Bonawitz et al. 2017) with the sparse neighbour graph of SecAgg+
(Bell et al. 2020): a site masks with, and secret-shares its seeds among, only its
``neighbours`` (every other site when ``neighbours`` is None). Four steps per round:

1. *advertise*: each site sends two fresh X25519 public keys (``c``: share encryption,
   ``s``: mask agreement);
2. *share*: each site splits its self-mask seed ``b_u`` and its mask key ``s_sk_u`` into Shamir
   shares for its neighbours, encrypted for each, and the server relays them;
3. *masked upload*: each site sends ``y_u = x_u + PRG(b_u) + Σ_v ±PRG(s_uv)`` in the ring;
4. *unmask*: each surviving site returns, for each neighbour, the share of ``b_v`` if ``v``
   uploaded, or of ``s_sk_v`` if it dropped after sharing (never both for one ``v``). With
   ``threshold`` shares per site the server removes every mask and is left with ``Σ_u x_u``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass

from data_specs.errors import PrivacyError
from data_specs.privacy.ring import RingScale


@dataclass(frozen=True)
class SecAggParams:
    """The protocol's parameters for one round.

    Args:
        threshold: shares needed to recover a site's secret; also the fewest sites that must
            survive to the unmask step. Keep it above half the neighbourhood so that the
            server cannot gather both secrets of a site. Example: ``3`` of 5.
        neighbours: SecAgg+ neighbourhood size per site; None masks with every other site.
        scale: the ring and its fixed-point scale.
        context: binds keys and seeds to one experiment, round and attempt.
            Example: ``b"exp-1/round-3/attempt-0"``.
    """

    threshold: int
    scale: RingScale = field(default_factory=RingScale)
    neighbours: int | None = None
    context: bytes = b""

    def __post_init__(self) -> None:
        if self.threshold < 1:
            raise PrivacyError(f"threshold must be >= 1, got {self.threshold}")
        if self.neighbours is not None and self.neighbours < 1:
            raise PrivacyError(f"neighbours must be >= 1 or None, got {self.neighbours}")


@dataclass(frozen=True)
class KeyAdvert:
    """Step 1: a site's two public keys for this round."""

    index: int
    c_public: bytes
    s_public: bytes


@dataclass(frozen=True)
class UnmaskRequest:
    """Step 4, server to one site: which of its neighbours uploaded and which dropped."""

    survivors: frozenset[int]
    dropped: frozenset[int]


@dataclass(frozen=True)
class UnmaskResponse:
    """Step 4, site to server: shares of ``b_v`` (survivors) and of ``s_sk_v`` (dropped)."""

    index: int
    seed_shares: dict[int, bytes]
    key_shares: dict[int, bytes]


def neighbour_graph(
    indices: Iterable[int], size: int | None, context: bytes
) -> dict[int, frozenset[int]]:
    """A symmetric graph where each site has about ``size`` neighbours (all others when None).

    The sites are placed on a circle in an order drawn from ``context`` (public, so every
    party computes the same graph) and each is joined to the ``⌈size/2⌉`` next ones on either
    side, as in SecAgg+'s Harary graphs.

    Example: ``neighbour_graph([1, 2, 3], None, b"") == {1: {2, 3}, 2: {1, 3}, 3: {1, 2}}``.
    """
    import numpy as np

    ordered = sorted(set(indices))
    n = len(ordered)
    if size is None or size >= n - 1:
        return {i: frozenset(j for j in ordered if j != i) for i in ordered}
    digest = hashlib.sha256(b"fedseg-secagg-graph\0" + context).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:16], "little"))
    circle = [ordered[k] for k in rng.permutation(n)]
    half = -(-size // 2)
    graph: dict[int, set[int]] = {i: set() for i in ordered}
    for pos, i in enumerate(circle):
        for step in range(1, half + 1):
            j = circle[(pos + step) % n]
            if j != i:
                graph[i].add(j)
                graph[j].add(i)
    return {i: frozenset(v) for i, v in graph.items()}


def share_associated(context: bytes, sender: int, recipient: int) -> bytes:
    """Associated data of one encrypted share: who sent it to whom in which round."""
    return b"fedseg-secagg-share\0" + context + f"\0{sender}\0{recipient}".encode()


def pack_share_pair(seed_share: bytes, key_share: bytes) -> bytes:
    """The plaintext of one relayed share: the ``b`` share then the ``s_sk`` share."""
    return seed_share + key_share


def unpack_share_pair(plain: bytes) -> tuple[bytes, bytes]:
    """Inverse of :func:`pack_share_pair`."""
    half = len(plain) // 2
    if len(plain) % 2:
        raise PrivacyError("a relayed share has an odd length")
    return plain[:half], plain[half:]


def adverts_by_index(adverts: Mapping[int, KeyAdvert]) -> dict[int, KeyAdvert]:
    """Check that every advert sits under its own index and keys are 32 bytes."""
    for index, advert in adverts.items():
        if advert.index != index:
            raise PrivacyError(f"advert of site {advert.index} listed under {index}")
        if len(advert.c_public) != 32 or len(advert.s_public) != 32:
            raise PrivacyError(f"site {index} advertised a key that is not 32 bytes")
        if advert.c_public == advert.s_public:
            raise PrivacyError(f"site {index} advertised the same key twice")
    return dict(adverts)
