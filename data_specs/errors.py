"""The one exception tree of data_specs: every contract violation is a DataSpecError."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


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


def describe_validation_error(exc: ValidationError, where: str, *, show_input: bool = False) -> str:
    """One readable line from a pydantic error, naming each invalid field and its rule.

    Args:
        exc: the error.
        where: what was being validated, first in the line. Example: ``"manifest.json"``.
        show_input: also quote each offending value (cut to 80 characters). Default False: settings
            and configuration may hold secrets, so their values stay out of messages.

    Example:
        >>> describe_validation_error(exc, "invalid site settings")
        "invalid site settings: aggregator_url: Input should be a valid URL"
    """
    parts: list[str] = []
    for err in exc.errors(include_url=False)[:10]:
        loc = ".".join(str(x) for x in err.get("loc", ())) or "(top level)"
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if not show_input:
            parts.append(f"{loc}: {msg}")
        elif err["type"] == "missing":
            parts.append(f"missing field '{loc}'")
        else:
            found = repr(err.get("input"))
            found = found if len(found) <= 80 else found[:77] + "..."
            parts.append(f"field '{loc}': {err['msg']} (found {found})")
    return f"{where}: " + "; ".join(parts)
