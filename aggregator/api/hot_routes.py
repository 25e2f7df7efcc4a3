"""The requests every site makes each round, dispatched without FastAPI's router.

At a thousand sites the aggregator's CPU per request was mostly the web stack, not fedseg: the
route table walked route by route through nested routers, FastAPI's dependency solving, and four
more ASGI layers per request (issue 20's profiles: about a quarter of the process). ``HotRoutes``
is an ASGI middleware that recognises, by method and path alone,

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

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aggregator.api.deps import Services, bearer_credentials, current_site
from aggregator.api.routes import tasks
from data_specs.constants import API_PREFIX

_WAIT = re.compile(r"wait=(\d{1,4}(?:\.\d{1,6})?)(&model=1)?")
_MAX_WAIT_S = 3600.0  # the route's Query(le=3600)
_TASKS = f"{API_PREFIX}/tasks/"

Handler = Callable[[Request, Services], Awaitable[Response]]


class HotRoutes:
    """Serve a site's poll, model download and upload straight from the route functions.

    Args:
        app: the rest of the app (everything else, and any request not recognised here).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = match(scope) if scope["type"] == "http" else None
        fastapi_app = scope.get("app")
        if (
            handler is None
            or fastapi_app is None
            or getattr(fastapi_app, "dependency_overrides", None)
        ):
            await self.app(scope, receive, send)
            return
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        request = Request(scope, receive)
        try:
            response = await handler(request, fastapi_app.state.services)
        except Exception as exc:
            answer = _handler_for(fastapi_app.exception_handlers, exc)
            if answer is None or started:
                raise  # as FastAPI would: ServerErrorMiddleware answers 500
            answered = answer(request, exc)
            response = await answered if inspect.isawaitable(answered) else answered
        await response(scope, receive, sending)


def match(scope: Scope) -> Handler | None:
    """The handler for a hot request, or None to leave it to FastAPI."""
    path: str = scope["path"]
    if scope.get("root_path") or not path.startswith(_TASKS):
        return None
    rest = path[len(_TASKS) :]
    method = scope["method"]
    if rest == "next":
        if method != "GET":
            return None
        query = _poll_query(scope.get("query_string", b""))
        return None if query is None else _poll(*query)
    task_id, _, action = rest.partition("/")
    if not task_id or "/" in action or scope.get("query_string"):
        return None
    if action == "model" and method == "GET":
        return _model(task_id)
    if action == "update" and method == "PUT":
        return _upload(task_id)
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


def _poll(wait: float, model: bool) -> Handler:
    async def handle(request: Request, services: Services) -> Response:
        site = await _site(request, services)
        answer = await tasks.next_task(request, services, site, wait, model)
        assert isinstance(answer, Response)  # next_task serialises its assignment itself
        return answer

    return handle


def _model(task_id: str) -> Handler:
    async def handle(request: Request, services: Services) -> Response:
        site = await _site(request, services)
        return await tasks.task_model(task_id, services, site)

    return handle


def _upload(task_id: str) -> Handler:
    async def handle(request: Request, services: Services) -> Response:
        site = await _site(request, services)
        return await tasks.upload_update(task_id, request, services, site)

    return handle


async def _site(request: Request, services: Services) -> Any:
    return await current_site(request, services, await bearer_credentials(request))


def _handler_for(
    handlers: dict[Any, Callable[..., Any]], exc: Exception
) -> Callable[..., Any] | None:
    """The app's exception handler for ``exc`` (most specific class first, as Starlette)."""
    for cls in type(exc).__mro__:
        if cls in handlers:
            return handlers[cls]
    return None
