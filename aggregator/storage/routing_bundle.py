"""The routing bundle: the global model plus the latest shared personal models, in one safetensors file.

The format is ``data_specs.weights.routing_bundle`` (expert 0 is the global model). A bundle is a pure function of its inputs, so it is
stored once as a blob and reused until a new global or personal model appears.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from aggregator.storage.blobs import BlobRef, BlobStore
from aggregator.storage.global_models import load_weights
from data_specs.task_spec import TaskSpec
from data_specs.weights.routing_bundle import encode_routing_bundle


@dataclass(frozen=True)
class Expert:
    """One model of the bundle.

    Args:
        sha256: its blob.
        source: ``global`` or ``site``.
        name: ``global`` or the site's name.
        round: the round it belongs to.
    """

    sha256: str
    source: str
    name: str
    round: int


class RoutingBundles:
    """Assembles routing bundles and remembers which inputs gave which blob.

    Args:
        blobs: the blob store.
    """

    def __init__(self, blobs: BlobStore) -> None:
        self._blobs = blobs
        self._made: dict[str, BlobRef] = {}
        self._lock = threading.Lock()

    def get(
        self,
        *,
        spec: TaskSpec,
        experts: Sequence[Expert],
        class_prior: Sequence[float] | None = None,
        class_names: Sequence[str] | None = None,
    ) -> BlobRef:
        """The bundle of these experts (expert 0 first), built on first use.

        Args:
            spec: the experiment's task spec.
            experts: global model first, then site models sorted by site id.
            class_prior: the federation's class shares (background first). Default None.
            class_names: the experiment's class names (background first). Default None.
        """
        prior = [float(p) for p in class_prior] if class_prior is not None else None
        names = list(class_names or ())
        key = hashlib.sha256(
            json.dumps(
                [spec.spec_hash(), [e.__dict__ for e in experts], prior, names], sort_keys=True
            ).encode()
        ).hexdigest()
        with self._lock:
            ref = self._made.get(key)
            if ref is not None and self._blobs.exists(ref.sha256):
                return ref
            ref = self._blobs.put_bytes(_assemble(self._blobs, spec, experts, prior, names))
            self._made[key] = ref
            return ref


def _assemble(
    blobs: BlobStore,
    spec: TaskSpec,
    experts: Sequence[Expert],
    prior: list[float] | None,
    names: list[str],
) -> bytes:
    states = [load_weights(blobs.require(expert.sha256)) for expert in experts]
    # The global model's own tensors are the reference shapes: no torch needed here.
    expected = {k: (tuple(v.shape), str(v.dtype)) for k, v in states[0].items()}
    sources = [
        {"index": i, "source": e.source, "name": e.name, "round": e.round}
        for i, e in enumerate(experts)
    ]
    return encode_routing_bundle(
        states, sources, spec, expected=expected, class_prior=prior, class_names=names
    )
