"""Checks on uploaded bundles before anything is stored or averaged.

Two outcomes besides acceptance:

- a *refusal* (``InvalidRequestError``, a 4xx with nothing changed): the bundle is not what the
  contract says: not safetensors, truncated, another spec or round, keys/shapes/dtypes off, NaN
  or Inf, sample count missing or disagreeing with ``X-Num-Samples``, a compressed payload that
  does not decode under its codec. The site may fix it and retry;
- a *reject* (``CheckedUpdate.accepted`` False, recorded with its reason): a well-formed update
  the experiment's policy does not take: L2 norm of ``W - θ`` over ``update_norm_bound``, or a
  codec the experiment does not allow. The task counts as reported.

Tensors are read through zero-copy memory-mapped views, one pass over the file, so memory
stays flat whatever the model size.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aggregator.errors import InvalidRequestError
from aggregator.storage.bundle_views import BundleViews, float_runs
from aggregator.storage.global_models import load_weights
from data_specs.constants import BundleKind
from data_specs.errors import BundleError, CodecError, SpecMismatchError
from data_specs.weights.bundle import BundleMeta, check_finite, check_tensors
from data_specs.weights.safetensors_header import TensorLayout

Expected = TensorLayout


@dataclass(frozen=True)
class UpdatePolicy:
    """What an update of one task must be.

    Args:
        spec_hash: the experiment's spec hash.
        round_number: the task's round; the bundle's ``round`` must equal it.
        expected: ``{key: (shape, dtype)}``.
        local_keys: keys left out of the norm (never averaged).
        norm_bound: largest L2 norm of ``W - θ``; None: no bound (and no norm computed).
        codec: the update codec the experiment allows besides ``none``.
        task_seed: the task's training seed; compressed updates must be encoded with it.
    """

    spec_hash: str
    round_number: int
    expected: Expected
    local_keys: frozenset[str]
    norm_bound: float | None
    codec: str = "none"
    task_seed: int | None = None


@dataclass(frozen=True)
class CheckedUpdate:
    """Outcome of ``check_update`` for a well-formed bundle.

    Attributes:
        meta: the bundle's metadata.
        norm: L2 norm of ``W - θ`` outside local keys (None when no bound asks for it).
        accepted: False for a policy reject.
        reason: why it was rejected.
        code: short label of the reject reason (``norm_bound``, ``codec``), for metrics.
        decoded: for a compressed update, the plain tensors to store instead of the upload.
    """

    meta: BundleMeta
    norm: float | None
    accepted: bool
    reason: str | None = None
    code: str | None = None
    decoded: dict[str, np.ndarray] | None = None


def check_update(
    path: Path,
    *,
    num_samples: int,
    policy: UpdatePolicy,
    global_path: Path,
    data: bytes | None = None,
) -> CheckedUpdate:
    """Check an uploaded update against its task.

    Args:
        path: the staged upload.
        num_samples: the ``X-Num-Samples`` header.
        policy: what the task needs.
        global_path: the float32 global model the site started from (θ).
        data: the upload's bytes when they are in memory already (the same as ``path``'s).

    Raises:
        InvalidRequestError: the bundle breaks the contract (see the module docstring).
    """
    try:
        views = BundleViews(path, data=data)
        meta = views.meta
        _check_meta(meta, num_samples=num_samples, policy=policy)
        if meta.codec != "none":
            return _check_coded(views, policy=policy, global_path=global_path)
        _check_layout(views, policy.expected)
        theta = global_views(global_path) if policy.norm_bound is not None else None
        norm = _scan(views, theta, policy.local_keys)
    except BundleError as exc:
        raise _refusal(exc) from exc
    return _judge_norm(meta, norm, policy)


_GLOBAL_VIEWS_KEPT = 4
_global_views: OrderedDict[tuple[str, int, int], BundleViews] = OrderedDict()
_global_views_lock = threading.Lock()


def global_views(path: Path) -> BundleViews:
    """Memory-mapped views of a stored global model, parsed once for all of a round's uploads.

    Blobs are content-addressed and never rewritten in place, so the parsed header stays
    right for the file; the key also holds the file's inode and size, so a blob removed and
    stored again is mapped afresh. The last few models are kept (a round's uploads share one).
    """
    stat = path.stat()
    key = (str(path), stat.st_ino, stat.st_size)
    with _global_views_lock:
        views = _global_views.get(key)
        if views is not None:
            _global_views.move_to_end(key)
            return views
    views = BundleViews(path)
    with _global_views_lock:
        _global_views[key] = views
        while len(_global_views) > _GLOBAL_VIEWS_KEPT:
            _global_views.popitem(last=False)
    return views


def check_model(path: Path, *, spec_hash: str, expected: Expected) -> BundleMeta:
    """Check a full model bundle (initial model, personal model): spec, layout, finite values.

    Raises:
        InvalidRequestError: not a plain full bundle of this spec.
    """
    try:
        views = BundleViews(path)
        meta = views.meta
        if meta.spec_hash != spec_hash:
            raise SpecMismatchError(
                f"bundle is for task spec {meta.spec_hash}, expected {spec_hash}"
            )
        if meta.kind != BundleKind.FULL or meta.codec != "none":
            raise InvalidRequestError(
                f"expected a full uncompressed model, got kind={meta.kind}, codec={meta.codec}",
                code="kind",
            )
        _check_layout(views, expected)
        _scan(views, None, frozenset())
    except BundleError as exc:
        raise _refusal(exc) from exc
    return meta


def _check_meta(meta: BundleMeta, *, num_samples: int, policy: UpdatePolicy) -> None:
    if meta.spec_hash != policy.spec_hash:
        raise SpecMismatchError(
            f"bundle is for task spec {meta.spec_hash}, expected {policy.spec_hash}"
        )
    if meta.round != policy.round_number:
        raise InvalidRequestError(
            f"bundle says round {meta.round}, this task is round {policy.round_number}",
            code="round_mismatch",
        )
    if meta.num_samples <= 0:
        raise InvalidRequestError(
            f"bundle num_samples must be > 0, got {meta.num_samples}", code="num_samples"
        )
    if meta.num_samples != num_samples:
        raise InvalidRequestError(
            f"X-Num-Samples is {num_samples} but the bundle says {meta.num_samples}",
            code="num_samples",
        )
    if meta.wire_dtype not in ("float32", "float16"):
        raise InvalidRequestError(
            f"wire_dtype must be float32 or float16, got {meta.wire_dtype!r}", code="spec_mismatch"
        )


@dataclass(frozen=True)
class _Layout:
    """Shape and dtype of a tensor, read from the header without loading it."""

    shape: tuple[int, ...]
    dtype: str


_LAYOUTS_PASSED: dict[tuple[int, int, bool], tuple[object, Expected]] = {}


def _check_layout(views: BundleViews, expected: Expected) -> None:
    """Keys, shapes and dtypes (float16 stands for float32 when the bundle says so).

    Every update of a round shares one parsed layout object (``BundleViews.layout``) and the
    experiment one ``expected``: a pair that passed once passes again, without the per-tensor
    walk. Only passes are remembered (the objects are held, so their ids stay theirs).
    """
    half = views.meta.wire_dtype == "float16"
    seen = (id(views.layout), id(expected), half)
    known = _LAYOUTS_PASSED.get(seen)
    if known is not None and known[0] is views.layout and known[1] is expected:
        return
    layout: dict[str, _Layout] = {}
    for key in views:
        dtype = views.dtype_name(key)
        if half and dtype == "float16" and expected.get(key, ((), ""))[1] == "float32":
            dtype = "float32"
        layout[key] = _Layout(views.shape(key), dtype)
    check_tensors(layout, expected)  # type: ignore[arg-type]  # reads only .shape and .dtype
    if len(_LAYOUTS_PASSED) >= 64:
        _LAYOUTS_PASSED.clear()
    _LAYOUTS_PASSED[seen] = (views.layout, expected)


def _scan(
    views: BundleViews, theta: BundleViews | None, local_keys: frozenset[str]
) -> float | None:
    """Refuse NaN/Inf; with ``theta``, also return the L2 norm of the update outside local keys."""
    if theta is None:  # one dot per run of float tensors that lie end to end
        for run in float_runs(views.layout):
            values = views.span(run.start, run.end, run.dtype)
            if not math.isfinite(float(np.dot(values, values))):
                check_finite({key: views[key] for key in run.names})  # names the tensor
        return None
    diff_kind = views.meta.kind == BundleKind.DIFF
    total = 0.0
    for key in views:
        value = views[key]
        if value.dtype.kind != "f":
            continue
        flat = value.reshape(-1)
        squares = float(np.dot(flat, flat))  # finite sum of squares <=> every entry finite...
        if not math.isfinite(squares):
            check_finite({key: value})  # ...unless it merely overflowed: ask exactly
        if theta is None or key in local_keys:
            continue
        if diff_kind:
            total += squares
        else:
            delta = flat.astype(np.float32) - theta[key].reshape(-1)
            total += float(np.dot(delta, delta))
    return None if theta is None else math.sqrt(total)


def _check_coded(views: BundleViews, *, policy: UpdatePolicy, global_path: Path) -> CheckedUpdate:
    meta = views.meta
    if meta.codec != policy.codec:
        return CheckedUpdate(
            meta,
            None,
            False,
            f"codec {meta.codec!r} is not allowed by this experiment (allows {policy.codec!r})",
            code="codec",
        )
    from data_specs.update_codecs import decode_update

    raw = {k: np.array(v) for k, v in views.items()}
    # CodecError (a BundleError) becomes a 400: the payload does not decode under its own codec.
    dense = decode_update(raw, meta, policy.expected, allowed={policy.codec}, seed=policy.task_seed)
    decoded = {k: np.asarray(v) for k, v in dense.items()}
    check_tensors(decoded, policy.expected)
    check_finite(decoded)
    norm = None
    if policy.norm_bound is not None:
        theta = load_weights(global_path) if meta.kind == BundleKind.FULL else {}
        total = 0.0
        for key, value in decoded.items():
            if key in policy.local_keys or value.dtype.kind != "f":
                continue
            delta = (value - theta[key] if meta.kind == BundleKind.FULL else value).reshape(-1)
            total += float(np.dot(delta, delta))
        norm = math.sqrt(total)
    checked = _judge_norm(meta, norm, policy)
    return CheckedUpdate(meta, norm, checked.accepted, checked.reason, checked.code, decoded)


def _judge_norm(meta: BundleMeta, norm: float | None, policy: UpdatePolicy) -> CheckedUpdate:
    bound = policy.norm_bound
    if bound is not None and norm is not None and not norm <= bound:
        return CheckedUpdate(
            meta,
            norm,
            False,
            f"update L2 norm {norm:.6g} exceeds update_norm_bound {bound:g}",
            code="norm_bound",
        )
    return CheckedUpdate(meta, norm, True)


def _refusal(exc: BundleError) -> InvalidRequestError:
    text = str(exc)
    if isinstance(exc, SpecMismatchError):
        code = "spec_mismatch"
    elif isinstance(exc, CodecError):
        code = "codec"
    elif "non-finite" in text:
        code = "non_finite"
    else:
        code = "malformed"
    return InvalidRequestError(f"update refused: {text}", code=code)
