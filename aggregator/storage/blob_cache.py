"""Recently served blobs kept in memory: every site of a round downloads the same global model.

Blobs are named by their sha256 and never change, so a copy read once serves every later
request for it. ``FileResponse`` would read the file again per request, in 64 KiB chunks, each
chunk a hop to a worker thread; one in-memory body is one send. Least recently used blobs leave
first once ``max_bytes`` is reached; a blob larger than ``max_item_bytes`` is not kept (the
caller streams it from disk).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from aggregator.storage.blobs import BlobStore

DEFAULT_MAX_BYTES = 256 << 20
DEFAULT_MAX_ITEM_BYTES = 64 << 20


class BlobCache:
    """An LRU of blob contents, bounded in bytes.

    Args:
        blobs: the store the contents come from.
        max_bytes: most bytes held in all. Default 256 MiB.
        max_item_bytes: largest blob kept. Default 64 MiB.
    """

    def __init__(
        self,
        blobs: BlobStore,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_item_bytes: int = DEFAULT_MAX_ITEM_BYTES,
    ) -> None:
        self._blobs = blobs
        self.max_bytes = max_bytes
        self.max_item_bytes = min(max_item_bytes, max_bytes)
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._held = 0
        self._lock = threading.Lock()

    @property
    def held_bytes(self) -> int:
        """Bytes held now."""
        return self._held

    def held(self, sha256: str) -> bytes | None:
        """The blob's bytes if they are in memory now (never reads the disk)."""
        with self._lock:
            body = self._items.get(sha256)
            if body is not None:
                self._items.move_to_end(sha256)
            return body

    def get(self, sha256: str, size: int) -> bytes | None:
        """The blob's bytes, or None when ``size`` is over ``max_item_bytes`` (stream it instead).

        Args:
            sha256: the blob.
            size: its size as recorded (decides whether it is kept, before any read).

        Raises:
            StorageError: the blob is missing.
        """
        if size > self.max_item_bytes:
            return None
        with self._lock:
            body = self._items.get(sha256)
            if body is not None:
                self._items.move_to_end(sha256)
                return body
        body = self._blobs.require(sha256).read_bytes()  # outside the lock: sites read in parallel
        if len(body) > self.max_item_bytes:
            return body
        with self._lock:
            if sha256 not in self._items:
                self._items[sha256] = body
                self._held += len(body)
                while self._held > self.max_bytes:
                    _, dropped = self._items.popitem(last=False)
                    self._held -= len(dropped)
        return body
