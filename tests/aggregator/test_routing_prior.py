"""Routing bundles carry the federation's class prior (from the sites' fingerprints)."""

from __future__ import annotations

from pathlib import Path

import pytest

from aggregator.storage.blobs import BlobStore
from aggregator.storage.global_models import store_global
from aggregator.storage.routing_bundle import Expert, RoutingBundles
from data_specs.task_spec import TaskSpec
from data_specs.weights.routing_bundle import read_class_prior
from data_specs.weights.unet_layout import unet_layout

SPEC = TaskSpec(out_channels=3, channels=(4, 8), strides=(2,), patch_size=(16, 16))


def test_bundle_carries_the_prior_and_a_new_prior_makes_a_new_bundle(tmp_path: Path) -> None:
    import numpy as np

    blobs = BlobStore(tmp_path / "blobs")
    tensors = {k: np.zeros(shape, dtype) for k, (shape, dtype) in unet_layout(SPEC).items()}
    ref = store_global(blobs, tensors, spec_hash=SPEC.spec_hash(), round_number=1)
    experts = [Expert(ref.sha256, "global", "global", 1)]
    bundles = RoutingBundles(blobs)
    plain = bundles.get(spec=SPEC, experts=experts)
    assert read_class_prior(blobs.require(plain.sha256).read_bytes()) is None
    with_prior = bundles.get(spec=SPEC, experts=experts, class_prior=[0.9, 0.06, 0.04])
    assert with_prior.sha256 != plain.sha256
    got = read_class_prior(blobs.require(with_prior.sha256).read_bytes())
    assert got == pytest.approx([0.9, 0.06, 0.04])
