"""Global model bundles: the initial model, the float16 downlink copy, loading weights and server state."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from aggregator.storage.blobs import BlobRef, BlobStore
from data_specs.task_spec import TaskSpec
from data_specs.weights.bundle import BundleMeta, canonical_save, encode_bundle, open_bundle
from data_specs.weights.unet_layout import initial_weights

_FLOAT16_MAX = float(np.finfo(np.float16).max)
_STATE_FORMAT = {"fedseg_server_state": "1"}


def build_initial_weights(spec: TaskSpec, seed: int) -> dict[str, np.ndarray]:
    """Freshly initialised U-Net weights for a spec, reproducible from ``seed``.

    Computed with numpy (``data_specs.weights.unet_layout.initial_weights``, torch's default
    distributions), so the service never imports torch or MONAI.

    Args:
        spec: the task spec.
        seed: the experiment seed.

    Returns:
        ``{key: array}`` in state-dict order.
    """
    return initial_weights(spec, seed)


def store_global(
    blobs: BlobStore,
    tensors: Mapping[str, np.ndarray],
    *,
    spec_hash: str,
    round_number: int,
    class_names: Sequence[str] | None = None,
) -> BlobRef:
    """Encode a global model as a full float32 bundle of round ``round_number`` and store it.

    Args:
        blobs: the blob store.
        tensors: the model's tensors.
        spec_hash: the experiment's spec hash.
        round_number: the round (0: initial model).
        class_names: the experiment's class names, background first, written into the
            bundle's metadata. Default None (no names).
    """
    meta = BundleMeta(spec_hash=spec_hash, round=round_number, class_names=tuple(class_names or ()))
    return blobs.put_bytes(encode_bundle(tensors, meta))


def load_weights(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a stored bundle (one model in memory), float16 entries cast to float32."""
    with open_bundle(path) as (meta, handle):
        out = {k: handle.get_tensor(k) for k in handle.offset_keys()}
    if meta.wire_dtype == "float16":
        out = {k: v.astype(np.float32) if v.dtype == np.float16 else v for k, v in out.items()}
    return out


def store_float16_copy(blobs: BlobStore, sha256: str) -> BlobRef:
    """The float16 downlink copy of a stored global model (``wire_dtype=float16``), cached as a blob.

    float32 tensors become float16 (clipped to its range so they stay finite); integer buffers
    are kept. The site's ``decode_bundle`` casts them back to float32.
    """
    path = blobs.require(sha256)
    with open_bundle(path) as (meta, handle):
        tensors = {}
        for key in handle.offset_keys():
            value = handle.get_tensor(key)
            if value.dtype == np.float32:
                value = np.clip(value, -_FLOAT16_MAX, _FLOAT16_MAX).astype(np.float16)
            tensors[key] = value
    half = BundleMeta(
        spec_hash=meta.spec_hash,
        round=meta.round,
        kind=meta.kind,
        wire_dtype="float16",
        class_names=meta.class_names,
    )
    return blobs.put_bytes(encode_bundle(tensors, half))


def store_state(blobs: BlobStore, state: Mapping[str, np.ndarray]) -> BlobRef | None:
    """Store a strategy's server state (momentum, Adam moments); None when it is empty."""
    if not state:
        return None
    arrays = {k: np.asarray(v) for k, v in state.items()}
    return blobs.put_bytes(canonical_save(arrays, _STATE_FORMAT))


def load_state(blobs: BlobStore, sha256: str | None) -> dict[str, np.ndarray]:
    """The server state stored by ``store_state`` (``{}`` for None)."""
    if sha256 is None:
        return {}
    from safetensors import safe_open

    with safe_open(str(blobs.require(sha256)), framework="np") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
