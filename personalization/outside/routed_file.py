"""Saving and loading a routed model: one safetensors file, written atomically.

The file holds ``RoutedUNet.export()`` (expert kernels, routers, norm layers) and metadata
``fedseg_routed=1``, ``spec`` (JSON ``TaskSpec``), ``spec_hash``, ``num_experts`` and ``gate``:
everything needed to rebuild the network without the routing bundle.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from data_specs.errors import BundleError
from data_specs.files import atomic_write_bytes
from data_specs.task_spec import TaskSpec
from data_specs.weights.bundle import read_header
from personalization.outside.errors import RoutedFileError
from personalization.outside.layers import GATES, Gate
from personalization.outside.routed import RoutedUNet

META_ROUTED = "fedseg_routed"
META_ROUTED_VERSION = "1"
META_SPEC = "spec"
META_SPEC_HASH = "spec_hash"
META_NUM_EXPERTS = "num_experts"
META_GATE = "gate"


def save_routed(path: str | Path, model: RoutedUNet) -> None:
    """Write a routed model to ``path`` atomically (readers never see half a file).

    Args:
        path: destination; its folder must exist. Example:
            ``workdir / "routed" / f"{experiment_id}.safetensors"``.
        model: the (adapted) routed model.

    Raises:
        RoutedFileError: the model holds NaN or Inf.
    """
    tensors = model.export()
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not v.isfinite().all()]
    if bad:
        raise RoutedFileError(f"refusing to save non-finite values (NaN or Inf) in {bad[:10]}")
    metadata = {
        META_ROUTED: META_ROUTED_VERSION,
        META_SPEC: model.spec.model_dump_json(),
        META_SPEC_HASH: model.spec.spec_hash(),
        META_NUM_EXPERTS: str(model.num_experts),
        META_GATE: model.gate,
    }
    atomic_write_bytes(path, st_save(tensors, metadata=metadata))


def load_routed(path: str | Path, spec: TaskSpec | None = None) -> RoutedUNet:
    """Rebuild a routed model saved by ``save_routed``.

    Args:
        path: the file. Example: ``workdir / "routed" / "exp-1.safetensors"``.
        spec: the task spec the model must belong to; default ``None`` trusts the file's.

    Returns:
        The routed model in eval mode, outputs identical to the saved one.

    Raises:
        RoutedFileError: missing file, not safetensors, missing or inconsistent metadata,
            another task spec, tensors that do not fit the network, or NaN/Inf.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise RoutedFileError(
            f"cannot read routed model {Path(path).name}: {exc.strerror}"
        ) from exc
    try:
        meta = read_header(data).get("__metadata__") or {}
    except BundleError as exc:
        raise RoutedFileError(f"not a routed model file: {exc}") from exc
    if meta.get(META_ROUTED) != META_ROUTED_VERSION:
        raise RoutedFileError(
            f"not a routed model file: expected metadata {META_ROUTED}={META_ROUTED_VERSION}, "
            f"found {meta.get(META_ROUTED)!r}"
        )
    try:
        file_spec = TaskSpec.model_validate_json(meta[META_SPEC])
        num_experts = int(meta[META_NUM_EXPERTS])
        gate = meta[META_GATE]
    except (KeyError, ValueError, ValidationError) as exc:
        raise RoutedFileError(f"routed model metadata is malformed: {exc}") from exc
    if gate not in GATES or num_experts < 1 or meta.get(META_SPEC_HASH) != file_spec.spec_hash():
        raise RoutedFileError(
            f"routed model metadata is inconsistent: gate={gate!r}, num_experts={num_experts}, "
            f"spec_hash={meta.get(META_SPEC_HASH)!r} (spec hashes to {file_spec.spec_hash()})"
        )
    if spec is not None and spec.spec_hash() != file_spec.spec_hash():
        raise RoutedFileError(
            f"routed model is for task spec {file_spec.spec_hash()}, expected {spec.spec_hash()}"
        )
    try:
        tensors = st_load(data)
    except (SafetensorError, ValueError, TypeError) as exc:
        raise RoutedFileError(f"corrupt safetensors body: {exc}") from exc
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not v.isfinite().all()]
    if bad:
        raise RoutedFileError(f"non-finite values (NaN or Inf) in {bad[:10]}")
    model = RoutedUNet(file_spec, num_experts, gate=cast(Gate, gate))
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise RoutedFileError(f"routed model tensors do not fit the network: {exc}") from exc
    return model.eval()
