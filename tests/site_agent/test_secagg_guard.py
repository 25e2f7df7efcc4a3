"""The privacy guard's secure-aggregation rules: JSON steps as their models, exact masked length."""

from __future__ import annotations

import httpx
import pytest

from data_specs.constants import API_PREFIX, HEADER_NUM_SAMPLES, HEADER_SHA256
from site_agent.errors import OutboundRefusedError
from site_agent.federation.privacy import OutboundGuard

BASE = f"http://agg{API_PREFIX}/tasks/t1/secagg"
KEY = "ab" * 32


def _req(method: str, path: str, **kw: object) -> httpx.Request:
    return httpx.Request(method, f"{BASE}{path}", **kw)  # type: ignore[arg-type]


def test_steps_pass_only_as_their_models() -> None:
    guard = OutboundGuard()
    guard.check(_req("POST", "/keys", json={"c_public": KEY, "s_public": "cd" * 32}))
    guard.check(_req("GET", "/inbox"))
    guard.check(_req("POST", "/unmask", json={"seed_shares": {"2": "00ff"}, "key_shares": {}}))
    with pytest.raises(OutboundRefusedError, match="KeysIn"):
        guard.check(_req("POST", "/keys", json={"c_public": KEY, "s_public": KEY, "note": "x"}))
    with pytest.raises(OutboundRefusedError, match="SharesIn"):
        guard.check(_req("POST", "/shares", json={"shares": {"2": "not hex: a file name"}}))
    with pytest.raises(OutboundRefusedError, match="body"):
        guard.check(_req("GET", "/keys", content=b"x"))


def test_masked_vector_needs_its_registered_length() -> None:
    guard = OutboundGuard()
    body = bytes(40)
    headers = {HEADER_SHA256: "0" * 64, HEADER_NUM_SAMPLES: "12"}
    with pytest.raises(OutboundRefusedError, match="registered"):
        guard.check(_req("PUT", "/masked", content=body, headers=headers))
    guard.allow_ring("t1", 40)
    guard.check(_req("PUT", "/masked", content=body, headers=headers))
    with pytest.raises(OutboundRefusedError, match="registered"):
        guard.check(_req("PUT", "/masked", content=body + b"extra", headers=headers))
    with pytest.raises(OutboundRefusedError, match="whole number"):
        guard.check(_req("PUT", "/masked", content=body, headers={HEADER_SHA256: "0" * 64}))
