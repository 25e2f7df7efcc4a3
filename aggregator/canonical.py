"""Byte-stable safetensors: the same tensors and metadata always give the same bytes (and sha256).

safetensors writes its JSON header from a hash map, so ``encode_bundle`` run twice on the same
inputs orders the metadata differently. Content addressing and the "bit-identical after restart"
promise need one byte sequence per content: this module rewrites the header canonically
(metadata keys sorted, tensors in data order) and leaves the tensor bytes untouched.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np

from data_specs.bundle import BundleMeta, encode_bundle, read_header

_ALIGN = 8  # safetensors pads the header so tensor data starts 8-byte aligned


def canonical_safetensors(data: bytes) -> bytes:
    """The same safetensors file with a canonical header.

    Args:
        data: safetensors bytes.

    Returns:
        Bytes that depend only on the tensors and the metadata values.
    """
    header = read_header(data)
    length = int.from_bytes(data[:8], "little")
    ordered: dict[str, object] = {}
    meta = header.pop("__metadata__", None)
    if meta is not None:
        ordered["__metadata__"] = dict(sorted(meta.items()))
    for key in sorted(
        header, key=lambda k: (header[k]["data_offsets"][0], header[k]["data_offsets"][1], k)
    ):
        entry = header[key]
        ordered[key] = {
            "dtype": entry["dtype"],
            "shape": entry["shape"],
            "data_offsets": entry["data_offsets"],
        }
    text = json.dumps(ordered, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % _ALIGN)
    return len(text).to_bytes(8, "little") + text + data[8 + length :]


def encode_canonical(tensors: Mapping[str, np.ndarray], meta: BundleMeta) -> bytes:
    """``encode_bundle`` with a canonical header (0-d results of numpy arithmetic are accepted)."""
    return canonical_safetensors(
        encode_bundle({k: np.asarray(v) for k, v in tensors.items()}, meta)
    )
