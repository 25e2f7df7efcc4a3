"""Errors of outside personalisation (test-time routing), all under ``PersonalizationError``."""

from __future__ import annotations

from data_specs.errors import BundleError, SpecMismatchError
from personalization.errors import PersonalizationError


class RoutingError(PersonalizationError):
    """Base class of every error raised by ``personalization.outside``."""


class RoutingBundleError(RoutingError, BundleError):
    """A routing bundle is not safetensors, lacks its metadata, or carries non-finite values.

    Also a ``data_specs.BundleError``, so code that already refuses bad weights bundles at a
    download edge refuses bad routing bundles the same way.
    """


class RoutingSpecMismatchError(RoutingBundleError, SpecMismatchError):
    """A routing bundle (or one of its experts) does not match the task spec it should serve."""


class RoutedFileError(RoutingError):
    """A saved routed model is missing, not safetensors, or does not rebuild into a network."""
