"""Fixtures shared by the whole suite."""

from __future__ import annotations

import locale
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _restore_locale() -> Iterator[None]:
    """Undo locale changes a test makes in this process.

    GDCM's DICOM writer (used by the tests that build DICOM series with SimpleITK) switches the
    process's LC_CTYPE to "C", which would turn later default text decoding into ASCII and make
    unrelated tests fail depending on their order. The product only reads DICOM, which leaves
    the locale alone.
    """
    saved = locale.setlocale(locale.LC_ALL)
    yield
    locale.setlocale(locale.LC_ALL, saved)
