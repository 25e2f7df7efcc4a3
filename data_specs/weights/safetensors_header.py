"""The one defensive reader of untrusted safetensors headers: size cap first, strict schema, no recursion.

A safetensors file is an 8-byte little-endian header length, a JSON header, then raw tensor bytes.
Everything in the header comes from the network, so this module checks, in this order and before
any value is used:

1. the declared header length against a hard cap (``DEFAULT_MAX_HEADER_BYTES``, 1 MiB) before a
   byte of it is read or parsed;
2. the nesting depth of the JSON text by a flat scan (no recursion, so a header nested 200,000
   levels deep is refused in milliseconds, not with a ``RecursionError``);
3. the JSON itself, with ``NaN``, ``Infinity`` and overflowing numbers (``1e400``) refused;
4. the schema: ``__metadata__`` a ``str -> str`` map; each tensor entry exactly ``dtype`` (a
   string from ``DTYPES``), ``shape`` (at most ``MAX_RANK`` ints in ``[0, MAX_DIM]``) and
   ``data_offsets`` (two ints with ``0 <= start <= end``, ``end - start`` equal to the shape's
   byte size); with the data size known, offsets inside the data and no overlaps or holes.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    pass

from data_specs.errors import BundleError

DEFAULT_MAX_HEADER_BYTES = 1 << 20  # 1 MiB: a 5-level 3D U-Net needs about 20 KiB
MAX_RANK = 8
MAX_DIM = 1 << 31
MAX_TENSORS = 100_000
MAX_JSON_DEPTH = 3  # root object -> entry object -> shape list
META_KEY = "__metadata__"

TensorLayout = Mapping[str, tuple[tuple[int, ...], str]]
"""Tensor name -> (shape, safetensors dtype code): what a bundle of a task spec must hold."""

DTYPES: dict[str, str] = {
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
}
_ITEMSIZE = {
    "F64": 8, "F32": 4, "F16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
    "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
}  # fmt: skip
"""Bytes per element of each dtype code (numpy's ``itemsize``; numpy is imported on use)."""
# A JSON string, unrolled ("normal* (escape normal*)*"): one regex step per run of plain
# characters instead of one alternation per character (a 31-tensor header: 67 -> ~10 us).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_ENTRY_KEYS = frozenset({"dtype", "shape", "data_offsets"})


@dataclass(frozen=True)
class TensorEntry:
    """One tensor's header entry, checked.

    Attributes:
        dtype: safetensors dtype code. Example: ``"F32"``.
        shape: the shape. Example: ``(8, 1, 3, 3)``.
        start: first byte in the data region.
        end: one past the last byte.
    """

    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    def as_json(self) -> dict[str, Any]:
        """The entry as safetensors writes it."""
        return {
            "dtype": self.dtype,
            "shape": list(self.shape),
            "data_offsets": [self.start, self.end],
        }


@dataclass(frozen=True)
class SafetensorsHeader:
    """A checked header: metadata and tensor entries (in header order)."""

    metadata: dict[str, str] | None
    tensors: dict[str, TensorEntry]

    def as_json(self) -> dict[str, Any]:
        """The header as a plain dict (``__metadata__`` first when present)."""
        out: dict[str, Any] = {} if self.metadata is None else {META_KEY: dict(self.metadata)}
        out.update({k: v.as_json() for k, v in self.tensors.items()})
        return out


def declared_header_length(prefix: bytes | memoryview) -> int:
    """The header length a file's first 8 bytes declare, unchecked (0 for fewer than 8 bytes).

    The one place the 8-byte prefix is decoded; ``header_length`` checks it, and a streaming
    reader may compare it with its own cap before the rest arrives.
    """
    return int.from_bytes(bytes(prefix[:8]), "little") if len(prefix) >= 8 else 0


def header_length(prefix: bytes | memoryview, *, max_bytes: int = DEFAULT_MAX_HEADER_BYTES) -> int:
    """The header length from a file's first 8 bytes, checked against ``max_bytes``.

    Raises:
        BundleError: fewer than 8 bytes, or a header longer than ``max_bytes``.
    """
    if len(prefix) < 8:
        raise BundleError(f"not safetensors: expected at least 8 bytes, got {len(prefix)}")
    length = declared_header_length(prefix)
    if length > max_bytes:
        raise BundleError(
            f"safetensors header of {length} bytes exceeds the limit of {max_bytes} bytes"
        )
    if length < 2:
        raise BundleError(f"not safetensors: header length {length}")
    return length


def loads_shallow(text: bytes | str, *, max_depth: int, what: str = "header") -> Any:
    """``json.loads`` after a flat depth scan, with NaN, Infinity and overflowing floats refused.

    Args:
        text: JSON text.
        max_depth: deepest nesting of objects/arrays allowed. Example: ``3``.
        what: what the text is, for messages.

    Raises:
        BundleError: nested deeper than ``max_depth``, not JSON, or holding a non-finite number.
    """
    import numpy as np

    raw = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKET)
    if brackets:
        steps = np.frombuffer(brackets, dtype=np.uint8)
        opening = (steps == ord("[")) | (steps == ord("{"))
        depth = int(np.cumsum(np.where(opening, 1, -1)).max())
        if depth > max_depth:
            raise BundleError(f"{what} is nested {depth} levels deep, at most {max_depth} allowed")
    try:
        return json.loads(raw, parse_constant=_refuse, parse_float=_finite_float)
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError, RecursionError) as exc:
        raise BundleError(f"{what} is not valid JSON: {str(exc)[:120]}") from exc


def parse_header(raw: bytes | memoryview, *, data_size: int | None = None) -> SafetensorsHeader:
    """Check a header's JSON text against the safetensors schema.

    Args:
        raw: the header bytes (after the 8-byte length).
        data_size: bytes of tensor data after the header; when given, offsets must tile it exactly.

    Returns:
        The checked header.

    Raises:
        BundleError: naming the first problem found.
    """
    header = loads_shallow(bytes(raw), max_depth=MAX_JSON_DEPTH, what="safetensors header")
    if not isinstance(header, dict):
        raise BundleError("not safetensors: header is not a JSON object")
    if len(header) > MAX_TENSORS + 1:
        raise BundleError(f"header lists {len(header)} entries, at most {MAX_TENSORS} allowed")
    metadata = _metadata(header.pop(META_KEY, None))
    tensors = {str(name): _entry(name, raw_entry) for name, raw_entry in header.items()}
    if data_size is not None:
        _check_tiling(tensors, data_size)
    return SafetensorsHeader(metadata, tensors)


def read_file_header(
    path: str | Path, *, max_bytes: int = DEFAULT_MAX_HEADER_BYTES
) -> SafetensorsHeader:
    """The checked header of a safetensors file on disk, reading only its header bytes.

    Args:
        path: the file.
        max_bytes: refuse longer headers. Default 1 MiB.

    Raises:
        BundleError: not safetensors, a header over the cap, or off the schema.
        OSError: the file cannot be read.
    """
    with Path(path).open("rb") as fh:
        length = header_length(fh.read(8), max_bytes=max_bytes)
        raw = fh.read(length)
    if len(raw) != length:
        raise BundleError(f"truncated safetensors header: {len(raw)} of {length} bytes")
    return parse_header(raw)


def _refuse(token: str) -> Any:
    raise ValueError(f"{token} is not allowed")


def _finite_float(token: str) -> float:
    value = float(token)
    if not math.isfinite(value):
        raise ValueError(f"number {token[:20]} is out of range")
    return value


def _metadata(value: object) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise BundleError(f"{META_KEY} must be a JSON object of strings to strings")
    return dict(value)


def _int(value: object, name: str, what: str, *, high: int) -> int:
    # type() is not isinstance(): a bool is not an int here. The message is built only on failure
    # (an f-string per dimension was most of a header's parse time).
    if type(value) is not int or not 0 <= value <= high:
        raise BundleError(
            f"tensor {name[:80]!r}: {what} must be an integer in [0, {high}], got {str(value)[:40]}"
        )
    return value


def _entry(name: str, raw: object) -> TensorEntry:
    if not isinstance(raw, dict) or set(raw) != _ENTRY_KEYS:
        raise BundleError(
            f"tensor {name[:80]!r}: header entry must be an object with exactly "
            f"{sorted(_ENTRY_KEYS)}"
        )
    code = raw["dtype"]
    if not isinstance(code, str) or code not in DTYPES:
        raise BundleError(f"tensor {name[:80]!r}: unsupported dtype {str(code)[:20]!r}")
    shape_raw, offsets = raw["shape"], raw["data_offsets"]
    if not isinstance(shape_raw, list) or len(shape_raw) > MAX_RANK:
        raise BundleError(f"tensor {name[:80]!r}: shape must be a list of at most {MAX_RANK} ints")
    shape = tuple([_int(d, name, "shape entry", high=MAX_DIM) for d in shape_raw])
    if not isinstance(offsets, list) or len(offsets) != 2:
        raise BundleError(f"tensor {name[:80]!r}: data_offsets must be a list of two ints")
    start = _int(offsets[0], name, "data offset", high=1 << 62)
    end = _int(offsets[1], name, "data offset", high=1 << 62)
    want = math.prod(shape) * _ITEMSIZE[code]
    if end < start or end - start != want:
        raise BundleError(
            f"tensor {name[:80]!r}: data_offsets [{start}, {end}) do not hold shape {shape} "
            f"of {code} ({want} bytes)"
        )
    return TensorEntry(code, shape, start, end)


def _check_tiling(tensors: dict[str, TensorEntry], data_size: int) -> None:
    position = 0
    for name, entry in sorted(tensors.items(), key=lambda kv: (kv[1].start, kv[1].end)):
        if entry.start != position:
            raise BundleError(
                f"tensor {name[:80]!r} starts at byte {entry.start}, expected {position} "
                "(overlapping or missing tensor data)"
            )
        position = entry.end
    if position != data_size:
        raise BundleError(
            f"bundle is truncated or padded: its header describes {position} bytes of tensor "
            f"data, the body carries {data_size}"
        )
