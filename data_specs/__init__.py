"""fedseg contracts: manifests, task spec, wire messages and the weights bundle codec.

Importing this package is cheap: it pulls neither torch nor MONAI. Modules that need them
(``transforms``, ``task_spec.build_unet``) import them inside the functions that use them.
"""

from __future__ import annotations

from data_specs.constants import BundleKind, NormKind, OptimizerName, SplitName
from data_specs.errors import (
    BundleError,
    DataSpecError,
    ImageReadError,
    ManifestError,
    SpecMismatchError,
)

__all__ = [
    "BundleError",
    "BundleKind",
    "DataSpecError",
    "ImageReadError",
    "ManifestError",
    "NormKind",
    "OptimizerName",
    "SpecMismatchError",
    "SplitName",
]
