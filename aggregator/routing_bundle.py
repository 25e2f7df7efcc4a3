"""The routing bundle: the global model plus the latest shared personal models, in one safetensors file.

Keys are ``expert.<i>.<state-dict key>`` (expert 0 is the global model); metadata carries
``fedseg_routing=1``, ``spec_hash``, ``spec`` (JSON ``TaskSpec``) and ``experts`` (JSON list of
``{"index", "source", "name", "round"}``). A bundle is a pure function of its inputs, so it is
stored once as a blob and reused until a new global or personal model appears.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from safetensors.numpy import save as st_save

from aggregator.blobs import BlobRef, BlobStore
from aggregator.global_models import load_weights
from data_specs.bundle import canonical_safetensors
from data_specs.task_spec import TaskSpec

ROUTING_FORMAT_KEY = "fedseg_routing"
ROUTING_FORMAT_VERSION = "1"


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

    def get(self, *, spec: TaskSpec, experts: Sequence[Expert]) -> BlobRef:
        """The bundle of these experts (expert 0 first), built on first use.

        Args:
            spec: the experiment's task spec.
            experts: global model first, then site models sorted by site id.
        """
        key = hashlib.sha256(
            json.dumps([spec.spec_hash(), [e.__dict__ for e in experts]], sort_keys=True).encode()
        ).hexdigest()
        with self._lock:
            ref = self._made.get(key)
            if ref is not None and self._blobs.exists(ref.sha256):
                return ref
            ref = self._blobs.put_bytes(_assemble(self._blobs, spec, experts))
            self._made[key] = ref
            return ref


def _assemble(blobs: BlobStore, spec: TaskSpec, experts: Sequence[Expert]) -> bytes:
    tensors: dict[str, np.ndarray] = {}
    listing = []
    for index, expert in enumerate(experts):
        for name, value in load_weights(blobs.require(expert.sha256)).items():
            tensors[f"expert.{index}.{name}"] = value
        listing.append(
            {"index": index, "source": expert.source, "name": expert.name, "round": expert.round}
        )
    metadata = {
        ROUTING_FORMAT_KEY: ROUTING_FORMAT_VERSION,
        "spec_hash": spec.spec_hash(),
        "spec": spec.model_dump_json(),
        "experts": json.dumps(listing),
    }
    return canonical_safetensors(st_save(tensors, metadata=metadata))
