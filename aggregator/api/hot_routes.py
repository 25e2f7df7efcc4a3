"""The requests every site makes each round, dispatched without FastAPI's router.

At a thousand sites the aggregator's CPU per request was mostly the web stack, not fedseg: the
route table walked route by route through nested routers, FastAPI's dependency solving, and four
more ASGI layers per request (issue 20's profiles: about a quarter of the process). The app,
``AggregatorAPI``, recognises before all of that, by method and path alone,

- ``GET  {API}/tasks/next`` (query empty, ``wait=<seconds>``, or that and ``&model=1``),
- ``GET  {API}/tasks/{task_id}/model``,
- ``PUT  {API}/tasks/{task_id}/update``,

and calls the very route functions of ``aggregator.api.routes.tasks`` with the very
``current_site`` dependency. Nothing else changes: the routes stay registered, so the OpenAPI
document is the same, and every error is answered by the app's own exception handlers.
Anything it is not sure about (another query parameter, an odd ``wait`` value, a ``root_path``,
dependency overrides) goes through FastAPI as before, and so gets FastAPI's own answer.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from aggregator.api.deps import Services, bearer_token_of, site_of_token
from aggregator.api.routes import tasks
from data_specs.constants import API_PREFIX

_WAIT = re.compile(r"wait=(\d{1,4}(?:\.\d{1,6})?)(&model=1)?")
_MAX_WAIT_S = 3600.0  # the route's Query(le=3600)
_TASKS = f"{API_PREFIX}/tasks/"

Handler = Callable[[Request, Services, Any, bool], Awaitable[Response]]
Hot = tuple[Handler, Any, bool]
"""A recognised request: its handler and the two arguments it takes from the path and query."""


class AggregatorAPI(FastAPI):
    """FastAPI, with a site's poll, model download and upload answered before anything else.

    A hot request skips FastAPI's and Starlette's calls, their three middleware layers and the
    router: the app's own exception handlers still answer its errors, and an exception none of
    them handles reaches the server, which answers 500 as Starlette's error middleware would.
    Every site of a federation waits in such a poll between rounds, so each layer skipped is
    one coroutine (and its closures) less in memory per site, besides the CPU.
    Anything ``match`` is not sure about, a ``root_path`` or dependency overrides go through
    FastAPI as before, and so get FastAPI's own answer.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hot = match(scope) if scope["type"] == "http" else None
        if hot is None or self.root_path or self.dependency_overrides:
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self  # as Starlette sets it: ``request.app``
        handler, argument, flag = hot
        request = Request(scope, receive)
        try:
            response = await handler(request, self.state.services, argument, flag)
        except Exception as exc:
            answer = _handler_for(self.exception_handlers, exc)
            if answer is None:
                raise  # the server answers 500 (nothing was sent: handlers return responses)
            answered = answer(request, exc)
            response = await answered if inspect.isawaitable(answered) else answered
        await response(scope, receive, send)


def match(scope: Scope) -> Hot | None:
    """The handler for a hot request and its arguments, or None to leave it to FastAPI."""
    path: str = scope["path"]
    if scope.get("root_path") or not path.startswith(_TASKS):
        return None
    rest = path[len(_TASKS) :]
    method = scope["method"]
    if rest == "next":
        if method != "GET":
            return None
        query = _poll_query(scope.get("query_string", b""))
        return None if query is None else (_poll, *query)
    task_id, _, action = rest.partition("/")
    if not task_id or "/" in action or scope.get("query_string"):
        return None
    if action == "model" and method == "GET":
        return _model, task_id, False
    if action == "update" and method == "PUT":
        return _upload, task_id, False
    return None


def _poll_query(query: bytes) -> tuple[float, bool] | None:
    """``wait`` and ``model`` from a poll's query string (None: let FastAPI parse it)."""
    if not query:
        return 0.0, False
    found = _WAIT.fullmatch(query.decode("latin-1"))
    if found is None:
        return None
    wait = float(found.group(1))
    return (wait, found.group(2) is not None) if wait <= _MAX_WAIT_S else None


async def _poll(request: Request, services: Services, wait: float, model: bool) -> Response:
    site = await _site(request, services)
    answer = await tasks.next_task(request, services, site, wait, model)
    assert isinstance(answer, Response)  # next_task serialises its assignment itself
    return answer


async def _model(request: Request, services: Services, task_id: str, _: bool) -> Response:
    site = await _site(request, services)
    return await tasks.task_model(task_id, services, site)


async def _upload(request: Request, services: Services, task_id: str, _: bool) -> Response:
    site = await _site(request, services)
    return await tasks.upload_update(task_id, request, services, site)


async def _site(request: Request, services: Services) -> Any:
    return await site_of_token(request, services, bearer_token_of(request))


def _handler_for(
    handlers: dict[Any, Callable[..., Any]], exc: Exception
) -> Callable[..., Any] | None:
    """The app's exception handler for ``exc`` (most specific class first, as Starlette)."""
    for cls in type(exc).__mro__:
        if cls in handlers:
            return handlers[cls]
    return None
