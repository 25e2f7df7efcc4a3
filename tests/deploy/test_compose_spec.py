"""deploy/compose.yaml against the Compose Specification (what Compose v2 implements).

Compose v2 (``docker compose``) is not packaged for Debian 12 and cannot be installed here, so
it is not executed (the container tier runs Compose v1). Instead the file, YAML merge keys
resolved and ``${VAR:-default}`` interpolated the way Compose does (on the parsed values), is
loaded by ``compose-spec``, a strict parser of the specification (the Rust ``compose_spec``
crate): unknown keys, wrong types and unknown enum values are refused.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from tests.deploy.test_compose import DEPLOY

compose_spec = pytest.importorskip("compose_spec", reason="pip install compose-spec (test extra)")
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def interpolate(value: Any) -> Any:
    """Replace every ``${VAR:-default}`` by its default (no variable set), like Compose."""
    if isinstance(value, str):
        return VARIABLE.sub(lambda m: m.group(2) or "", value)
    if isinstance(value, list):
        return [interpolate(v) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v) for k, v in value.items()}
    return value


def load(data: dict[str, Any]) -> Any:
    return compose_spec.PyCompose.from_json(json.dumps(data))


@pytest.fixture(scope="module")
def resolved() -> dict[str, Any]:
    raw = yaml.safe_load((DEPLOY / "compose.yaml").read_text())  # resolves the `<<` merge keys
    return interpolate({k: v for k, v in raw.items() if not k.startswith("x-")})


def test_compose_file_follows_the_specification(resolved: dict[str, Any]) -> None:
    parsed = load(resolved).to_dict()
    services = parsed["services"]
    assert set(services) >= {"certs", "aggregator", "enroll", "hospital-1", "hospital-2"}
    for name, service in services.items():
        assert service.get("init") is True, name
    assert services["aggregator"]["read_only"] is True
    assert services["hospital-1"]["depends_on"]["aggregator"]["condition"] == "service_healthy"


@pytest.mark.parametrize(
    ("service", "key", "value", "complaint"),
    [
        ("aggregator", "init", "yes", "expected a boolean"),
        ("hospital-1", "stop_grace_perod", "10s", "stop_grace_perod"),
        ("enroll", "depends_on", {"aggregator": {"condition": "healthy"}}, "unknown variant"),
    ],
)
def test_the_parser_refuses_what_compose_v2_refuses(
    resolved: dict[str, Any], service: str, key: str, value: Any, complaint: str
) -> None:
    bad = json.loads(json.dumps(resolved))
    bad["services"][service][key] = value
    with pytest.raises(ValueError, match=complaint):
        load(bad)
