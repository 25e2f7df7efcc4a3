"""Routing bundle codec: round trip, every refusal, and the torch-free aggregator path."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.numpy import save as st_save

from data_specs.errors import BundleError, RoutingBundleError, RoutingSpecMismatchError
from data_specs.task_spec import TaskSpec, build_unet, expected_tensors
from data_specs.weights.bundle import BundleMeta, encode_bundle
from data_specs.weights.routing_bundle import decode_routing_bundle, encode_routing_bundle

SPEC = TaskSpec(channels=(4, 8), strides=(2,), patch_size=(32, 32))
OTHER = TaskSpec(channels=(4, 8), strides=(2,), patch_size=(32, 32), out_channels=3)


def _experts(n: int = 3) -> list[dict[str, np.ndarray]]:
    out = []
    for i in range(n):
        torch.manual_seed(i)
        out.append({k: v.numpy().copy() for k, v in build_unet(SPEC).state_dict().items()})
    return out


def _sources(n: int = 3) -> list[dict[str, object]]:
    return [{"source": "global", "name": "global", "round": 7}] + [
        {"source": "site", "name": f"site-{i}", "round": 7} for i in range(1, n)
    ]


def test_round_trip_keeps_every_expert_and_source() -> None:
    experts = _experts()
    as_torch = [experts[0]] + [{k: torch.from_numpy(v) for k, v in e.items()} for e in experts[1:]]
    data = encode_routing_bundle(as_torch, _sources(), SPEC)
    bundle = decode_routing_bundle(data, SPEC)
    assert bundle.spec == SPEC and bundle.num_experts == 3
    assert [s.name for s in bundle.sources] == ["global", "site-1", "site-2"]
    assert [s.index for s in bundle.sources] == [0, 1, 2]
    for got, want in zip(bundle.experts, experts, strict=True):
        assert list(got) == list(expected_tensors(SPEC))  # state-dict order
        for k, v in want.items():
            np.testing.assert_array_equal(got[k], v)
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])["__metadata__"]
    assert header["fedseg_routing"] == "1" and header["spec_hash"] == SPEC.spec_hash()
    assert json.loads(header["experts"])[1] == {
        "index": 1,
        "source": "site",
        "name": "site-1",
        "round": 7,
    }
    # Without a spec, the bundle's own spec is used.
    assert decode_routing_bundle(data).spec == SPEC


def test_bundle_of_another_task_is_refused() -> None:
    data = encode_routing_bundle(_experts(2), _sources(2), SPEC)
    with pytest.raises(RoutingSpecMismatchError, match="task spec"):
        decode_routing_bundle(data, OTHER)


def test_expert_with_mismatched_shapes_or_missing_keys_is_refused() -> None:
    experts = _experts()
    experts[2]["model.0.residual.weight"] = np.zeros((4, 1, 1, 1), np.float32)
    with pytest.raises(RoutingSpecMismatchError, match=r"expert 2: .*model\.0\.residual\.weight"):
        encode_routing_bundle(experts, _sources(), SPEC)
    experts = _experts()
    del experts[1]["model.2.0.conv.bias"]
    with pytest.raises(RoutingSpecMismatchError, match=r"expert 1: .*missing keys"):
        encode_routing_bundle(experts, _sources(), SPEC)


def _forge(arrays: dict[str, np.ndarray], spec: TaskSpec, n: int) -> bytes:
    # A bundle written by someone else's encoder: right metadata, whatever tensors.
    meta = {
        "fedseg_routing": "1",
        "spec_hash": spec.spec_hash(),
        "spec": spec.model_dump_json(),
        "experts": json.dumps(_sources(n)),
    }
    return st_save(arrays, metadata=meta)


def test_decode_checks_each_expert_against_the_spec() -> None:
    experts = _experts(2)
    flat = {f"expert.{i}.{k}": v for i, e in enumerate(experts) for k, v in e.items()}
    decode_routing_bundle(_forge(flat, SPEC, 2), SPEC)  # the forge itself is fine
    flat["expert.1.model.0.conv.unit0.conv.weight"] = np.zeros((4, 1, 5, 5), np.float32)
    with pytest.raises(RoutingSpecMismatchError, match="expert 1"):
        decode_routing_bundle(_forge(flat, SPEC, 2), SPEC)
    flat = {f"expert.{i}.{k}": v for i, e in enumerate(experts) for k, v in e.items()}
    flat["expert.2.model.0.residual.bias"] = np.zeros(4, np.float32)  # no expert 2 announced
    with pytest.raises(RoutingBundleError, match=r"outside expert\.0\.\.expert\.1"):
        decode_routing_bundle(_forge(flat, SPEC, 2), SPEC)


def test_non_finite_values_are_refused_both_ways() -> None:
    experts = _experts(2)
    experts[1]["model.1.submodule.residual.bias"][0] = np.nan
    with pytest.raises(RoutingBundleError, match=r"expert 1: .*non-finite"):
        encode_routing_bundle(experts, _sources(2), SPEC)
    flat = {f"expert.{i}.{k}": v for i, e in enumerate(experts) for k, v in e.items()}
    with pytest.raises(RoutingBundleError, match="non-finite"):
        decode_routing_bundle(_forge(flat, SPEC, 2), SPEC)


@pytest.mark.parametrize(
    "data",
    [b"", b"garbage, not safetensors at all", b"\xff" * 64],
    ids=["empty", "text", "bytes"],
)
def test_garbage_is_refused(data: bytes) -> None:
    with pytest.raises(RoutingBundleError, match="not a routing bundle") as info:
        decode_routing_bundle(data, SPEC)
    # One tree for the package, and the data_specs tree for code at the download edge.
    assert isinstance(info.value, BundleError)  # refused like any bad weights bundle


def test_plain_weights_bundle_is_not_a_routing_bundle() -> None:
    data = encode_bundle(_experts(1)[0], BundleMeta(spec_hash=SPEC.spec_hash(), round=1))
    with pytest.raises(RoutingBundleError, match="fedseg_routing"):
        decode_routing_bundle(data, SPEC)


def test_sources_are_checked() -> None:
    bad = _sources(2)
    bad[0]["source"] = "site"
    with pytest.raises(RoutingBundleError, match="expert 0: expected source 'global'"):
        encode_routing_bundle(_experts(2), bad, SPEC)
    with pytest.raises(RoutingBundleError, match="one source entry per expert"):
        encode_routing_bundle(_experts(2), _sources(3), SPEC)
    with pytest.raises(RoutingBundleError, match="at least the global model"):
        encode_routing_bundle([], [], SPEC)


def test_codec_works_without_torch() -> None:
    # The aggregator's path: numpy experts, expected shapes from the global bundle, no torch.
    expected = {k: (tuple(v.shape), str(v.dtype)) for k, v in _experts(1)[0].items()}
    script = f"""
import sys
sys.modules["torch"] = None  # any 'import torch' now fails
import numpy as np
from data_specs.task_spec import TaskSpec
from data_specs.weights.routing_bundle import decode_routing_bundle, encode_routing_bundle
spec = TaskSpec.model_validate_json({SPEC.model_dump_json()!r})
expected = {expected!r}
experts = [{{k: np.full(s, i, dtype=d) for k, (s, d) in expected.items()}} for i in range(2)]
sources = [{{"source": "global", "name": "g", "round": 1}}, {{"source": "site", "name": "a", "round": 1}}]
data = encode_routing_bundle(experts, sources, spec, expected=expected)
bundle = decode_routing_bundle(data, spec, expected=expected)
assert bundle.experts[1]["model.0.residual.weight"].max() == 1
print("ok")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
