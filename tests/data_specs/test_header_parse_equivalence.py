"""The faster header parse (issue 20) answers exactly as the plain reference does.

``loads_shallow``'s string stripping (one regex step per run of plain characters) and
``_entry``'s lazily built messages, against the versions they replaced: same result, same
error text.
"""

from __future__ import annotations

import random
import re

import numpy as np
import pytest

from data_specs.errors import BundleError
from data_specs.weights import safetensors_header as sh

_PLAIN_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)  # the old per-character form


def reference_depth(text: bytes) -> int:
    """The exact nesting depth count loads_shallow used on every text before."""
    brackets = _PLAIN_STRING.sub(b"", text).translate(None, sh._NOT_BRACKET)
    if not brackets:
        return 0
    steps = np.frombuffer(brackets, dtype=np.uint8)
    opening = (steps == ord("[")) | (steps == ord("{"))
    return int(np.cumsum(np.where(opening, 1, -1)).max())


def outcome(text: bytes, max_depth: int) -> str:
    try:
        return repr(sh.loads_shallow(text, max_depth=max_depth))
    except BundleError as exc:
        return f"error: {exc}"


def test_depth_is_counted_outside_strings_as_before() -> None:
    rng = random.Random(20)
    alphabet = [b"[", b"]", b"{", b"}", b'"a[{"', b'"\\"]"', b"1", b","]
    for _ in range(4000):
        text = b"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 14)))
        for max_depth in (1, 2, 3):
            if reference_depth(text) > max_depth:
                assert outcome(text, max_depth).startswith("error: header is nested"), text
            else:
                assert "levels deep" not in outcome(text, max_depth), text


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        (b'{"a": [1, [2]]}', 3),
        (b'{"a": [1, [2, [3]]]}', 4),
        (b"{[{[{[]}]}]}", 6),
        (b'{"x": "[[[[[[", "y": "\\"[[[["}', 1),
        (b"[[[]]", 3),  # unbalanced: the exact count, then json says not JSON
    ],
)
def test_depth_and_strings_as_before(text: bytes, depth: int) -> None:
    assert reference_depth(text) == depth
    assert sh._STRING.sub(b"", text) == _PLAIN_STRING.sub(b"", text)
    below = outcome(text, depth - 1) if depth > 1 else None
    if below is not None:
        assert below == f"error: header is nested {depth} levels deep, at most {depth - 1} allowed"
    assert "levels deep" not in outcome(text, depth)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"dtype": "F32", "shape": [2, True], "data_offsets": [0, 8]}, "shape entry"),
        ({"dtype": "F32", "shape": [2, -1], "data_offsets": [0, 8]}, "shape entry"),
        ({"dtype": "F32", "shape": [2, 2.0], "data_offsets": [0, 8]}, "shape entry"),
        ({"dtype": "F32", "shape": [2], "data_offsets": [0, "8"]}, "data offset"),
        ({"dtype": "F32", "shape": [2], "data_offsets": [False, 8]}, "data offset"),
    ],
)
def test_entry_errors_name_the_tensor_and_the_field(entry: dict[str, object], message: str) -> None:
    with pytest.raises(BundleError, match=rf"^tensor 'w': {message} must be an integer in \[0, "):
        sh._entry("w", entry)
    assert sh._entry("w", {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}).shape == (2,)
