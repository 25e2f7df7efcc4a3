"""Secure aggregation at the site: the update leaves only as a masked ring vector.

Run in the upload phase instead of the plain bundle upload. The update written in the trained
phase (clipped already under DP) becomes ``W − θ``, flattened over the float keys the
aggregator averages; under distributed DP each site adds its share of the Gaussian noise;
then the four protocol steps run against the aggregator, polling each step's outcome until it
closes or the task's deadline passes. Polls start 20 ms apart and back off by 1.5× to
``poll_s``: a step that closes soon after a site asked (the other sites were a moment behind)
is noticed within a fraction of the time waited so far, not a fixed half second later; each of
the three waits sits on the round's critical path. The protocol's secrets live in memory only: an agent
that restarts in the middle cannot resume the round and drops the task.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeVar

import numpy as np

from data_specs.constants import HEADER_METRICS, HEADER_NUM_SAMPLES, HEADER_SHA256, BundleKind
from data_specs.errors import PrivacyError
from data_specs.polling import poll_until
from data_specs.privacy.ring import encode_weighted
from data_specs.privacy.secagg_site import SecAggSite
from data_specs.privacy.secagg_wire import (
    RING_MEDIA_TYPE,
    AdvertsOut,
    KeysIn,
    SharesIn,
    UnmaskIn,
    UnmaskOut,
    by_index,
    flat_keys,
    flatten,
    from_index,
)
from data_specs.task_spec import expected_tensors
from data_specs.weights.bundle import decode_bundle, sha256_hex
from data_specs.wire import SiteMetrics, TaskAssignment, UpdateReceipt
from site_agent.errors import RoundClosedError, TrainingError
from site_agent.federation.client import AggregatorClient, _parse
from site_agent.federation.workdir import safe_id

log = logging.getLogger(__name__)
T = TypeVar("T")
_BACKOFF = 1.5  # growth of the pause between polls of a step still open


def masked_input(
    task: TaskAssignment,
    update: bytes,
    global_state: dict[str, np.ndarray],
    num_samples: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """The site's ring vector before masking: weighted, noised (distributed DP), quantised.

    Raises:
        TrainingError: the update cannot be encoded into the ring.
    """
    assert task.secagg is not None
    setup = task.secagg
    expected = {k: (tuple(s), d) for k, (s, d) in expected_tensors(task.spec).items()}
    keys = flat_keys(expected, frozenset(task.local_keys))
    bundle = decode_bundle(update, expected=expected_tensors(task.spec), spec_hash=task.spec_hash)
    tensors = bundle.tensors
    if bundle.meta.kind == BundleKind.FULL:
        tensors = {
            k: v.astype(np.float64) - global_state[k] for k, v in tensors.items() if k in keys
        }
    flat = flatten(tensors, keys)
    if setup.noise_std > 0:
        flat = flat + rng.standard_normal(flat.size) * setup.noise_std
    try:
        weight = num_samples if setup.weighted else 1
        return encode_weighted(flat, weight, setup.params().scale, rng).vector
    except PrivacyError as exc:
        raise TrainingError(f"the update cannot enter the secure-aggregation ring: {exc}") from exc


class SecAggUpload:
    """Runs the protocol for one task over the agent's client.

    Args:
        client: the aggregator client (its privacy guard checks every step).
        task: the task, with ``secagg`` set.
        poll_s: the longest pause between polls of a step still open. Default 0.5.
        first_poll_s: the first pause; each further one is 1.5× longer, up to ``poll_s``.
            Default 0.02.
        clock: current time (tests). Default ``datetime.now(UTC)``.
    """

    def __init__(
        self,
        client: AggregatorClient,
        task: TaskAssignment,
        *,
        poll_s: float = 0.5,
        first_poll_s: float = 0.02,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        assert task.secagg is not None
        self.client = client
        self.task = task
        self.site = SecAggSite(task.secagg.index, task.secagg.params())
        self.poll_s = poll_s
        self.first_poll_s = first_poll_s
        self.clock = clock
        self._base = f"/tasks/{safe_id(task.task_id)}/secagg"

    def run(self, vector: np.ndarray, *, num_samples: int, metrics: SiteMetrics) -> UpdateReceipt:
        """All four steps; returns the receipt of the masked upload.

        Raises:
            RoundClosedError: the round closed or a step did not close before the deadline.
            TaskRefusedError: the aggregator refused a step.
        """
        advert = self.site.advertise()
        keys = KeysIn(c_public=advert.c_public.hex(), s_public=advert.s_public.hex())
        self._post("/keys", keys.model_dump(), "secure aggregation keys")
        adverts = self._wait("/keys", AdvertsOut, "key list")
        try:
            boxes = self.site.share({a.index: a.advert() for a in adverts.adverts})
        except PrivacyError as exc:
            raise RoundClosedError(f"secure aggregation cannot go on: {exc}") from exc
        self._post("/shares", SharesIn(shares=by_index(boxes)).model_dump(), "shares")
        inbox = self._wait("/inbox", SharesIn, "share inbox")
        masked = self.site.mask(vector, from_index(inbox.shares))
        body = masked.astype(masked.dtype.newbyteorder("<")).tobytes()
        sha = sha256_hex(body)
        self.client.guard.allow_ring(self.task.task_id, len(body))
        headers = {
            HEADER_SHA256: sha,
            HEADER_NUM_SAMPLES: str(num_samples),
            HEADER_METRICS: metrics.model_dump_json(exclude_none=True),
            "Content-Type": RING_MEDIA_TYPE,
        }
        resp = self.client._call(
            "PUT", f"{self._base}/masked", "masked upload", content=body, headers=headers
        )
        receipt = _parse(UpdateReceipt, resp, "masked upload receipt")
        request = self._wait("/unmask", UnmaskOut, "unmask request")
        answer = self.site.unmask(request.request())
        out = UnmaskIn(
            seed_shares=by_index(answer.seed_shares), key_shares=by_index(answer.key_shares)
        )
        self._post("/unmask", out.model_dump(), "unmask answer")
        return receipt

    def _post(self, path: str, body: dict[str, object], what: str) -> None:
        self.client._call("POST", f"{self._base}{path}", what, json=body)

    def _wait(self, path: str, model: type[T], what: str) -> T:
        """Poll a step until it answers (204: still open), up to the task's deadline."""
        deadline = self.task.deadline
        resp = poll_until(
            lambda: self.client._call("GET", f"{self._base}{path}", what),
            lambda answer: answer.status_code != 204,
            interval_s=self.poll_s,
            first_interval_s=self.first_poll_s,
            backoff=_BACKOFF,
            expired=None if deadline is None else (lambda: self.clock() >= deadline),
            give_up=lambda _answer: RoundClosedError(
                f"the round's deadline passed while waiting for the {what}"
            ),
        )
        return _parse(model, resp, what)
