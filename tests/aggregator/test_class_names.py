"""An experiment's class names travel in every global-model and routing bundle it serves."""

from __future__ import annotations

from typing import Any

from aggregator.api.deps import Services
from data_specs.class_names import META_CLASS_NAMES
from data_specs.weights.bundle import decode_bundle, read_header
from tests.aggregator.helpers import API, TINY_SPEC, Federation

NAMES = ["background", "liver"]  # TINY_SPEC has two output channels


def _meta(data: bytes) -> dict[str, str]:
    return dict(read_header(data, max_header_bytes=64 << 20).get("__metadata__") or {})


def test_class_names_are_checked_against_the_network(fed: Federation) -> None:
    assert TINY_SPEC.out_channels == 2
    base = {"name": "x", "spec": TINY_SPEC.model_dump(mode="json"), "rounds": 1}
    for names, message in [
        (["background", "liver", "tumour"], "each of the 2 classes"),
        (["background", ""], "class_names[1]"),
        (["background", "a\nb"], "class_names[1]"),
        ("liver", "list"),
    ]:
        r = fed.client.post(
            f"{API}/experiments", json={**base, "class_names": names}, headers=fed.rh
        )
        assert r.status_code == 422 and message in r.text, (names, r.text)


def test_global_models_of_every_round_and_the_float16_copy_carry_the_names(
    fed: Federation, services: Services
) -> None:
    exp = fed.create_experiment(
        rounds=1, class_names=[" background", "liver "], train={"codec": {"downlink_float16": True}}
    )
    assert fed.experiment(exp)["config"]["class_names"] == NAMES  # stripped
    fed.start(exp)
    services.orchestrator.step()
    assert decode_bundle(fed.round_model(exp, 0)).meta.class_names == tuple(NAMES)
    for name in fed.sites:
        task = fed.next_task(name)
        assert task is not None
        half = decode_bundle(fed.model(name, task["task_id"]))  # what a site downloads
        assert half.meta.wire_dtype == "float16" and half.meta.class_names == tuple(NAMES)
        assert fed.train_and_upload(name, task).status_code == 200
    services.orchestrator.step()
    assert fed.experiment(exp)["status"] == "completed"
    assert decode_bundle(fed.round_model(exp, 1)).meta.class_names == tuple(NAMES)


def test_without_names_the_bundle_has_no_names_key(fed: Federation, services: Services) -> None:
    exp = fed.create_experiment(rounds=1)
    assert fed.experiment(exp)["config"]["class_names"] is None
    fed.start(exp)
    services.orchestrator.step()
    assert META_CLASS_NAMES not in _meta(fed.round_model(exp, 0))


def test_the_routing_bundle_carries_the_names(
    fed: Federation, services: Services, client: Any
) -> None:
    exp = fed.create_experiment(rounds=1, class_names=NAMES)
    fed.start(exp)
    services.orchestrator.step()
    r = client.get(f"{API}/experiments/{exp}/routing-bundle", headers=fed.sh("site-a"))
    assert r.status_code == 200, r.text
    assert _meta(r.content)[META_CLASS_NAMES] == '["background","liver"]'
