"""The codec registry and the two entry points: ``encode_update`` (site) and ``decode_update`` (server).

Which tensors are compressed is decided the same way on both sides, from the tensor's dtype
and shape only: float tensors with at least ``min_size`` entries that the codec has a layout
for travel as ``<key>#<part>`` arrays; every other tensor travels raw under its own key.
``codec_params`` (stored in ``BundleMeta.codec_params``) carries the codec name and version,
the seed, ``min_size``, the resolved parameters and a checksum that doubles as the seed
fingerprint (see ``_start_checksum``).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from data_specs.errors import CodecError
from data_specs.parameters.codecs import NoParams
from data_specs.update_codecs.codec import PART_SEPARATOR, Codec, Layout, Shape, TensorJob
from data_specs.update_codecs.lowrank import LOWRANK
from data_specs.update_codecs.quantize import QUANTIZE
from data_specs.update_codecs.randmask import RANDMASK
from data_specs.update_codecs.subsample import SUBSAMPLE
from data_specs.update_codecs.topk import TOPK
from data_specs.weights.safetensors_header import TensorLayout

if TYPE_CHECKING:  # only for annotations: importing wire would pull pydantic into every decode
    from data_specs.weights.bundle import BundleMeta
    from data_specs.wire import CodecConfig


def _never(*_: Any) -> Any:
    raise AssertionError("the 'none' codec has no compressed tensors")


NONE = Codec("none", 1, NoParams, lambda *_: None, _never, _never)

CODECS: dict[str, Codec] = {c.name: c for c in (NONE, QUANTIZE, SUBSAMPLE, TOPK, LOWRANK, RANDMASK)}
"""Every update codec by name."""

_MAX_SEED = 2**63 - 1


def payload_nbytes(payload: Mapping[str, np.ndarray]) -> int:
    """Bytes of tensor data in a payload (what the bundle carries, headers aside).

    Args:
        payload: tensors by name, e.g. the first result of :func:`encode_update`.
            Example: ``payload_nbytes({"w#q": np.zeros(512, np.uint8)}) == 512``.
    """
    return sum(int(np.asarray(v).nbytes) for v in payload.values())


def _codec(name: str) -> Codec:
    codec = CODECS.get(name)
    if codec is None:
        raise CodecError(f"unknown update codec {name!r}; expected one of {sorted(CODECS)}")
    return codec


def _layout(
    codec: Codec, shape: Shape, dtype: str, params: Mapping[str, Any], min_size: int
) -> Layout | None:
    size = math.prod(shape)
    if np.dtype(dtype).kind != "f" or size < max(min_size, 1):
        return None
    return codec.layout(shape, params)


def _start_checksum(codec: Codec, seed: int, min_size: int, params: Mapping[str, Any]) -> Any:
    """Start the update's checksum: codec, version, seed, ``min_size`` and parameters.

    Each compressed tensor then adds the randomness the server regenerates from the seed
    (``TensorJob.shared``) and its payload parts, so a decode under another seed, other
    parameters or another random generator, or of parts from another encode, is refused.
    """
    head = json.dumps([codec.name, codec.version, seed, min_size, params], sort_keys=True)
    return hashlib.sha256(head.encode())


def _digest_parts(checksum: Any, key: str, parts: Mapping[str, np.ndarray]) -> None:
    """Add one tensor's payload parts to the checksum."""
    for part in sorted(parts):
        checksum.update(f"{key}{PART_SEPARATOR}{part}".encode())
        checksum.update(np.ascontiguousarray(parts[part]).tobytes())


def encode_update(
    diff: Mapping[str, np.ndarray],
    config: CodecConfig,
    *,
    seed: int,
    state: dict[str, np.ndarray] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Compress a site's update (``W − θ``) for upload.

    Args:
        diff: the update by state-dict key; float tensors are compressed as float32.
            Example: ``{"enc.conv.weight": d, "enc.norm.num_batches_tracked": n}``.
        config: a ``CodecConfig`` (``name``, ``params``, ``min_size``).
            Example: ``CodecConfig(name="quantize", params={"bits": 4, "rotate": True})``.
        seed: the task's seed (non-negative); the server regenerates shared randomness from it.
            Example: ``TrainConfig.seed``.
        state: site-side memory across rounds (``topk`` error feedback), updated in place.
            Default ``None`` (no error feedback). Example: ``{}`` on the first round.

    Returns:
        ``(payload, codec_params)``: tensors for the bundle, and the dict for
        ``BundleMeta(codec=config.name, codec_params=...)``.

    Raises:
        CodecError: unknown codec, bad parameters or seed, or a key containing ``#``.
    """
    codec = _codec(config.name)
    params = codec.resolve(config.params)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= _MAX_SEED:
        raise CodecError(f"codec seed must be an integer in [0, 2^63), got {seed!r}")
    checksum = _start_checksum(codec, seed, config.min_size, params)
    payload: dict[str, np.ndarray] = {}
    for key in sorted(diff):
        if PART_SEPARATOR in key:
            raise CodecError(
                f"tensor name {key!r} contains {PART_SEPARATOR!r}, reserved for payload parts"
            )
        x = np.asarray(diff[key])
        layout = _layout(codec, x.shape, str(x.dtype), params, config.min_size)
        if layout is None:
            payload[key] = x
            continue
        job = TensorJob(codec.name, key, x.shape, params, seed, checksum, state)
        parts = codec.encode(job, x.astype(np.float32, copy=False))
        _digest_parts(checksum, key, parts)
        payload.update({f"{key}{PART_SEPARATOR}{p}": a for p, a in parts.items()})
    codec_params = {
        "codec": codec.name,
        "version": codec.version,
        "seed": seed,
        "min_size": config.min_size,
        "params": params,
        "checksum": checksum.hexdigest()[:16],
    }
    return payload, codec_params


def _is_half(array: np.ndarray | None) -> bool:
    return array is not None and array.dtype == np.float16


def _claimed(
    meta: BundleMeta, codec: Codec, seed: int | None
) -> tuple[int, int, dict[str, Any], str | None]:
    """``(seed, min_size, params, checksum)`` from ``meta.codec_params``, checked.

    A plain (``none``) update may have empty ``codec_params``; it has no seed or checksum.
    """
    cp = meta.codec_params
    if not isinstance(cp, Mapping):
        raise CodecError(f"codec_params must be a JSON object, got {type(cp).__name__}")
    claimed = cp.get("codec", "none" if codec is NONE else None)
    if codec is NONE and claimed == "none":
        return 0, 0, {}, None
    if claimed != codec.name:
        raise CodecError(
            f"bundle says codec {codec.name!r} but its codec_params describe {claimed!r}"
        )
    if cp.get("version") != codec.version:
        raise CodecError(
            f"codec {codec.name!r} version {cp.get('version')!r} is not supported; "
            f"expected {codec.version}"
        )
    got_seed, min_size, checksum = cp.get("seed"), cp.get("min_size"), cp.get("checksum")
    if (
        isinstance(got_seed, bool)
        or not isinstance(got_seed, int)
        or not 0 <= got_seed <= _MAX_SEED
    ):
        raise CodecError(f"codec_params seed must be an integer in [0, 2^63), got {got_seed!r}")
    if seed is not None and got_seed != seed:
        raise CodecError(f"update was encoded with seed {got_seed}, expected seed {seed}")
    if isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < 0:
        raise CodecError(f"codec_params min_size must be an integer >= 0, got {min_size!r}")
    if not isinstance(checksum, str):
        raise CodecError("codec_params lack the checksum (seed fingerprint) of the update")
    return got_seed, min_size, codec.resolve(cp.get("params", {})), checksum


def _check_parts(
    payload: Mapping[str, np.ndarray], wanted: Mapping[str, tuple[Shape, str]], codec: str
) -> None:
    """The payload must hold exactly the wanted arrays, with their shapes and dtypes."""
    missing = sorted(set(wanted) - set(payload))
    unknown = sorted(set(payload) - set(wanted))
    problems = []
    if missing:
        problems.append(f"missing {missing[:10]}")
    if unknown:
        problems.append(f"unexpected {unknown[:10]}")
    for name in sorted(set(wanted) & set(payload)):
        shape, dtype = wanted[name]
        array = payload[name]
        if tuple(array.shape) != tuple(shape) or str(array.dtype) != dtype:
            problems.append(
                f"{name}: expected {dtype}{list(shape)}, got {array.dtype}{list(array.shape)}"
            )
    if problems:
        raise CodecError(f"payload does not match codec {codec!r}: " + "; ".join(problems[:10]))


def decode_update(
    payload: Mapping[str, np.ndarray],
    meta: BundleMeta,
    expected: TensorLayout,
    *,
    allowed: Collection[str] | None = None,
    seed: int | None = None,
) -> dict[str, np.ndarray]:
    """Rebuild the dense update from a compressed payload, trusting nothing the site claims.

    The payload layout is derived from ``expected`` (the server's task spec) and the codec
    parameters, then compared array by array before anything is decoded.

    Args:
        payload: the bundle's tensors (``decode_bundle(..., expected=None).tensors``).
        meta: the bundle's metadata; ``meta.codec`` names the codec.
        expected: ``{key: (shape, dtype)}`` of the dense update. Example: ``spec.expected()``.
        allowed: codec names accepted here, ``"none"`` included if plain updates are fine.
            Default ``None`` (any registered codec). Example: ``{"none", "quantize"}``.
        seed: the seed the server assigned to this task; ``None`` accepts the claimed one
            (the checksum is still checked). Default ``None``. Example: ``1234``.

    Returns:
        ``{key: dense array}`` matching ``expected`` exactly.

    Raises:
        CodecError: codec not allowed or unknown; ``codec_params`` naming another codec,
            another version or malformed; missing, unexpected or mis-sized payload arrays;
            a seed other than ``seed``; a checksum that does not match (wrong seed, other
            parameters or random generator, altered parts); invalid top-k positions;
            non-finite decoded values.
    """
    if allowed is not None and meta.codec not in allowed:
        raise CodecError(f"codec {meta.codec!r} is not allowed here; allowed: {sorted(allowed)}")
    codec = _codec(meta.codec)
    got_seed, min_size, params, claimed_checksum = _claimed(meta, codec, seed)
    layouts = {k: _layout(codec, tuple(s), d, params, min_size) for k, (s, d) in expected.items()}
    wanted: dict[str, tuple[Shape, str]] = {}
    for key, (shape, dtype) in expected.items():
        layout = layouts[key]
        if layout is not None:
            wanted.update({f"{key}{PART_SEPARATOR}{p}": v for p, v in layout.items()})
        elif meta.wire_dtype == "float16" and dtype == "float32" and _is_half(payload.get(key)):
            wanted[key] = (tuple(shape), "float16")  # half-precision wire, cast back below
        else:
            wanted[key] = (tuple(shape), dtype)
    _check_parts(payload, wanted, codec.name)
    checksum = _start_checksum(codec, got_seed, min_size, params)
    dense: dict[str, np.ndarray] = {}
    for key in sorted(expected):
        shape, dtype = expected[key]
        layout = layouts[key]
        if layout is None:
            dense[key] = np.asarray(payload[key]).astype(dtype, copy=False)
            continue
        job = TensorJob(codec.name, key, tuple(shape), params, got_seed, checksum)
        parts = {p: np.asarray(payload[f"{key}{PART_SEPARATOR}{p}"]) for p in layout}
        values = codec.decode(job, parts).astype(dtype, copy=False)
        _digest_parts(checksum, key, parts)
        if not np.isfinite(values).all():
            raise CodecError(f"decoded {key!r} has non-finite values")
        dense[key] = values
    if claimed_checksum is not None and checksum.hexdigest()[:16] != claimed_checksum:
        raise CodecError(
            f"checksum mismatch for codec {codec.name!r}: the payload was not encoded with the "
            f"seed ({got_seed}) and parameters codec_params claim (or with another random "
            "generator), or its parts were altered"
        )
    return {k: dense[k] for k in expected}
