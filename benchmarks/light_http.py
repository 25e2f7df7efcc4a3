"""A lean HTTP/1.1 client for simulating many sites in one process (benchmark code, not product).

``httpx.AsyncClient`` costs about a millisecond of CPU per request, and one client shared by a
thousand sites scans its whole connection pool on every request: in the 1,000-site run the
process simulating the sites spent more CPU than the aggregator it measured. ``LightConnection``
is one site's keep-alive connection: plain ``asyncio`` streams, ``Content-Length`` bodies (and
chunked ones, for completeness), one request at a time. It speaks the same HTTP/1.1 the site
agent does; it only skips what a benchmark does not need (TLS, redirects, cookies, HTTP/2).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit


class LightHTTPError(Exception):
    """The connection broke or the server sent something this client does not read."""


@dataclass
class LightResponse:
    """Status, headers (lower-case names) and body of one response."""

    status_code: int
    headers: dict[str, str]
    content: bytes

    def json(self) -> Any:
        return json.loads(self.content)

    def raise_for_status(self) -> LightResponse:
        if self.status_code >= 400:
            raise LightHTTPError(f"HTTP {self.status_code}: {self.content[:200]!r}")
        return self


class LightConnection:
    """One keep-alive HTTP/1.1 connection to ``base`` (``http://host:port``), reopened when closed.

    Args:
        base: the server. Example: ``"http://127.0.0.1:8000"``.
        timeout_s: longest wait for one response. Default 120.
    """

    def __init__(self, base: str, *, timeout_s: float = 120.0) -> None:
        parts = urlsplit(base)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.timeout_s = timeout_s
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.reconnects = 0

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        content: bytes = b"",
    ) -> LightResponse:
        """Send one request and read its response; resent once on a connection the server closed."""
        target = f"{path}?{urlencode(params)}" if params else path
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if content or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(content)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        for attempt in range(2):
            fresh = self._writer is None
            try:
                if self._writer is None:
                    await self._connect()
                assert self._writer is not None
                self._writer.write(head + content if len(content) < 65536 else head)
                if len(content) >= 65536:
                    self._writer.write(content)
                return await asyncio.wait_for(self._read_response(method), self.timeout_s)
            except (ConnectionError, asyncio.IncompleteReadError, LightHTTPError, OSError):
                self.close()
                if fresh or attempt == 1:
                    raise
                self.reconnects += 1  # a keep-alive connection the server had closed
        raise AssertionError("unreachable")

    async def _connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)

    async def _read_response(self, method: str) -> LightResponse:
        assert self._reader is not None
        raw = await self._reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = raw.decode("latin-1").split("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            raise LightHTTPError(f"not an HTTP/1.1 response: {status_line[:80]!r}")
        status = int(parts[1])
        headers: dict[str, str] = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            body = b""
        elif "content-length" in headers:
            body = await self._reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = await self._read_chunked()
        else:
            body = await self._reader.read()  # until the server closes
            self.close()
        if headers.get("connection", "").lower() == "close":
            self.close()
        return LightResponse(status, headers, body)

    async def _read_chunked(self) -> bytes:
        assert self._reader is not None
        out = bytearray()
        while True:
            size = int((await self._reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
            if size == 0:
                await self._reader.readuntil(b"\r\n")
                return bytes(out)
            out += await self._reader.readexactly(size)
            await self._reader.readexactly(2)

    def close(self) -> None:
        """Drop the connection (the next request opens a new one)."""
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None
