"""Safeguards between accepted updates and the average: sample caps, robust norm clipping, finiteness.

On by default, so that one site cannot capture or freeze an experiment:

- sample counts are capped by what the site declared at enrolment (``max_samples``) or the
  training cases of its dataset fingerprint (unless its task is 2D on volumes: samples are
  slices then), and sites without a declaration at ``SAMPLE_CAP_MULTIPLE`` times the round's median count, so a claim of
  2^62 samples cannot take all the FedAvg weight;
- an update whose difference to the global model is not finite (it overflowed float32) is left
  out of the average, with its site named in the round's event;
- with 3 or more updates, an update whose cosine similarity with the round's coordinate-wise
  median update is below ``min_update_cosine`` (default 0: it points against the median) is
  left out, at most a minority of the round (``aggregator.rounds.guards.direction_guard``);
- updates whose L2 norm exceeds ``robust_norm_multiple`` times the round's median norm are
  scaled down to that norm (a ×100 update then weighs like an honest one);
- the new global model must be finite before it is stored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from aggregator.errors import AggregationError
from aggregator.rounds.diff_matrix import DiffMatrix
from aggregator.rounds.guards.direction_guard import (
    median_cosines,
    opposing_updates,
    row_median_cosines,
)
from aggregator.storage.db import Site
from aggregator.storage.db.fingerprints import SiteFingerprint
from aggregator.storage.db.id_lists import in_ids

SAMPLE_CAP_MULTIPLE = 10


class DiffReader(Protocol):
    """What the strategies read: a site's ``W - θ`` key by key."""

    site_id: str
    num_samples: int

    def get(self, key: str) -> np.ndarray: ...


@dataclass
class ScaledReader:
    """A reader whose differences are multiplied by ``factor`` (norm clipping)."""

    inner: DiffReader
    factor: float
    site_id: str = field(init=False)
    num_samples: int = field(init=False)

    def __post_init__(self) -> None:
        self.site_id = self.inner.site_id
        self.num_samples = self.inner.num_samples

    def get(self, key: str) -> np.ndarray:
        value = self.inner.get(key)
        if value.dtype.kind != "f" or self.factor == 1.0:
            return value
        return np.multiply(value, value.dtype.type(self.factor))


@dataclass(frozen=True)
class GuardReport:
    """What the safeguards did to one round's updates.

    Attributes:
        dropped: sites whose update was left out (non-finite difference).
        clipped: ``{site: factor}`` of updates scaled down to the norm bound.
        median_norm: the round's median update norm (of the updates kept).
        opposed: ``{site: cosine}`` of updates left out by the direction check.
    """

    dropped: tuple[str, ...]
    clipped: dict[str, float]
    median_norm: float
    opposed: dict[str, float] = field(default_factory=dict)


def cap_samples(
    session: Session, *, claimed: Mapping[str, int], site_ids: Mapping[str, str]
) -> dict[str, int]:
    """Sample counts after the caps.

    A site's cap is the smaller of what it declared at enrolment (``max_samples``) and the
    number of training cases in its latest dataset fingerprint (``PUT /sites/me/fingerprint``),
    unless that fingerprint is of a 2D task on volumes (its samples are slices, not cases);
    a site that declared neither is capped at ``SAMPLE_CAP_MULTIPLE`` times the round's median.

    Args:
        session: the open session.
        claimed: ``{key: X-Num-Samples}`` of the round's accepted updates.
        site_ids: ``{key: site id}`` (to look up each site's enrolment declaration).

    Returns:
        ``{key: capped count}``, every count at least 1.
    """
    ids = set(site_ids.values())
    declared = _pairs(
        session.execute(select(Site.id, Site.max_samples).where(in_ids(session, Site.id, ids)))
    )
    fingerprints = session.execute(
        select(SiteFingerprint.site_id, SiteFingerprint.fingerprint).where(
            in_ids(session, SiteFingerprint.site_id, ids)
        )
    )
    for site_id, fingerprint in fingerprints:
        if not isinstance(fingerprint, dict):
            continue
        cases = fingerprint.get("num_cases")
        # A 2D task on volumes trains on slices: its sample counts are not case counts.
        sliced = fingerprint.get("scan_dims") != fingerprint.get("spatial_dims")
        if isinstance(cases, int) and cases >= 1 and not sliced:
            earlier = declared.get(site_id)
            declared[site_id] = cases if earlier is None else min(earlier, cases)
    counts = sorted(max(1, int(n)) for n in claimed.values())
    median = counts[len(counts) // 2] if counts else 1
    out = {}
    for key, n in claimed.items():
        limit = declared.get(site_ids[key])
        cap = limit if limit is not None else SAMPLE_CAP_MULTIPLE * median
        out[key] = max(1, min(int(n), int(cap)))
    return out


def guard_readers(
    readers: Sequence[DiffReader],
    keys: Sequence[str],
    *,
    robust_norm_multiple: float | None,
    min_update_cosine: float | None = None,
    matrix: DiffMatrix | None = None,
) -> tuple[list[DiffReader], GuardReport]:
    """Drop non-finite and opposing updates, clip outsized ones.

    One read pass over every update for the norms, and one more for the direction check when
    it is on and at least 3 updates are finite.

    Args:
        readers: the round's updates.
        keys: the averaged keys (global keys outside ``local_keys``).
        robust_norm_multiple: clip at this multiple of the median norm; None: no clipping.
        min_update_cosine: leave out updates whose cosine with the coordinate-wise median
            update is below this (at most a minority); None: no direction check. Default None.
        matrix: the readers' differences over the float keys of ``keys``, row ``i`` for
            ``readers[i]`` (``aggregator.rounds.diff_matrix``): the norms and the direction
            check then work on its rows, with no per-key work. Default None (key by key).

    Returns:
        The readers to average and a report.

    Raises:
        AggregationError: no update is left.
    """
    if matrix is not None and len(matrix.rows) != len(readers):
        raise ValueError("the difference matrix needs one row per reader")
    norms: dict[str, float] = {}
    for i, reader in enumerate(readers):
        norms[reader.site_id] = _norm(reader, keys) if matrix is None else _row_norm(matrix, i)
    dropped = tuple(site for site, n in norms.items() if not math.isfinite(n))
    kept = [r for r in readers if r.site_id not in dropped]
    if not kept:
        raise AggregationError(
            f"every update of the round has a non-finite difference to the global model "
            f"(sites {list(dropped)[:10]})"
        )
    opposed: dict[str, float] = {}
    if min_update_cosine is not None:
        if matrix is None:
            cosines = median_cosines(kept, keys)
        else:
            rows = [i for i, r in enumerate(readers) if r.site_id not in dropped]
            block = matrix.rows if len(rows) == len(readers) else matrix.rows[rows]
            squares = [norms[readers[i].site_id] ** 2 for i in rows]
            cosines = {
                readers[i].site_id: c
                for i, c in zip(rows, row_median_cosines(block, squares), strict=True)
            }
        opposed = opposing_updates(cosines, min_cosine=min_update_cosine)
        kept = [r for r in kept if r.site_id not in opposed]
    finite = sorted(norms[r.site_id] for r in kept)
    median = float(np.median(finite))
    clipped: dict[str, float] = {}
    out: list[DiffReader] = []
    for reader in kept:
        norm = norms[reader.site_id]
        if robust_norm_multiple is not None and median > 0 and norm > robust_norm_multiple * median:
            factor = robust_norm_multiple * median / norm
            clipped[reader.site_id] = factor
            out.append(ScaledReader(reader, factor))
        else:
            out.append(reader)
    return out, GuardReport(dropped, clipped, median, opposed)


def require_finite(weights: Mapping[str, np.ndarray]) -> None:
    """Refuse a non-finite aggregate before it is stored.

    Raises:
        AggregationError: naming up to ten non-finite tensors.
    """
    bad = [k for k, v in weights.items() if v.dtype.kind == "f" and not np.isfinite(v).all()]
    if bad:
        raise AggregationError(
            f"the aggregate is not finite (overflow) in tensors {bad[:10]}; nothing was stored"
        )


def _row_norm(matrix: DiffMatrix, row: int) -> float:
    """L2 norm of one matrix row: one float32 dot, float64 when that overflows."""
    values = matrix.rows[row]
    squares = float(np.dot(values, values))
    if not math.isfinite(squares):  # float32 overflow of the sum, or a non-finite entry
        wide = values.astype(np.float64)
        squares = float(np.dot(wide, wide))
    return math.sqrt(squares) if math.isfinite(squares) else math.inf


def _norm(reader: DiffReader, keys: Sequence[str]) -> float:
    total = 0.0
    for key in keys:
        try:
            value = reader.get(key)
        except KeyError:
            continue  # the strategy reports the missing key with its own message
        if value.dtype.kind != "f":
            continue
        flat = value.reshape(-1)
        squares = float(np.dot(flat, flat))
        if not math.isfinite(squares):  # float32 overflow of the sum, or a non-finite entry
            squares = float(np.dot(flat.astype(np.float64), flat.astype(np.float64)))
        total += squares
    return math.sqrt(total) if math.isfinite(total) else math.inf


def guard_detail(reports: Sequence[GuardReport]) -> dict[str, object]:
    """Event detail of what the safeguards did (empty when they left every update alone)."""
    out: dict[str, object] = {}
    for report in reports:
        if report.dropped:
            out["dropped_non_finite"] = list(report.dropped)
        if report.opposed:
            out["dropped_opposing"] = {k: round(v, 6) for k, v in report.opposed.items()}
        if report.clipped:
            out["norm_clipped"] = {k: round(v, 6) for k, v in report.clipped.items()}
            out["median_norm"] = report.median_norm
    return out


def _pairs(result: Any) -> dict[Any, Any]:
    """``{first: second}`` of a two-column result (a ``Result`` is not a mapping)."""
    return {row[0]: row[1] for row in result}
