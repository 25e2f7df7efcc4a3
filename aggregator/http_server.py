"""How uvicorn serves the aggregator: TLS (optionally mutual), a header read timeout, keep-alive.

uvicorn 0.54 neither bounds the time a client may take to send its request headers (a slowloris
client holds a connection open for ever by sending nothing, or one byte a minute) nor exposes the
client's TLS certificate to the application. ``GuardedHttpToolsProtocol`` adds both to uvicorn's
httptools protocol, without touching anything else of it:

- a connection whose request line and headers are not complete ``header_timeout_s`` after the
  connection opened (or after the first byte of a following keep-alive request) is closed;
- each request's ASGI scope carries the ASGI TLS extension (``scope["extensions"]["tls"]``) with
  the verified client certificate, when one was presented (``client_cert_chain``,
  ``client_cert_name`` as RFC 4514, e.g. ``"CN=hospital-a"``).

Request bodies are bounded elsewhere: per-chunk read timeouts in the upload and JSON guards.
``uvicorn_config`` builds the ``uvicorn.Config`` that ``fedseg aggregator serve`` and the tests use.

``Server`` is ``uvicorn.Server`` with an ``on_shutdown`` hook run as soon as the server starts to
stop, before it waits for open requests: ``fedseg aggregator serve`` passes ``TaskBoard.close``,
so a thousand waiting long polls answer 204 at once. Before, uvicorn waited out its
graceful-shutdown timeout, then cancelled each poll, and each logged a full traceback; polls
whose client had already gone were never woken by anything but that cancellation.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from aggregator.settings import AggregatorSettings

_TLS_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header read timeout and the ASGI TLS extension."""

    header_timeout_s: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._header_timer: asyncio.TimerHandle | None = None
        self._tls: dict[str, Any] | None = tls_extension(transport)
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._tls is not None:
            self.scope["extensions"] = {"tls": dict(self._tls)}  # type: ignore[dict-item]
        self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        super().on_headers_complete()

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_late)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()


def protocol_class(header_timeout_s: float) -> type[GuardedHttpToolsProtocol]:
    """A ``GuardedHttpToolsProtocol`` subclass with this header timeout (uvicorn's ``http=``)."""
    return type(
        "GuardedHttpToolsProtocol",
        (GuardedHttpToolsProtocol,),
        {"header_timeout_s": float(header_timeout_s)},
    )


def tls_extension(transport: asyncio.BaseTransport) -> dict[str, Any] | None:
    """The ASGI TLS extension of a connection, or None on plain HTTP.

    Only a certificate the TLS layer verified against ``ssl_ca_certs`` is reported: with
    ``CERT_OPTIONAL`` an unverifiable certificate already failed the handshake.
    """
    ssl_object = transport.get_extra_info("ssl_object")
    if not isinstance(ssl_object, ssl.SSLObject):
        return None
    der = ssl_object.getpeercert(binary_form=True)
    chain: list[str] = []
    name: str | None = None
    if der and ssl_object.getpeercert():  # the dict form is empty unless the chain verified
        from cryptography import x509

        chain = [ssl.DER_cert_to_PEM_cert(der)]
        name = x509.load_der_x509_certificate(der).subject.rfc4514_string()
    return {
        "server_cert": None,
        "client_cert_chain": chain,
        "client_cert_name": name,
        "client_cert_error": None,
        "tls_version": _TLS_VERSIONS.get(ssl_object.version() or ""),
        "cipher_suite": None,
    }


def uvicorn_config(app: Any, settings: AggregatorSettings, **overrides: Any) -> uvicorn.Config:
    """The ``uvicorn.Config`` serving ``app`` as ``settings`` say (TLS, mTLS, timeouts).

    Args:
        app: the ASGI app (``create_app(settings)``).
        settings: host, port, TLS files, ``site_ca_certs`` (client certificates requested and
            verified, ``CERT_OPTIONAL``: researchers and browsers connect without one),
            ``header_timeout_s`` and ``keep_alive_s``.
        **overrides: further ``uvicorn.Config`` arguments, e.g. ``log_level="warning"``.
    """
    mutual = settings.ssl_certfile is not None and settings.site_ca_certs is not None
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "http": protocol_class(settings.header_timeout_s),
        "ssl_certfile": str(settings.ssl_certfile) if settings.ssl_certfile else None,
        "ssl_keyfile": str(settings.ssl_keyfile) if settings.ssl_keyfile else None,
        "ssl_ca_certs": str(settings.site_ca_certs) if mutual else None,
        "ssl_cert_reqs": ssl.CERT_OPTIONAL if mutual else ssl.CERT_NONE,
        "timeout_keep_alive": settings.keep_alive_s,
        "log_config": None,
        "timeout_graceful_shutdown": 5,
        "ws": "none",  # no WebSocket routes: not importing a WebSocket library saves start-up CPU
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)


class Server(uvicorn.Server):
    """``uvicorn.Server`` calling ``on_shutdown`` (on the event loop) when it starts to stop.

    Args:
        config: what to serve (``uvicorn_config``).
        on_shutdown: run once, before uvicorn closes idle connections and waits for the open
            requests. Example: ``services.board.close``.
    """

    def __init__(
        self, config: uvicorn.Config, *, on_shutdown: Callable[[], None] | None = None
    ) -> None:
        super().__init__(config)
        self.on_shutdown = on_shutdown

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.on_shutdown is not None:
            self.on_shutdown()
        await super().shutdown(sockets)
