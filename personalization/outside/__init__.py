"""Outside personalisation (IOP-FL, Jiang et al. 2022): test-time routing over K+1 experts.

A site outside the federation downloads the routing bundle (global model + K shared personal
models), builds one routed U-Net whose every convolution mixes the experts' kernels per sample,
and adapts only the routers and norm affine parameters on its unlabelled scans. ``safe_adapt``
(``safeguard``) wraps that adaptation in label-free checks and falls back to the global model
or the best single expert when the adapted mixture looks worse.

Importing this package pulls no torch: the bundle codec is numpy-only, ``adapt`` and
``AdaptConfig`` import torch when called, and the torch-bound classes (``RoutedUNet``,
``OutputAverage``, ...) are imported on first use, so the aggregator can assemble routing
bundles without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from data_specs.weights.routing_bundle import (
    ExpertSource,
    RoutingBundle,
    decode_routing_bundle,
    encode_routing_bundle,
)
from personalization.outside.adapt import AdaptConfig, AdaptReport, StepLosses, adapt
from personalization.outside.errors import (
    RoutedFileError,
    RoutingBundleError,
    RoutingError,
    RoutingSpecMismatchError,
)

if TYPE_CHECKING:
    from personalization.outside.baselines import OutputAverage, global_model, tent_adapt
    from personalization.outside.routed import RoutedUNet, build_routed_model
    from personalization.outside.routed_file import load_routed, save_routed
    from personalization.outside.safeguard import SafeAdaptConfig, SafeAdaptResult, safe_adapt

_LAZY = {
    "OutputAverage": "baselines",
    "global_model": "baselines",
    "tent_adapt": "baselines",
    "RoutedUNet": "routed",
    "build_routed_model": "routed",
    "load_routed": "routed_file",
    "save_routed": "routed_file",
    "SafeAdaptConfig": "safeguard",
    "SafeAdaptResult": "safeguard",
    "safe_adapt": "safeguard",
}

__all__ = [
    "AdaptConfig",
    "AdaptReport",
    "ExpertSource",
    "OutputAverage",
    "RoutedFileError",
    "RoutedUNet",
    "RoutingBundle",
    "RoutingBundleError",
    "RoutingError",
    "RoutingSpecMismatchError",
    "SafeAdaptConfig",
    "SafeAdaptResult",
    "StepLosses",
    "adapt",
    "build_routed_model",
    "decode_routing_bundle",
    "encode_routing_bundle",
    "global_model",
    "load_routed",
    "safe_adapt",
    "save_routed",
    "tent_adapt",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(f"personalization.outside.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
