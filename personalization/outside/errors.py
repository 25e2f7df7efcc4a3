"""Errors of outside personalisation (test-time routing), under ``PersonalizationError``."""

from __future__ import annotations

# The routing bundle's own errors live with its format in data_specs.
from data_specs.errors import RoutingBundleError, RoutingSpecMismatchError
from personalization.errors import PersonalizationError


class RoutingError(PersonalizationError):
    """Base class of every error raised by ``personalization.outside``."""


class RoutedFileError(RoutingError):
    """A saved routed model is missing, not safetensors, or does not rebuild into a network."""


__all__ = [
    "RoutedFileError",
    "RoutingBundleError",
    "RoutingError",
    "RoutingSpecMismatchError",
]
