"""The server's side of secure aggregation: relay keys and shares, sum masked vectors, unmask.

The server keeps a running sum of the masked vectors and never an individual one: a masked
vector is added to the sum and dropped on arrival. After the unmask step it subtracts each
survivor's self mask and the pairwise masks survivors shared with sites that dropped, leaving
``Σ x_u`` over the survivors.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from data_specs.errors import PrivacyError
from data_specs.privacy import shamir
from data_specs.privacy.masks import KeyPair, agree, mask_stream, pair_info
from data_specs.privacy.secagg_common import (
    KeyAdvert,
    SecAggParams,
    UnmaskRequest,
    UnmaskResponse,
    adverts_by_index,
    neighbour_graph,
)


class SecAggServer:
    """The aggregator's state for one round attempt.

    Args:
        params: the round's protocol parameters.
    """

    def __init__(self, params: SecAggParams) -> None:
        self.params = params
        self.adverts: dict[int, KeyAdvert] = {}
        self.graph: dict[int, frozenset[int]] = {}
        self._mailbox: dict[int, dict[int, bytes]] = {}  # recipient -> sender -> ciphertext
        self.shared: set[int] = set()  # U2: sites whose shares were relayed
        self.uploaded: set[int] = set()  # U3: sites whose masked vector is in the sum
        self._sum: np.ndarray | None = None
        self._responses: dict[int, UnmaskResponse] = {}

    # -- step 1 ---------------------------------------------------------------------------
    def receive_advert(self, advert: KeyAdvert) -> None:
        if self.graph:
            raise PrivacyError("adverts are closed for this round")
        self.adverts[advert.index] = advert

    def close_adverts(self) -> dict[int, KeyAdvert]:
        """The advert list every site receives.

        Raises:
            PrivacyError: fewer adverts than the threshold.
        """
        if len(self.adverts) < self.params.threshold:
            raise PrivacyError(
                f"{len(self.adverts)} site(s) advertised keys, threshold is {self.params.threshold}"
            )
        self.adverts = adverts_by_index(self.adverts)
        self.graph = neighbour_graph(self.adverts, self.params.neighbours, self.params.context)
        return dict(self.adverts)

    # -- step 2 ---------------------------------------------------------------------------
    def receive_shares(self, sender: int, shares: Mapping[int, bytes]) -> None:
        """Relay a site's encrypted shares (the server cannot read them).

        Raises:
            PrivacyError: an unknown sender, or shares not addressed to exactly its neighbours.
        """
        if sender not in self.graph:
            raise PrivacyError(f"site {sender} did not advertise keys in this round")
        if set(shares) != set(self.graph[sender]):
            raise PrivacyError(f"site {sender} must send one share to each of its neighbours")
        for recipient, sealed in shares.items():
            self._mailbox.setdefault(recipient, {})[sender] = sealed
        self.shared.add(sender)

    def inbox(self, recipient: int) -> dict[int, bytes]:
        """The shares addressed to ``recipient`` from sites that completed step 2."""
        return dict(self._mailbox.get(recipient, {}))

    # -- step 3 ---------------------------------------------------------------------------
    def receive_masked(self, sender: int, vector: np.ndarray) -> None:
        """Add a masked vector to the running sum; the vector itself is not kept.

        Raises:
            PrivacyError: a sender that did not share, a second upload, or a wrong length.
        """
        if sender not in self.shared:
            raise PrivacyError(f"site {sender} did not share its secrets in this round")
        if sender in self.uploaded:
            raise PrivacyError(f"site {sender} already uploaded its masked vector")
        arr = np.asarray(vector)
        if arr.dtype != self.params.scale.dtype:
            raise PrivacyError(f"masked vector of site {sender} has dtype {arr.dtype}")
        if self._sum is None:
            self._sum = arr.copy()
        elif arr.shape != self._sum.shape:
            raise PrivacyError(
                f"masked vector of site {sender} has {arr.size} elements, expected {self._sum.size}"
            )
        else:
            self._sum += arr
        self.uploaded.add(sender)

    def restore_sum(self, total: np.ndarray, uploaded: set[int]) -> None:
        """Resume from a stored running sum and the sites in it (a service keeps these on disk).

        Raises:
            PrivacyError: a site in ``uploaded`` that did not share.
        """
        if not uploaded <= self.shared:
            raise PrivacyError(f"sites {sorted(uploaded - self.shared)} in the sum did not share")
        self._sum = np.array(total, dtype=self.params.scale.dtype)
        self.uploaded = set(uploaded)

    # -- step 4 ---------------------------------------------------------------------------
    def unmask_request(self, index: int) -> UnmaskRequest:
        """What one surviving site is asked: its uploaded and its dropped neighbours."""
        if index not in self.uploaded:
            raise PrivacyError(f"site {index} did not upload; it is not asked to unmask")
        holders_of = self.graph[index] & self.shared
        dropped = self.shared - self.uploaded
        return UnmaskRequest(
            survivors=frozenset((holders_of & self.uploaded) | {index}),
            dropped=frozenset(holders_of & dropped),
        )

    def receive_unmask(self, response: UnmaskResponse) -> None:
        if response.index not in self.uploaded:
            raise PrivacyError(f"an unmask answer from site {response.index}, which did not upload")
        self._responses[response.index] = response

    def finish(self) -> tuple[np.ndarray, frozenset[int]]:
        """The unmasked ring sum over the survivors, and who they are.

        Raises:
            PrivacyError: fewer than ``threshold`` uploads, or too few shares to recover a
                seed or key (the round cannot be unmasked; it must be retried).
        """
        if self._sum is None or len(self.uploaded) < self.params.threshold:
            raise PrivacyError(
                f"{len(self.uploaded)} masked upload(s), threshold is {self.params.threshold}"
            )
        bits, size = self.params.scale.bits, self._sum.size
        total = self._sum.copy()
        dropped = self.shared - self.uploaded
        for u in sorted(self.uploaded):
            seed = self._recover(u, "seed")
            total -= mask_stream(seed, size, bits)
        for v in sorted(dropped):
            s_private = self._recover(v, "key")
            if KeyPair.from_private(s_private).public != self.adverts[v].s_public:
                raise PrivacyError(f"the recovered mask key of site {v} does not match its advert")
            for u in sorted(self.graph[v] & self.uploaded):
                seed = agree(
                    s_private,
                    self.adverts[u].s_public,
                    info=pair_info(self.params.context, "mask", u, v),
                )
                stream = mask_stream(seed, size, bits)
                if u < v:  # u added +PRG(s_uv); remove it
                    total -= stream
                else:
                    total += stream
        return total, frozenset(self.uploaded)

    def _recover(self, site: int, what: str) -> bytes:
        shares = {}
        for responder, response in self._responses.items():
            table = response.seed_shares if what == "seed" else response.key_shares
            if site in table:
                shares[responder] = table[site]
        if len(shares) < self.params.threshold:
            raise PrivacyError(
                f"{len(shares)} share(s) of the {what} of site {site} returned, "
                f"{self.params.threshold} needed"
            )
        return shamir.combine(shares, threshold=self.params.threshold)
