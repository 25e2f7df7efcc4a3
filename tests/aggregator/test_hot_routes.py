"""A site's poll, model download and upload skip FastAPI's router, with the same answers.

``aggregator.api.hot_routes.AggregatorAPI`` calls the route functions directly. Each request here is
sent twice: once through it, once through FastAPI (forced by a dependency override, which
``AggregatorAPI`` leaves to FastAPI), and the two answers must be the same, errors included.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import fastapi.routing
import httpx
import pytest
from fastapi.testclient import TestClient

from aggregator.api.hot_routes import match
from aggregator.api.principal_cache import CachedPrincipal
from data_specs.constants import HEADER_SHA256
from tests.aggregator.helpers import API, Federation, update_bundle


@contextmanager
def counting_solves(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """How often FastAPI solved a route's dependencies while the block ran."""
    calls: list[int] = []
    real = fastapi.routing.solve_dependencies

    async def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return await real(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(fastapi.routing, "solve_dependencies", counted)
        yield calls


def both(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, send: Callable[[], httpx.Response]
) -> tuple[httpx.Response, httpx.Response]:
    """The answer through ``AggregatorAPI``'s own dispatch, then through FastAPI's router."""
    with counting_solves(monkeypatch) as hot:
        fast = send()
    with monkeypatch.context() as patch, counting_solves(monkeypatch) as routed:
        patch.setattr(client.app, "dependency_overrides", {CachedPrincipal: CachedPrincipal})
        slow = send()
    assert hot == [] and routed, (hot, routed)  # each answer came the way it should
    return fast, slow


def same(fast: httpx.Response, slow: httpx.Response) -> httpx.Response:
    assert fast.status_code == slow.status_code, (fast.text, slow.text)
    assert fast.content == slow.content
    drop = {"date"}
    assert {k: v for k, v in fast.headers.items() if k not in drop} == {
        k: v for k, v in slow.headers.items() if k not in drop
    }
    return fast


def test_hot_routes_answer_as_fastapi_does(
    client: TestClient, fed: Federation, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = fed.sh("site-a")
    exp = fed.create_experiment(rounds=1, min_sites=3)
    fed.start(exp)
    poll = f"{API}/tasks/next"

    # No task yet, and every way of asking wrongly.
    assert (
        same(*both(client, monkeypatch, lambda: client.get(poll, headers=site))).status_code == 204
    )
    token = site["Authorization"].removeprefix("Bearer ")
    wrong: tuple[dict[str, str], ...] = (
        {},
        {"Authorization": "Bearer nope"},
        {"Authorization": "Basic x"},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer "},
        {"Authorization": f"Basic {token}"},
        {"Authorization": f"Bearer{token}"},
        {"Authorization": ""},
    )
    for headers in wrong:
        r = same(*both(client, monkeypatch, lambda h=headers: client.get(poll, headers=h)))  # type: ignore[misc]
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"

    # The scheme in any case, and spaces around the token, as FastAPI's HTTPBearer reads them.
    for spelled in (f"bearer {token}", f"BEARER  {token} "):
        headers = {"Authorization": spelled}
        r = same(*both(client, monkeypatch, lambda h=headers: client.get(poll, headers=h)))  # type: ignore[misc]
        assert r.status_code == 204

    client.app.state.services.orchestrator.step()  # type: ignore[attr-defined]
    r = same(*both(client, monkeypatch, lambda: client.get(poll + "?wait=0", headers=site)))
    task = r.json()
    assert r.status_code == 200 and task["round"] == 1
    model_url = f"{API}/tasks/{task['task_id']}/model"
    r = same(*both(client, monkeypatch, lambda: client.get(model_url, headers=site)))
    assert r.status_code == 200 and r.headers[HEADER_SHA256]
    missing = same(
        *both(client, monkeypatch, lambda: client.get(f"{API}/tasks/nope/model", headers=site))
    )
    assert missing.status_code == 404
    # Another site's task is not found either.
    other = same(
        *both(client, monkeypatch, lambda: client.get(model_url, headers=fed.sh("site-b")))
    )
    assert other.status_code == 404

    body = update_bundle(
        r.content, site="site-a", round_number=1, num_samples=10, spec_hash=task["spec_hash"]
    )
    bad_sha = same(
        *both(
            client,
            monkeypatch,
            lambda: fed.upload("site-a", task["task_id"], body, 10, headers={HEADER_SHA256: "0"}),
        )
    )
    assert bad_sha.status_code == 400 and "sha256" in bad_sha.json()["detail"]
    assert (
        same(*both(client, monkeypatch, lambda: fed.upload("site-a", "nope", body, 10))).status_code
        == 404
    )
    with counting_solves(monkeypatch) as solved:
        first = fed.upload("site-a", task["task_id"], body, 10)
    assert first.status_code == 200 and first.json()["accepted"] and solved == []
    again = same(
        *both(client, monkeypatch, lambda: fed.upload("site-a", task["task_id"], body, 10))
    )
    assert again.json()["duplicate"] is True


@pytest.mark.parametrize(
    ("method", "path", "query", "hot"),
    [
        ("GET", f"{API}/tasks/next", b"", True),
        ("GET", f"{API}/tasks/next", b"wait=30", True),
        ("GET", f"{API}/tasks/next", b"wait=2.5", True),
        ("GET", f"{API}/tasks/next", b"wait=3600", True),
        ("GET", f"{API}/tasks/next", b"wait=3601", False),  # FastAPI's 422
        ("GET", f"{API}/tasks/next", b"wait=-1", False),
        ("GET", f"{API}/tasks/next", b"wait=abc", False),
        ("GET", f"{API}/tasks/next", b"wait=1&x=2", False),
        ("POST", f"{API}/tasks/next", b"", False),
        ("GET", f"{API}/tasks/t1/model", b"", True),
        ("GET", f"{API}/tasks/t1/model", b"x=1", False),
        ("PUT", f"{API}/tasks/t1/update", b"", True),
        ("PUT", f"{API}/tasks/t1/personal", b"", False),
        ("POST", f"{API}/tasks/t1/failure", b"", False),
        ("GET", f"{API}/tasks//model", b"", False),
        ("GET", f"{API}/tasks/a/b/model", b"", False),
        ("GET", f"{API}/experiments", b"", False),
    ],
)
def test_only_well_formed_hot_requests_skip_the_router(
    method: str, path: str, query: bytes, hot: bool
) -> None:
    scope = {"type": "http", "method": method, "path": path, "query_string": query}
    assert (match(scope) is not None) is hot
    assert match({**scope, "root_path": "/behind-a-proxy"}) is None
