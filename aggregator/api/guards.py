"""ASGI guard in front of every route: JSON bodies bounded in size, depth and read time, no NaN.

FastAPI parses JSON with the standard library, which accepts ``NaN`` and ``Infinity`` and
recurses once per nesting level. Bodies are therefore read here first (at most
``max_json_bytes``, each chunk within ``body_timeout_s``), checked by the same flat-depth,
finite-numbers parser as safetensors headers, and handed on unchanged; a bad body answers 413
or 422 before any route runs. Uploads (``application/octet-stream``) pass through: the upload
code streams and bounds them itself (every upload route is a ``PUT``).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from data_specs.errors import BundleError
from data_specs.weights.safetensors_header import loads_shallow

MAX_JSON_DEPTH = 16


class JsonBodyGuard:
    """Refuse oversized, slow, too deeply nested or non-finite JSON bodies.

    Args:
        app: the wrapped ASGI app.
        max_json_bytes: largest JSON body. Example: ``1 << 20``.
        body_timeout_s: longest wait for one chunk of a body.
    """

    def __init__(self, app: ASGIApp, *, max_json_bytes: int, body_timeout_s: float) -> None:
        self.app = app
        self.max_json_bytes = max_json_bytes
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # JSON bodies come with POST; uploads are PUT and stream through the upload code.
        if scope["type"] != "http" or scope["method"] not in ("POST", "PATCH"):
            await self.app(scope, receive, send)
            return
        content_type = _header(scope, b"content-type")
        if b"octet-stream" in content_type:
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            try:
                message = await asyncio.wait_for(receive(), timeout=self.body_timeout_s)
            except TimeoutError:
                await _answer(
                    send, 408, f"request body not received within {self.body_timeout_s:g} s"
                )
                return
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_json_bytes:
                await _answer(
                    send, 413, f"JSON body exceeds the limit of {self.max_json_bytes} bytes"
                )
                return
            chunks.append(body)
            more = bool(message.get("more_body", False))
        data = b"".join(chunks)
        if data.strip() and (b"json" in content_type or not content_type):
            try:
                loads_shallow(data, max_depth=MAX_JSON_DEPTH, what="request body")
            except BundleError as exc:
                await _answer(send, 422, f"{exc} (NaN and Infinity are not JSON)")
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": data, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _header(scope: Scope, name: bytes) -> bytes:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).lower()
    return b""


async def _answer(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers: list[Any] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if status == 408:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
