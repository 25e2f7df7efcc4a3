"""The bundle format's file-level helpers: the 8-byte prefix and a header read from disk."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save

from data_specs.errors import BundleError
from data_specs.files import fsync_dir
from data_specs.weights.safetensors_header import (
    declared_header_length,
    parse_header,
    read_file_header,
)


def test_declared_length_is_the_little_endian_prefix() -> None:
    assert declared_header_length((300).to_bytes(8, "little") + b"{}") == 300
    assert declared_header_length(b"\x01\x02") == 0  # fewer than 8 bytes


def test_read_file_header_reads_metadata_and_entries(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    path.write_bytes(save({"w": np.zeros((2, 3), np.float32)}, metadata={"spec": "x"}))
    header = read_file_header(path)
    assert header.metadata == {"spec": "x"}
    assert header.tensors["w"].shape == (2, 3) and header.tensors["w"].dtype == "F32"


def test_read_file_header_refuses_an_oversized_or_truncated_header(tmp_path: Path) -> None:
    path = tmp_path / "big.safetensors"
    path.write_bytes((1 << 30).to_bytes(8, "little") + b"{}")
    with pytest.raises(BundleError, match="exceeds the limit"):
        read_file_header(path)
    path.write_bytes((100).to_bytes(8, "little") + b"{}")
    with pytest.raises(BundleError, match="truncated"):
        read_file_header(path)


def test_fsync_dir_accepts_a_folder_and_ignores_a_missing_one(tmp_path: Path) -> None:
    fsync_dir(tmp_path)
    fsync_dir(tmp_path / "missing")  # best effort: no exception
    assert tmp_path.is_dir()


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"dtype": "F32", "shape": [2, -1], "data_offsets": [0, 8]}, "shape entry"),
        ({"dtype": "F32", "shape": [2, True], "data_offsets": [0, 8]}, "shape entry"),
        ({"dtype": "F32", "shape": [2], "data_offsets": [0, "8"]}, "data offset"),
    ],
)
def test_a_refused_number_names_its_tensor(entry: dict[str, object], message: str) -> None:
    raw = json.dumps({"enc.weight": entry}).encode()
    with pytest.raises(BundleError, match=rf"tensor 'enc.weight': {message} must be an integer"):
        parse_header(raw)
