"""Zero-copy, read-only numpy views of the tensors in a stored bundle file (memory-mapped).

``open_bundle`` (safetensors) copies every tensor it returns; validation and aggregation only
need to *read* each tensor once, so they use these views instead: one pass over the file's
pages, no extra allocation. The header is checked by ``data_specs.weights.safetensors_header`` (size cap
before parsing, strict schema, offsets tiling the data region) before a view is made.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np

from data_specs.errors import BundleError
from data_specs.weights.bundle import BundleMeta
from data_specs.weights.safetensors_header import (
    DEFAULT_MAX_HEADER_BYTES,
    DTYPES,
    MAX_TENSORS,
    TensorEntry,
    header_length,
    parse_header,
)

READ_WHOLE_BYTES = 1 << 20
"""Files up to this size are read whole; larger ones are memory-mapped."""


class _Entry(NamedTuple):
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    start: int
    end: int


# A header our encoder wrote starts with its metadata, a flat object of plain strings; the rest
# (the tensor entries) is the same for every update of a model, whatever its sample count.
_METADATA_FIRST = re.compile(
    rb'\{"__metadata__":(\{(?:"[^"\\]*":"[^"\\]*"(?:,"[^"\\]*":"[^"\\]*")*)?\}),(?=")'
)


def _layout(raw_header: bytes, data_size: int) -> tuple[BundleMeta, Mapping[str, _Entry]]:
    """The checked header's metadata and tensor entries, each parsed once per distinct text.

    A round reads each update's header twice (intake, then aggregation), and every update of a
    model lists the same tensors: the tensor entries are keyed by their exact bytes (and the data
    size they must tile), the metadata by its own, so a repeat costs a dictionary look-up. A
    header of another shape (metadata not first, escapes, whitespace) is parsed whole, once per
    distinct header. A header that fails its checks raises every time (errors are not cached).
    The returned mapping is shared: read-only.
    """
    match = _METADATA_FIRST.match(raw_header)
    if match is not None:
        entries = _tensor_entries(raw_header[match.end() :], data_size)
        if entries is not None:
            return _metadata(match.group(1)), entries
    return _whole(raw_header, data_size)


@functools.lru_cache(maxsize=4096)
def _whole(raw_header: bytes, data_size: int) -> tuple[BundleMeta, Mapping[str, _Entry]]:
    header = parse_header(raw_header, data_size=data_size)
    return BundleMeta.from_header(header.metadata), _entries_of(header.tensors)


@functools.lru_cache(maxsize=256)
def _tensor_entries(rest: bytes, data_size: int) -> Mapping[str, _Entry] | None:
    """The entries after a leading metadata object, or None when the rest holds metadata too."""
    header = parse_header(b"{" + rest, data_size=data_size)
    if header.metadata is not None:  # a second (escaped) metadata key: parse the whole header
        return None
    if len(header.tensors) > MAX_TENSORS:
        raise BundleError(
            f"header lists {len(header.tensors) + 1} entries, at most {MAX_TENSORS} allowed"
        )
    return _entries_of(header.tensors)


@functools.lru_cache(maxsize=4096)
def _metadata(text: bytes) -> BundleMeta:
    return BundleMeta.from_header(json.loads(text))


def _entries_of(tensors: Mapping[str, TensorEntry]) -> Mapping[str, _Entry]:
    return MappingProxyType(
        {
            name: _Entry(np.dtype(DTYPES[e.dtype]), e.shape, e.start, e.end)
            for name, e in tensors.items()
        }
    )


class FloatRun(NamedTuple):
    """Float tensors of one dtype that lie end to end: data bytes ``[start, end)``."""

    start: int
    end: int
    dtype: np.dtype[Any]
    names: tuple[str, ...]


_RUNS_KEPT = 64
_runs_of: dict[int, tuple[Mapping[str, _Entry], tuple[FloatRun, ...]]] = {}


def float_runs(layout: Mapping[str, _Entry]) -> tuple[FloatRun, ...]:
    """The layout's float tensors merged into runs of neighbours of one dtype, in data order.

    Computed once per layout object (``_layout`` shares one per distinct header), so a round's
    uploads pay for it once. A canonical bundle of float32 tensors is one run.
    """
    known = _runs_of.get(id(layout))
    if known is not None and known[0] is layout:
        return known[1]
    runs: list[FloatRun] = []
    for name, entry in sorted(layout.items(), key=lambda item: (item[1].start, item[0])):
        if entry.dtype.kind != "f" or entry.end == entry.start:
            continue
        last = runs[-1] if runs else None
        if last is not None and last.dtype == entry.dtype and last.end == entry.start:
            runs[-1] = last._replace(end=entry.end, names=(*last.names, name))
        else:
            runs.append(FloatRun(entry.start, entry.end, entry.dtype, (name,)))
    if len(_runs_of) >= _RUNS_KEPT:
        _runs_of.clear()
    found = tuple(runs)
    _runs_of[id(layout)] = (layout, found)  # the layout is kept: its id is not reused
    return found


class BundleViews(Mapping[str, np.ndarray]):
    """A bundle file as a read-only mapping ``{name: np.ndarray view}`` plus its ``meta``.

    Args:
        path: a safetensors file. Example: ``store.path(sha)``.
        max_header_bytes: the header size cap, checked before parsing. Default 1 MiB.
        data: the file's bytes when the caller holds them already (a small upload): views
            are made on them instead of a memory map of ``path``.

    Raises:
        BundleError: not safetensors, truncated or padded, an unsupported dtype, or an entry
            whose byte range does not match its shape.
    """

    def __init__(
        self,
        path: Path,
        *,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
        data: bytes | None = None,
    ) -> None:
        if data is None and (size := path.stat().st_size) <= READ_WHOLE_BYTES:
            data = path.read_bytes()  # one read: cheaper than a memory map for a small file
        if data is not None:  # the file's bytes, in memory: no re-read, no mapping
            size = len(data)
            length = header_length(data[:8], max_bytes=max_header_bytes)
            raw_header = data[8 : 8 + length]
        else:
            with path.open("rb") as fh:
                length = header_length(fh.read(8), max_bytes=max_header_bytes)
                raw_header = fh.read(length) if length <= size - 8 else b""
        if length > size - 8:
            raise BundleError(
                f"not safetensors or truncated: header of {length} bytes in a {size}-byte body"
            )
        self._base = 8 + length
        self._data_size = size - self._base
        self.meta, self._entries = _layout(bytes(raw_header), size - self._base)
        self._map: np.ndarray | None = None
        if size > self._base:
            # On a file: a plain ndarray over the mapping (it keeps the memmap alive); slicing
            # a memmap makes a memmap per slice, whose Python-level finalizer costs more than
            # the slice itself.
            self._map = (
                np.frombuffer(data, dtype=np.uint8)
                if data is not None
                else np.memmap(path, dtype=np.uint8, mode="r").view(np.ndarray)
            )

    @property
    def layout(self) -> Mapping[str, _Entry]:
        """The tensor entries, one shared read-only object per distinct layout text."""
        return self._entries

    def dtype_name(self, name: str) -> str:
        """numpy dtype name of a tensor, without reading it."""
        return str(self._entries[name].dtype)

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of a tensor, without reading it."""
        return self._entries[name].shape

    def __getitem__(self, name: str) -> np.ndarray:
        entry = self._entries[name]
        if self._map is None or entry.end == entry.start:
            view = np.zeros(entry.shape, entry.dtype)
        else:
            flat = self._map[self._base + entry.start : self._base + entry.end]
            view = np.ndarray(entry.shape, dtype=entry.dtype, buffer=flat)
        view.flags.writeable = False
        return view

    def span(self, start: int, end: int, dtype: np.dtype[Any]) -> np.ndarray:
        """The data bytes ``[start, end)`` (offsets as in ``layout``) as a read-only 1-D array.

        Several tensors that lie end to end are one span (``aggregator.rounds.diff_matrix``).
        """
        if not 0 <= start <= end <= self._data_size:
            raise ValueError(f"span [{start}, {end}) is outside the data of this bundle")
        if start == end or self._map is None:
            return np.zeros(0, dtype)
        view = self._map[self._base + start : self._base + end].view(dtype)
        view.flags.writeable = False
        return view

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
