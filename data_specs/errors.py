"""The one exception tree of data_specs: every contract violation is a DataSpecError."""

from __future__ import annotations


class DataSpecError(Exception):
    """Base class of every error raised by data_specs."""


class ManifestError(DataSpecError):
    """A dataset manifest is not JSON, misses fields, or names paths it may not name."""


class ImageReadError(DataSpecError):
    """An image or label file is missing, unreadable, or not of a supported format."""


class ImageWriteError(DataSpecError):
    """A mask or image cannot be written: wrong shape for its reference, or the folder is missing."""


class BundleError(DataSpecError):
    """A weights bundle is not safetensors, is corrupt, or carries non-finite values."""


class SpecMismatchError(BundleError):
    """Tensors or metadata do not match the task spec they claim to belong to."""


class CodecError(BundleError):
    """A compressed update does not decode under the codec it names."""


class RoutingBundleError(BundleError):
    """A routing bundle is not safetensors, lacks its metadata, or carries non-finite values."""


class RoutingSpecMismatchError(RoutingBundleError, SpecMismatchError):
    """A routing bundle (or one of its experts) does not match the task spec it should serve."""


class PrivacyError(DataSpecError):
    """A privacy step (ring quantisation, secret sharing, masking, clipping, accounting) refused."""
