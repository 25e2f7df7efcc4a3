"""The one exception tree of personalization: every refusal here is a PersonalizationError."""

from __future__ import annotations


class PersonalizationError(Exception):
    """Base class of every error raised by the personalization package."""


class StateDictError(PersonalizationError):
    """Two state dicts do not line up: unknown or missing keys, or shape or dtype mismatches."""


class PersonalStoreError(PersonalizationError):
    """A stored personal model is missing, unreadable, not safetensors, or badly named."""
