"""A loopback TCP relay that counts the bytes passing each way (benchmarks only).

``secagg_round_bench`` puts one between the site agents and the aggregator, so that every byte
of a round travels through it: task downloads, update uploads, and the secure-aggregation
protocol's own requests (keys, encrypted shares, unmask answers) and polls, with their HTTP
headers. It counts TCP payload bytes (what the agents' sockets send and receive), not IP or
TCP headers.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType

_CHUNK = 1 << 16


class ByteCountingRelay:
    """Accepts on ``127.0.0.1:<port>`` and relays each connection to ``upstream``.

    Use as a context manager; ``port`` is the port to give the clients and ``counts()`` the
    bytes relayed so far (client → upstream, upstream → client).

    Args:
        upstream: ``(host, port)`` of the server.
        host: address to listen on. Default ``"127.0.0.1"``.
    """

    def __init__(self, upstream: tuple[str, int], host: str = "127.0.0.1") -> None:
        self._upstream = upstream
        self._listener = socket.create_server((host, 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._up = 0
        self._down = 0
        self._sockets: set[socket.socket] = set()
        self._closed = False

    def counts(self) -> tuple[int, int]:
        """Bytes relayed so far: (client → upstream, upstream → client)."""
        with self._lock:
            return self._up, self._down

    def __enter__(self) -> ByteCountingRelay:
        threading.Thread(target=self._accept, name="relay-accept", daemon=True).start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop accepting and close every relayed connection."""
        with self._lock:
            self._closed = True
            sockets = list(self._sockets)
            self._sockets.clear()
        with contextlib.suppress(OSError):
            self._listener.close()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                server = socket.create_connection(self._upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._closed:
                    client.close()
                    server.close()
                    return
                self._sockets.update((client, server))
            for src, dst, up in ((client, server, True), (server, client, False)):
                threading.Thread(
                    target=self._pump, args=(src, dst, up), name="relay-pump", daemon=True
                ).start()

    def _pump(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        try:
            while data := src.recv(_CHUNK):
                dst.sendall(data)
                with self._lock:
                    if up:
                        self._up += len(data)
                    else:
                        self._down += len(data)
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)  # pass the half-close on
        except OSError:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.close()
