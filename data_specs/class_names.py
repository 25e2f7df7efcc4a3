"""Class names an experiment declares, carried by its model bundles to the sites that segment with them.

The researcher names the classes once (``ExperimentCreate.class_names``, background first, one
name per output channel of the network). The aggregator writes them into the ``__metadata__``
of every global-model bundle and every routing bundle as the key ``class_names`` (a JSON list
of strings), so ``fedseg site infer`` can label its picture legend and its DICOM SEG segments
without the site's manifest. Names are not part of ``TaskSpec``: renaming a class changes no
spec hash and no network.

This module is pure Python (no torch, no MONAI): the aggregator and the site use it alike.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from data_specs.errors import BundleError

META_CLASS_NAMES = "class_names"
MAX_CLASSES = 256
MAX_NAME_CHARS = 64


def check_class_names(names: Sequence[str], num_classes: int | None = None) -> tuple[str, ...]:
    """Validate class names: one per class, background first, short printable text.

    Args:
        names: the names. Example: ``["background", "RV", "myocardium", "LV"]``.
        num_classes: the network's output channels the names must match; None checks only
            the names themselves. Default None.

    Returns:
        The names as a tuple, surrounding white space removed.

    Raises:
        ValueError: a wrong count, an empty or over-long name, or a control character.
    """
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise ValueError(f"class_names must be a list of strings, got {type(names).__name__}")
    if not 2 <= len(names) <= MAX_CLASSES:
        raise ValueError(f"class_names must hold 2 to {MAX_CLASSES} names, got {len(names)}")
    if num_classes is not None and len(names) != num_classes:
        raise ValueError(
            f"class_names must name each of the {num_classes} classes of the network "
            f"(background first), got {len(names)} name(s)"
        )
    out = []
    for i, name in enumerate(names):
        text = name.strip() if isinstance(name, str) else None
        if not text or len(text) > MAX_NAME_CHARS or not text.isprintable():
            raise ValueError(
                f"class_names[{i}] must be printable text of 1 to {MAX_NAME_CHARS} characters, "
                f"got {str(name)[:80]!r}"
            )
        out.append(text)
    return tuple(out)


def encode_class_names(names: Sequence[str]) -> str:
    """The metadata value of ``class_names``: a compact JSON list (byte-stable)."""
    return json.dumps(list(check_class_names(names)), ensure_ascii=False, separators=(",", ":"))


def decode_class_names(raw: str | None) -> tuple[str, ...]:
    """The names a metadata value holds; ``()`` when it is absent.

    Raises:
        BundleError: not a JSON list of valid names.
    """
    if raw is None:
        return ()
    try:
        value = json.loads(raw)
        return check_class_names(value)
    except ValueError as exc:  # JSONDecodeError is a ValueError too
        raise BundleError(f"bundle metadata class_names is malformed: {str(exc)[:200]}") from exc


def foreground_names(
    num_classes: int,
    *,
    labels: Mapping[str, str] | None = None,
    class_names: Sequence[str] = (),
) -> dict[int, str]:
    """Names of the foreground classes ``1..num_classes-1`` for a legend or DICOM SEG segments.

    A site manifest's ``labels`` come first (the site's own words), then the names the model's
    bundle carries, then ``class k``.

    Args:
        num_classes: classes including background. Example: ``4``.
        labels: manifest labels ``{"0": "background", "1": "RV", ...}``. Default None.
        class_names: the bundle's names, background first. Default none.

    Example:
        ``foreground_names(3, class_names=["bg", "liver", "tumour"]) == {1: "liver", 2: "tumour"}``
    """
    labels = labels or {}
    out = {}
    for k in range(1, num_classes):
        if str(k) in labels:
            out[k] = labels[str(k)]
        elif k < len(class_names):
            out[k] = class_names[k]
        else:
            out[k] = f"class {k}"
    return out
