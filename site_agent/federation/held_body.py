"""A request body whose last bytes wait for a condition: an upload that overlaps a durable write.

The trained phase makes the update durable (fsync of the file and ``state.json``) before the
aggregator may hold it, so that a site restarted after any crash uploads the very same bytes
(docs/architecture.md, site work dir). ``HeldTail`` lets that write run while the upload is
already on its way: everything but the last ``tail`` bytes is sent at once, the rest only after
``ready()`` returned. An exception from ``ready()`` aborts the request mid-body, and a server
never records a body it has not received whole.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx

TAIL_BYTES = 1 << 16
"""How many bytes wait for ``ready()``: any non-zero amount keeps the body incomplete."""


class HeldTail(httpx.SyncByteStream):
    """The bytes of ``body``, the last ``tail`` of them only once ``ready()`` returned.

    Args:
        body: the whole request body. Example: an update bundle's bytes.
        ready: blocks until the body may be completed; raises to abort the request.
        tail: bytes held back. Default ``TAIL_BYTES`` (at least 1, at most the body).

    Iterating again (a retried request) sends the body again from its start; ``ready()`` is
    called each time.
    """

    def __init__(self, body: bytes, ready: Callable[[], None], *, tail: int = TAIL_BYTES) -> None:
        self.body = body
        self.ready = ready
        self.split = len(body) - min(max(tail, 1), len(body))

    def __iter__(self) -> Iterator[bytes]:
        view = memoryview(self.body)
        if self.split:
            yield bytes(view[: self.split])
        self.ready()
        yield bytes(view[self.split :])
