"""The routing bundle codec: global + shared personal models in one safetensors file.

Layout (docs/architecture.md, "Routing bundle"): keys ``expert.<i>.<state-dict key>`` for
experts ``i = 0..K`` (0 is the global model) and ``__metadata__`` with ``fedseg_routing=1``,
``spec_hash``, ``spec`` (JSON ``TaskSpec``) and ``experts`` (JSON list of
``{"index", "source", "name", "round"}``).

The format is a contract between the aggregator (which assembles bundles) and an outside site
(which routes them), so it lives here. This module imports neither torch nor MONAI, so the
aggregator can assemble bundles from numpy arrays; ``expected_tensors`` derives the expected
tensor shapes from a spec by arithmetic (``data_specs.weights.unet_layout``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors import SafetensorError
from safetensors.numpy import load as st_load

from data_specs.class_names import (
    META_CLASS_NAMES,
    check_class_names,
    decode_class_names,
    encode_class_names,
)
from data_specs.errors import (
    BundleError,
    RoutingBundleError,
    RoutingSpecMismatchError,
    SpecMismatchError,
)
from data_specs.task_spec import TaskSpec, expected_tensors
from data_specs.weights.bundle import (
    TensorLayout,
    canonical_save,
    check_finite,
    check_tensors,
    read_header,
)
from data_specs.weights.safetensors_header import read_file_header

META_ROUTING = "fedseg_routing"
META_ROUTING_VERSION = "1"
META_SPEC_HASH = "spec_hash"
META_SPEC = "spec"
META_EXPERTS = "experts"
# Optional: the federation's aggregate class frequencies (JSON list, background first).
META_CLASS_PRIOR = "class_prior"
EXPERT_PREFIX = "expert."
_EXPERT_KEY = re.compile(r"^expert\.(0|[1-9][0-9]*)\.(.+)$")


class ExpertSource(BaseModel):
    """Where one expert of a routing bundle comes from.

    Args:
        index: position in the bundle; 0 is the global model. Example: ``2``.
        source: ``"global"`` (index 0 only) or ``"site"`` (a shared personal model).
        name: human-readable origin, e.g. a site name. Example: ``"hospital-b"``.
        round: federated round the weights belong to. Example: ``40``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    index: int = Field(ge=0)
    source: Literal["global", "site"]
    name: str = Field(min_length=1, max_length=200)
    round: int = Field(ge=0)


@dataclass(frozen=True)
class RoutingBundle:
    """A decoded routing bundle.

    Args:
        spec: the task spec all experts share.
        experts: one state dict per expert (numpy arrays, state-dict order); 0 is global.
        sources: one ``ExpertSource`` per expert, ``sources[i].index == i``.
    """

    spec: TaskSpec
    experts: list[dict[str, np.ndarray]]
    sources: list[ExpertSource]

    @property
    def num_experts(self) -> int:
        """K + 1: the global model plus K personal models."""
        return len(self.experts)


def _to_numpy(value: Any) -> np.ndarray:
    # A torch tensor without importing torch: anything with .detach() is detached to numpy.
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    return arr if arr.flags.c_contiguous else arr.copy(order="C")


def _check_sources(
    sources: Sequence[ExpertSource | Mapping[str, Any]], n: int
) -> list[ExpertSource]:
    if len(sources) != n:
        raise RoutingBundleError(f"expected one source entry per expert ({n}), got {len(sources)}")
    out: list[ExpertSource] = []
    for i, raw in enumerate(sources):
        try:
            src = raw if isinstance(raw, ExpertSource) else ExpertSource(**{"index": i, **raw})
        except (ValidationError, TypeError) as exc:
            raise RoutingBundleError(f"expert {i}: malformed source entry: {exc}") from exc
        if src.index != i:
            raise RoutingBundleError(f"expert {i}: source entry says index {src.index}")
        want = "global" if i == 0 else "site"
        if src.source != want:
            raise RoutingBundleError(
                f"expert {i}: expected source {want!r} (expert 0 is the global model, "
                f"every other expert a site model), got {src.source!r}"
            )
        out.append(src)
    return out


def _check_expert(i: int, tensors: Mapping[str, np.ndarray], expected: TensorLayout) -> None:
    try:
        check_tensors(tensors, expected)
    except SpecMismatchError as exc:
        raise RoutingSpecMismatchError(f"expert {i}: {exc}") from exc
    try:
        check_finite(tensors)
    except BundleError as exc:
        raise RoutingBundleError(f"expert {i}: {exc}") from exc


def encode_routing_bundle(
    experts: Sequence[Mapping[str, Any]],
    sources: Sequence[ExpertSource | Mapping[str, Any]],
    spec: TaskSpec,
    *,
    expected: TensorLayout | None = None,
    class_prior: Sequence[float] | None = None,
    class_names: Sequence[str] = (),
) -> bytes:
    """Serialise the global model and K personal models into one routing bundle.

    Args:
        experts: K + 1 state dicts (numpy arrays or torch tensors), expert 0 the global
            model. Example: ``[global_sd, site_a_sd, site_b_sd]``.
        sources: one entry per expert, ``{"source", "name", "round"}`` (``index`` optional,
            must equal the position). Example: ``[{"source": "global", "name": "global",
            "round": 40}, {"source": "site", "name": "site-a", "round": 40}]``.
        spec: the task spec every expert must match.
        expected: ``{key: (shape, dtype)}`` each expert must match; default ``None`` derives
            it from ``spec`` with ``expected_tensors``.
        class_prior: the federation's aggregate class frequencies, one share per class
            (background first); stored as metadata ``class_prior``. Default None (absent).
            Example: ``[0.93, 0.03, 0.02, 0.02]``.
        class_names: the experiment's class names, background first, one per class; stored
            as metadata ``class_names`` (``data_specs.class_names``). Default none (absent).

    Returns:
        safetensors bytes.

    Raises:
        RoutingBundleError: no experts, malformed sources, or NaN/Inf in an expert.
        RoutingSpecMismatchError: an expert's keys, shapes or dtypes differ from the spec.
    """
    if not experts:
        raise RoutingBundleError("a routing bundle needs at least the global model, got 0 experts")
    srcs = _check_sources(sources, len(experts))
    want = expected if expected is not None else expected_tensors(spec)
    arrays: dict[str, np.ndarray] = {}
    for i, state in enumerate(experts):
        tensors = {k: _to_numpy(v) for k, v in state.items()}
        _check_expert(i, tensors, want)
        arrays.update({f"{EXPERT_PREFIX}{i}.{k}": v for k, v in tensors.items()})
    metadata = {
        META_ROUTING: META_ROUTING_VERSION,
        META_SPEC_HASH: spec.spec_hash(),
        META_SPEC: spec.model_dump_json(),
        META_EXPERTS: json.dumps([s.model_dump(mode="json") for s in srcs]),
    }
    if class_prior is not None:
        metadata[META_CLASS_PRIOR] = json.dumps(_check_prior(class_prior, spec.out_channels))
    if class_names:
        try:
            check_class_names(class_names, spec.out_channels)
        except ValueError as exc:
            raise RoutingBundleError(str(exc)) from exc
        metadata[META_CLASS_NAMES] = encode_class_names(class_names)
    # Byte-stable, like weights bundles: the aggregator stores bundles content-addressed.
    return canonical_save(arrays, metadata)


ROUTING_MAX_HEADER_BYTES = 64 << 20


def read_class_names(path: str | Path) -> tuple[str, ...]:
    """The class names in a safetensors file's ``__metadata__`` (weights or routing bundle).

    Reads only the header (the tensors stay on disk), through the one header reader, with the
    routing bundle's header cap (the larger one).

    Args:
        path: the model file. Example: ``"global/exp-1.safetensors"``.

    Returns:
        The names, background first; ``()`` when the file carries none.

    Raises:
        OSError: the file cannot be read. BundleError: not safetensors, or malformed names.
    """
    header = read_file_header(path, max_bytes=ROUTING_MAX_HEADER_BYTES)
    return decode_class_names((header.metadata or {}).get(META_CLASS_NAMES))


def _read_metadata(data: bytes | memoryview) -> tuple[TaskSpec, list[ExpertSource]]:
    try:
        # One model per expert: a larger header than a weights bundle's, still capped.
        header = read_header(data, max_header_bytes=ROUTING_MAX_HEADER_BYTES)
    except BundleError as exc:
        raise RoutingBundleError(f"not a routing bundle: {exc}") from exc
    meta = header.get("__metadata__") or {}
    if meta.get(META_ROUTING) != META_ROUTING_VERSION:
        raise RoutingBundleError(
            f"not a routing bundle: expected metadata {META_ROUTING}={META_ROUTING_VERSION}, "
            f"found {meta.get(META_ROUTING)!r}"
        )
    try:
        spec = TaskSpec.model_validate_json(meta[META_SPEC])
        raw_sources = json.loads(meta[META_EXPERTS])
    except (KeyError, ValueError, TypeError) as exc:
        raise RoutingBundleError(f"routing bundle metadata is malformed: {exc}") from exc
    if meta.get(META_SPEC_HASH) != spec.spec_hash():
        raise RoutingBundleError(
            f"routing bundle metadata is inconsistent: spec_hash {meta.get(META_SPEC_HASH)!r} "
            f"but its spec hashes to {spec.spec_hash()!r}"
        )
    if not isinstance(raw_sources, list) or not raw_sources:
        raise RoutingBundleError("routing bundle metadata 'experts' must be a non-empty JSON list")
    return spec, _check_sources(raw_sources, len(raw_sources))


def decode_routing_bundle(
    data: bytes | memoryview,
    spec: TaskSpec | None = None,
    *,
    expected: TensorLayout | None = None,
) -> RoutingBundle:
    """Parse and check a routing bundle.

    Args:
        data: safetensors bytes.
        spec: the task spec the bundle must belong to; default ``None`` trusts the spec the
            bundle carries (still checking it against its own hash and every expert).
            Example: ``TaskSpec(out_channels=2)``.
        expected: ``{key: (shape, dtype)}`` every expert must match; default ``None`` derives
            it from the spec with ``expected_tensors``.

    Returns:
        The bundle with numpy state dicts.

    Raises:
        RoutingBundleError: not safetensors, truncated, missing metadata, stray keys, NaN/Inf.
        RoutingSpecMismatchError: another task spec, or an expert with missing/unknown keys or
            mismatched shapes or dtypes.
    """
    bundle_spec, sources = _read_metadata(data)
    if spec is not None and spec.spec_hash() != bundle_spec.spec_hash():
        raise RoutingSpecMismatchError(
            f"routing bundle is for task spec {bundle_spec.spec_hash()} "
            f"({bundle_spec.model_dump_json()}), expected {spec.spec_hash()}"
        )
    try:
        flat = st_load(bytes(data))
    except (SafetensorError, ValueError, TypeError) as exc:
        raise RoutingBundleError(f"corrupt safetensors body: {exc}") from exc
    experts: list[dict[str, np.ndarray]] = [{} for _ in sources]
    stray: list[str] = []
    for key, value in flat.items():
        match = _EXPERT_KEY.match(key)
        if match is None or int(match.group(1)) >= len(sources):
            stray.append(key)
            continue
        experts[int(match.group(1))][match.group(2)] = value
    if stray:
        raise RoutingBundleError(
            f"routing bundle has keys outside expert.0..expert.{len(sources) - 1}: {stray[:10]}"
        )
    want = expected if expected is not None else expected_tensors(bundle_spec)
    for i, tensors in enumerate(experts):
        _check_expert(i, tensors, want)
    # safetensors sorts keys; hand back state-dict order.
    ordered = [{k: tensors[k] for k in want} for tensors in experts]
    return RoutingBundle(spec=bundle_spec, experts=ordered, sources=sources)


def _check_prior(prior: Any, classes: int) -> list[float]:
    if (
        not isinstance(prior, list | tuple)
        or len(prior) != classes
        or not all(isinstance(p, int | float) and not isinstance(p, bool) for p in prior)
        or not all(np.isfinite(p) and p >= 0 for p in prior)
        or not sum(prior) > 0
    ):
        raise RoutingBundleError(
            f"class_prior must be {classes} non-negative shares (one per class, background "
            f"first), got {str(prior)[:80]}"
        )
    total = float(sum(prior))
    return [float(p) / total for p in prior]


def read_class_prior(data: bytes | memoryview) -> list[float] | None:
    """The federation's class frequencies a routing bundle carries, normalised; None if absent.

    Raises:
        RoutingBundleError: not a routing bundle, or a malformed ``class_prior``.
    """
    spec, _ = _read_metadata(data)
    raw = (read_header(data).get("__metadata__") or {}).get(META_CLASS_PRIOR)
    if raw is None:
        return None
    try:
        prior = json.loads(raw)
    except ValueError as exc:
        raise RoutingBundleError(f"routing bundle class_prior is not JSON: {exc}") from exc
    return _check_prior(prior, spec.out_channels)
