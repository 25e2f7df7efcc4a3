"""Zero-copy, read-only numpy views of the tensors in a stored bundle file (memory-mapped).

``open_bundle`` (safetensors) copies every tensor it returns; validation and aggregation only
need to *read* each tensor once, so they use these views instead: one pass over the file's
pages, no extra allocation. The header is parsed with ``data_specs.bundle`` and every entry is
checked against the data region before a view is made.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from data_specs.bundle import BundleMeta, read_header
from data_specs.errors import BundleError

_MAX_HEADER = 100 * 1024 * 1024
_DTYPES: dict[str, np.dtype[Any]] = {
    code: np.dtype(name)
    for code, name in {
        "F64": "<f8",
        "F32": "<f4",
        "F16": "<f2",
        "I64": "<i8",
        "I32": "<i4",
        "I16": "<i2",
        "I8": "i1",
        "U64": "<u8",
        "U32": "<u4",
        "U16": "<u2",
        "U8": "u1",
        "BOOL": "?",
    }.items()
}


class _Entry(NamedTuple):
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    start: int
    end: int


class BundleViews(Mapping[str, np.ndarray]):
    """A bundle file as a read-only mapping ``{name: np.ndarray view}`` plus its ``meta``.

    Args:
        path: a safetensors file. Example: ``store.path(sha)``.

    Raises:
        BundleError: not safetensors, truncated or padded, an unsupported dtype, or an entry
            whose byte range does not match its shape.
    """

    def __init__(self, path: Path) -> None:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise BundleError(f"not safetensors or truncated: body has only {size} bytes")
            length = int.from_bytes(head, "little")
            if length > min(size - 8, _MAX_HEADER):
                raise BundleError(
                    f"not safetensors or truncated: header of {length} bytes in a {size}-byte body"
                )
            header = read_header(head + fh.read(length))
        self.meta = BundleMeta.from_header(header.pop("__metadata__", None))
        self._base = 8 + length
        data = size - self._base
        self._entries = {name: _entry(name, raw, data) for name, raw in header.items()}
        end = max((e.end for e in self._entries.values()), default=0)
        if end != data:
            raise BundleError(
                f"bundle is truncated or padded: its header describes {end} bytes of tensor data, "
                f"the body carries {data}"
            )
        self._map = np.memmap(path, dtype=np.uint8, mode="r") if size > self._base else None

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

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


def _entry(name: str, raw: object, data: int) -> _Entry:
    if not isinstance(raw, dict):
        raise BundleError(f"tensor {name!r}: header entry is not an object")
    code = raw.get("dtype")
    if code not in _DTYPES:
        raise BundleError(f"tensor {name!r}: unsupported dtype {code!r}")
    try:
        shape = tuple(map(int, raw["shape"]))
        start, end = map(int, raw["data_offsets"])
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"tensor {name!r}: malformed shape or data_offsets") from exc
    if end > data:
        raise BundleError(
            f"bundle is truncated: tensor {name!r} ends at byte {end} of the data, "
            f"the body carries {data}"
        )
    dtype = _DTYPES[code]
    want = math.prod(shape) * dtype.itemsize
    if min(shape, default=0) < 0 or not 0 <= start <= end <= data or end - start != want:
        raise BundleError(
            f"tensor {name!r}: data_offsets [{start}, {end}) do not hold shape {shape} of {code} "
            f"in {data} bytes of data"
        )
    return _Entry(dtype, shape, start, end)
