"""A round's float32 differences ``W - θ`` as one matrix: one row per update, one pass per file.

The safeguards and the strategies read every update's difference key by key; with many small
tensors (a U-Net has 30 to 80) most of that time is Python per key, not arithmetic. When the
round fits in memory and every averaged float tensor of ``θ`` is float32, ``build`` computes each
update's differences once into one row of a K x N float32 matrix:

- the tensors of one update that lie end to end in its file, in the order of ``θ``'s columns,
  with ``θ``'s shapes and dtype, are one span: one ``np.subtract`` per span instead of one per
  tensor (a canonical bundle holds its float32 tensors end to end, so an update is one span);
- a float16 tensor (a compressed downlink's wire format) is cast tensor by tensor, as before.

Each value is the same elementwise subtraction as the per-key reader's, so the bits are the
same. A missing tensor, another shape or a non-float entry leaves the round to the per-key path,
which names the problem. The matrix is read-only: readers hand out views of it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from aggregator.storage.bundle_views import BundleViews
from data_specs.constants import BundleKind


class Column(NamedTuple):
    """Where one tensor lies in a row: ``row[start:end].reshape(shape)``."""

    start: int
    end: int
    shape: tuple[int, ...]


class _Span(NamedTuple):
    """Columns ``[start, end)`` of a row come from file bytes ``[first, last)`` of ``dtype``."""

    start: int
    end: int
    first: int
    last: int
    dtype: np.dtype[Any]


@dataclass(frozen=True)
class DiffMatrix:
    """Row ``i`` is update ``i``'s ``W - θ`` over ``columns`` (float32, read-only).

    Attributes:
        rows: K x N float32.
        columns: ``{key: Column}`` of every averaged float32 key.
    """

    rows: np.ndarray
    columns: Mapping[str, Column]

    def view(self, row: int, key: str) -> np.ndarray:
        """Update ``row``'s difference for ``key`` (a read-only view). KeyError: not a column."""
        column = self.columns[key]
        return self.rows[row, column.start : column.end].reshape(column.shape)


def build(
    views: Sequence[BundleViews], theta: Mapping[str, np.ndarray], keys: Sequence[str]
) -> DiffMatrix | None:
    """The round's difference matrix, or None where the per-key path must run.

    Args:
        views: each update's file, in the readers' order.
        theta: the global model the updates were trained from.
        keys: the averaged keys.

    Returns:
        None when there is no update, a float key of ``θ`` is not float32, or an update lacks a
        key or differs in shape or kind.
    """
    float_keys = [k for k in keys if k in theta and theta[k].dtype.kind == "f"]
    if not views or not float_keys or any(theta[k].dtype != np.float32 for k in float_keys):
        return None
    first = views[0].layout
    if any(k not in first for k in float_keys):
        return None
    order = sorted(float_keys, key=lambda k: (first[k].start, k))
    columns: dict[str, Column] = {}
    width = 0
    for key in order:
        size = theta[key].size
        columns[key] = Column(width, width + size, theta[key].shape)
        width += size
    theta_row = np.empty(width, dtype=np.float32)
    for key, column in columns.items():
        theta_row[column.start : column.end] = theta[key].reshape(-1)
    rows = np.empty((len(views), width), dtype=np.float32)
    spans_of: dict[int, list[_Span] | None] = {}  # by layout object: shared per distinct layout
    for i, view in enumerate(views):
        layout = view.layout
        if id(layout) not in spans_of:
            spans_of[id(layout)] = _spans(layout, columns, theta)
        spans = spans_of[id(layout)]
        if spans is None:
            return None
        full = view.meta.kind == BundleKind.FULL
        row = rows[i]
        for span in spans:
            source = view.span(span.first, span.last, span.dtype)
            if source.dtype != np.float32:  # cast first, as the per-key reader does
                source = source.astype(np.float32)
            if full:
                np.subtract(
                    source, theta_row[span.start : span.end], out=row[span.start : span.end]
                )
            else:
                row[span.start : span.end] = source
    rows.flags.writeable = False
    return DiffMatrix(rows, columns)


def _spans(
    layout: Mapping[str, Any], columns: Mapping[str, Column], theta: Mapping[str, np.ndarray]
) -> list[_Span] | None:
    """The spans of one file layout, merging neighbours; None if a key is missing or differs."""
    spans: list[_Span] = []
    for key, column in columns.items():
        entry = layout.get(key)
        if entry is None or entry.shape != theta[key].shape or entry.dtype.kind != "f":
            return None
        last = spans[-1] if spans else None
        if (
            last is not None
            and entry.dtype == last.dtype == np.float32
            and entry.start == last.last
            and column.start == last.end
        ):
            spans[-1] = last._replace(end=column.end, last=entry.end)
        else:
            spans.append(_Span(column.start, column.end, entry.start, entry.end, entry.dtype))
    return spans
