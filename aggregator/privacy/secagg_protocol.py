"""Secure aggregation in the service: the four steps of a round, kept in the database.

A step *closes* once every task of the round attempt has done it or is out (failed, expired,
rejected, cancelled); both are final, so a closed step stays closed. A site polls for the
step's outcome (204 until it closes). Masked vectors are added to the round's running sum on
arrival (``secagg_sums``) and never stored on their own; the unmask answers are collected
while the round is ``aggregating``, and ``aggregator.privacy.secagg_aggregation`` removes the masks.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from aggregator.crud import experiments as exp_crud
from aggregator.crud import tasks as task_crud
from aggregator.crud.events import record_event
from aggregator.errors import ConflictError, InvalidRequestError, require_row
from aggregator.storage.blobs import BlobStore
from aggregator.storage.db import Round, RoundStatus, SecAggEntry, SecAggSum, Task, TaskStatus
from aggregator.storage.db.models import utcnow
from data_specs.errors import PrivacyError
from data_specs.event_kinds import EventKind
from data_specs.privacy.dp import site_noise_std
from data_specs.privacy.secagg_common import neighbour_graph
from data_specs.privacy.secagg_server import SecAggServer
from data_specs.privacy.secagg_wire import (
    AdvertOut,
    AdvertsOut,
    KeysIn,
    SecAggTask,
    SharesIn,
    UnmaskIn,
    UnmaskOut,
    flat_size,
    from_index,
)
from data_specs.researcher.experiments import ExperimentCreate
from data_specs.wire import SiteMetrics, UpdateReceipt

OUT = (TaskStatus.FAILED, TaskStatus.EXPIRED, TaskStatus.REJECTED, TaskStatus.CANCELLED)
_SUM_LOCK = threading.Lock()  # one read-modify-write of a running sum at a time


def task_setup(cfg: ExperimentCreate, rnd: Round, task: Task) -> SecAggTask | None:
    """The protocol parameters of one task, or None when the experiment has no secure aggregation."""
    sa = cfg.privacy.secure_aggregation if cfg.privacy else None
    if sa is None:
        return None
    m = len(rnd.sampled)
    dp = cfg.privacy.dp if cfg.privacy else None
    noise = 0.0
    if dp is not None and dp.mode == "distributed":
        noise = site_noise_std(dp.noise_multiplier, dp.clip_norm, m)
    return SecAggTask(
        index=rnd.sampled.index(task.site_id) + 1,
        sites=m,
        threshold=min(sa.threshold or m // 2 + 1, m),
        neighbours=sa.neighbours,
        ring_bits=sa.ring_bits,
        value_bound=sa.value_bound,
        max_total_samples=sa.max_total_samples,
        context=f"{rnd.experiment_id}/{rnd.number}/{rnd.attempt}",
        weighted=dp is None,
        noise_std=noise,
    )


@dataclass(frozen=True)
class _Context:
    task: Task
    rnd: Round
    cfg: ExperimentCreate
    setup: SecAggTask
    entries: dict[int, SecAggEntry]  # by site index
    statuses: dict[str, str]  # task id -> status


def _context(session: Session, *, task_id: str, site_id: str) -> _Context:
    task = task_crud.get_site_task(session, task_id=task_id, site_id=site_id)
    rnd = session.get(Round, task.round_id)
    rnd = require_row(rnd, "round")
    experiment = exp_crud.get_experiment(session, experiment_id=task.experiment_id)
    cfg = exp_crud.config_of(experiment)
    setup = task_setup(cfg, rnd, task)
    if setup is None:
        raise ConflictError(f"experiment {experiment.id} does not use secure aggregation")
    rows = session.scalars(select(SecAggEntry).where(SecAggEntry.round_id == rnd.id))
    entries = {e.site_index: e for e in rows}
    statuses = dict(
        session.execute(select(Task.id, Task.status).where(Task.round_id == rnd.id)).all()
    )  # type: ignore[arg-type]
    return _Context(task, rnd, cfg, setup, entries, statuses)


def _mine(ctx: _Context) -> SecAggEntry:
    entry = ctx.entries.get(ctx.setup.index)
    if entry is None:
        raise ConflictError(f"task {ctx.task.id} has not advertised its keys")
    return entry


def _keys_closed(ctx: _Context) -> bool:
    advertised = {e.task_id for e in ctx.entries.values()}
    return all(t in advertised or s in OUT for t, s in ctx.statuses.items())


def _shares_closed(ctx: _Context) -> bool:
    return _keys_closed(ctx) and all(
        e.shares is not None or ctx.statuses[e.task_id] in OUT for e in ctx.entries.values()
    )


def _graph(ctx: _Context) -> dict[int, frozenset[int]]:
    return neighbour_graph(ctx.entries, ctx.setup.neighbours, ctx.setup.context.encode())


def post_keys(session: Session, *, task_id: str, site_id: str, keys: KeysIn) -> None:
    """Step 1: record a site's public keys (the same keys again is harmless)."""
    ctx = _context(session, task_id=task_id, site_id=site_id)
    task_crud.ensure_open(session, task=ctx.task)
    mine = ctx.entries.get(ctx.setup.index)
    if mine is not None:
        if (mine.c_public, mine.s_public) != (keys.c_public, keys.s_public):
            raise ConflictError(f"task {task_id} already advertised other keys for this round")
        return
    if _keys_closed(ctx):
        raise ConflictError("the key step of this round is closed")
    if len(keys.c_public) != 64 or len(keys.s_public) != 64 or keys.c_public == keys.s_public:
        raise InvalidRequestError("keys must be two different 32-byte X25519 public keys (hex)")
    session.add(
        SecAggEntry(
            task_id=task_id,
            round_id=ctx.rnd.id,
            site_index=ctx.setup.index,
            c_public=keys.c_public,
            s_public=keys.s_public,
        )
    )
    session.commit()


def get_adverts(session: Session, *, task_id: str, site_id: str) -> AdvertsOut | None:
    """Step 1 outcome: every advert, or None while sites may still advertise."""
    ctx = _context(session, task_id=task_id, site_id=site_id)
    _mine(ctx)
    if not _keys_closed(ctx):
        return None
    return AdvertsOut(
        adverts=[
            AdvertOut(index=i, c_public=e.c_public, s_public=e.s_public)
            for i, e in sorted(ctx.entries.items())
        ]
    )


def post_shares(session: Session, *, task_id: str, site_id: str, shares: SharesIn) -> None:
    """Step 2: keep a site's encrypted shares for relaying (unreadable to the aggregator)."""
    ctx = _context(session, task_id=task_id, site_id=site_id)
    task_crud.ensure_open(session, task=ctx.task)
    mine = _mine(ctx)
    if not _keys_closed(ctx):
        raise ConflictError("the key step of this round is still open")
    if mine.shares is not None:
        if mine.shares != shares.shares:
            raise ConflictError(f"task {task_id} already sent other shares")
        return
    expected = {str(v) for v in _graph(ctx)[ctx.setup.index]}
    if set(shares.shares) != expected:
        raise InvalidRequestError("shares must go to exactly this site's neighbours")
    mine.shares = dict(shares.shares)
    session.commit()


def get_inbox(session: Session, *, task_id: str, site_id: str) -> SharesIn | None:
    """Step 2 outcome: the shares addressed to this site, or None while the step is open."""
    ctx = _context(session, task_id=task_id, site_id=site_id)
    _mine(ctx)
    if not _shares_closed(ctx):
        return None
    me = str(ctx.setup.index)
    inbox = {
        str(i): e.shares[me]
        for i, e in ctx.entries.items()
        if e.shares is not None and me in e.shares
    }
    return SharesIn(shares=inbox)


def put_masked(
    session: Session,
    *,
    blobs: BlobStore,
    task_id: str,
    site_id: str,
    body: bytes,
    sha256: str,
    num_samples: int,
    metrics: SiteMetrics | None,
) -> UpdateReceipt:
    """Step 3: add a masked vector to the round's running sum; the task is then accepted."""
    ctx = _context(session, task_id=task_id, site_id=site_id)
    if ctx.task.status == TaskStatus.ACCEPTED and ctx.task.update_sha256 == sha256:
        return UpdateReceipt(task_id=task_id, sha256=sha256, accepted=True, duplicate=True)
    task_crud.ensure_open(session, task=ctx.task)
    mine = _mine(ctx)
    if not _shares_closed(ctx) or mine.shares is None:
        raise ConflictError("the share step of this round is not complete for this site")
    experiment = exp_crud.get_experiment(session, experiment_id=ctx.task.experiment_id)
    size = flat_size(exp_crud.expected_of(experiment), frozenset(experiment.local_keys)) + 1
    dtype = np.dtype("<u4" if ctx.setup.ring_bits == 32 else "<u8")
    if len(body) != size * dtype.itemsize:
        raise InvalidRequestError(
            f"a masked vector of {len(body)} bytes; expected {size * dtype.itemsize}"
        )
    vector = np.frombuffer(body, dtype=dtype)
    with _SUM_LOCK:
        row = session.get(SecAggSum, ctx.rnd.id, populate_existing=True)
        old = row.sum_sha256 if row else None
        total = vector.copy() if row is None else _read_sum(blobs, row.sum_sha256, dtype) + vector
        ref = blobs.put_bytes(total.astype(dtype).tobytes())
        if row is None:
            session.add(SecAggSum(round_id=ctx.rnd.id, sum_sha256=ref.sha256, uploads=1))
        else:
            row.sum_sha256, row.uploads = ref.sha256, row.uploads + 1
        mine.masked = True
        won = task_crud.record_report(
            session,
            task_id=task_id,
            status=TaskStatus.ACCEPTED,
            now=utcnow(),
            values={
                "update_sha256": sha256,
                "update_blob_sha256": None,
                "bytes_up": len(body),
                "num_samples": num_samples,
                "metrics": metrics.model_dump(exclude_none=True) if metrics else None,
            },
        )
        if not won:
            session.rollback()
            raise ConflictError(f"task {task_id} changed while its masked vector was added")
        record_event(
            session,
            kind=EventKind.UPDATE_ACCEPTED,
            actor=f"site:{site_id}",
            experiment_id=ctx.task.experiment_id,
            detail={"task_id": task_id, "round": ctx.rnd.number, "secure_aggregation": True},
        )
        session.commit()
        if old is not None and old != ref.sha256:
            blobs.path(old).unlink(missing_ok=True)  # keep only the newest masked sum
    return UpdateReceipt(task_id=task_id, sha256=sha256, accepted=True)


def _read_sum(blobs: BlobStore, sha: str, dtype: np.dtype) -> np.ndarray:
    return np.frombuffer(blobs.require(sha).read_bytes(), dtype=dtype)


def restore_server(ctx_entries: dict[int, SecAggEntry], setup: SecAggTask) -> SecAggServer:
    """A ``SecAggServer`` with the adverts, relayed shares and uploads of the stored round."""
    from data_specs.privacy.secagg_common import KeyAdvert

    server = SecAggServer(setup.params())
    for i, e in sorted(ctx_entries.items()):
        server.receive_advert(KeyAdvert(i, bytes.fromhex(e.c_public), bytes.fromhex(e.s_public)))
    server.close_adverts()
    for i, e in sorted(ctx_entries.items()):
        if e.shares is not None:
            server.receive_shares(i, from_index(e.shares))
    return server


def get_unmask(session: Session, *, task_id: str, site_id: str) -> UnmaskOut | None:
    """Step 4 request for a site whose masked vector is in the sum, once uploads are closed."""
    ctx = _context(session, task_id=task_id, site_id=site_id)
    mine = _mine(ctx)
    if not mine.masked:
        raise ConflictError(f"task {task_id} has no masked vector in the sum")
    if ctx.rnd.status != RoundStatus.AGGREGATING:
        if ctx.rnd.status == RoundStatus.OPEN:
            return None
        raise ConflictError(f"round {ctx.rnd.number} is {ctx.rnd.status}: unmasking is over")
    server = restore_server(ctx.entries, ctx.setup)
    server.uploaded = {i for i, e in ctx.entries.items() if e.masked}
    request = server.unmask_request(ctx.setup.index)
    return UnmaskOut(survivors=sorted(request.survivors), dropped=sorted(request.dropped))


def post_unmask(session: Session, *, task_id: str, site_id: str, answer: UnmaskIn) -> None:
    """Step 4: keep a site's shares of its neighbours' seeds (survivors) or keys (dropped)."""
    ctx = _context(session, task_id=task_id, site_id=site_id)
    mine = _mine(ctx)
    if not mine.masked or ctx.rnd.status != RoundStatus.AGGREGATING:
        raise ConflictError("this round takes no unmask answer from this site now")
    try:
        from_index(answer.seed_shares), from_index(answer.key_shares)
    except PrivacyError as exc:
        raise InvalidRequestError(str(exc)) from exc
    if mine.unmask is None:
        mine.unmask = answer.model_dump()
        session.commit()
