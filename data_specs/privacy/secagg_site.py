"""The site's side of secure aggregation: keys, shares, the masked vector and the unmask answer.

A :class:`SecAggSite` lives for one round attempt; its secrets (the private keys, the self-mask
seed, the shares it holds for neighbours) never leave it except as encrypted shares and the
unmask answer, which for any neighbour reveals either its seed share or its key share, never
both.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from data_specs.errors import PrivacyError
from data_specs.privacy import shamir
from data_specs.privacy.masks import KeyPair, agree, mask_stream, open_sealed, pair_info, seal
from data_specs.privacy.secagg_common import (
    KeyAdvert,
    SecAggParams,
    UnmaskRequest,
    UnmaskResponse,
    adverts_by_index,
    neighbour_graph,
    pack_share_pair,
    share_associated,
    unpack_share_pair,
)


class SecAggSite:
    """One site in one round.

    Args:
        index: the site's index in the round, ≥ 1 (its Shamir x-coordinate). Example: ``3``.
        params: the round's protocol parameters.
    """

    def __init__(self, index: int, params: SecAggParams) -> None:
        if index < 1:
            raise PrivacyError(f"a site index is >= 1, got {index}")
        self.index = index
        self.params = params
        self._c = KeyPair.generate()
        self._s = KeyPair.generate()
        self._seed = os.urandom(32)  # b_u, the self mask
        self._adverts: dict[int, KeyAdvert] = {}
        self._neighbours: frozenset[int] = frozenset()
        self._held: dict[int, tuple[bytes, bytes]] = {}  # v -> (share of b_v, share of s_sk_v)
        self._masked_with: frozenset[int] = frozenset()

    # -- step 1 ---------------------------------------------------------------------------
    def advertise(self) -> KeyAdvert:
        return KeyAdvert(self.index, self._c.public, self._s.public)

    # -- step 2 ---------------------------------------------------------------------------
    def share(self, adverts: Mapping[int, KeyAdvert]) -> dict[int, bytes]:
        """Encrypted shares of ``b_u`` and ``s_sk_u`` for each neighbour, keyed by recipient.

        Raises:
            PrivacyError: this site's own advert is missing or changed, too few sites for the
                threshold, or a malformed key.
        """
        adverts = adverts_by_index(adverts)
        if adverts.get(self.index) != self.advertise():
            raise PrivacyError("the advert list does not carry this site's own keys")
        graph = neighbour_graph(adverts, self.params.neighbours, self.params.context)
        self._adverts, self._neighbours = adverts, graph[self.index]
        holders = sorted(self._neighbours | {self.index})
        if len(holders) < self.params.threshold:
            raise PrivacyError(
                f"{len(holders)} share holders for threshold {self.params.threshold}: "
                "too few sites advertised keys"
            )
        seed_shares = shamir.split(self._seed, threshold=self.params.threshold, holders=holders)
        key_shares = shamir.split(self._s.private, threshold=self.params.threshold, holders=holders)
        self._held[self.index] = (seed_shares[self.index], key_shares[self.index])
        out = {}
        for v in sorted(self._neighbours):
            key = agree(
                self._c.private,
                adverts[v].c_public,
                info=pair_info(self.params.context, "share", self.index, v),
            )
            plain = pack_share_pair(seed_shares[v], key_shares[v])
            out[v] = seal(
                key, plain, associated=share_associated(self.params.context, self.index, v)
            )
        return out

    # -- step 3 ---------------------------------------------------------------------------
    def mask(self, vector: np.ndarray, inbox: Mapping[int, bytes]) -> np.ndarray:
        """The masked ring vector; ``inbox`` holds the shares neighbours sent this site.

        Only neighbours whose shares arrived are masked with (the server relayed exactly those,
        so it knows the same set).

        Raises:
            PrivacyError: a share from a non-neighbour or one that does not authenticate.
        """
        if not self._adverts:
            raise PrivacyError("mask called before share")
        bits = self.params.scale.bits
        vector = np.asarray(vector, dtype=self.params.scale.dtype)
        for v, sealed in inbox.items():
            if v not in self._neighbours:
                raise PrivacyError(f"a share from site {v}, which is not a neighbour")
            key = agree(
                self._c.private,
                self._adverts[v].c_public,
                info=pair_info(self.params.context, "share", self.index, v),
            )
            plain = open_sealed(
                key, sealed, associated=share_associated(self.params.context, v, self.index)
            )
            self._held[v] = unpack_share_pair(plain)
        self._masked_with = frozenset(inbox)
        out = vector + mask_stream(self._seed, vector.size, bits)
        for v in sorted(self._masked_with):
            seed = agree(
                self._s.private,
                self._adverts[v].s_public,
                info=pair_info(self.params.context, "mask", self.index, v),
            )
            stream = mask_stream(seed, vector.size, bits)
            if self.index < v:
                out += stream
            else:
                out -= stream
        return out

    # -- step 4 ---------------------------------------------------------------------------
    def unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        """Seed shares for surviving neighbours (and itself), key shares for dropped ones.

        Raises:
            PrivacyError: a site named both survivor and dropped, this site named dropped, or a
                site this site holds no share of.
        """
        both = request.survivors & request.dropped
        if both:
            raise PrivacyError(f"sites {sorted(both)} named both survivor and dropped; refusing")
        if self.index in request.dropped:
            raise PrivacyError("this site is named dropped; refusing to reveal its key share")
        unknown = (request.survivors | request.dropped) - set(self._held)
        if unknown:
            raise PrivacyError(f"no share held for sites {sorted(unknown)}")
        return UnmaskResponse(
            self.index,
            seed_shares={v: self._held[v][0] for v in sorted(request.survivors)},
            key_shares={v: self._held[v][1] for v in sorted(request.dropped)},
        )
