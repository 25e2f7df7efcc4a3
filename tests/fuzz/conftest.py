"""The fuzz tier is collected only when asked for (``-m fuzz``): its module builds an app at import."""

from __future__ import annotations

from pathlib import Path

import pytest


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    markexpr = str(getattr(config.option, "markexpr", "") or "")
    if collection_path.name == "test_schemathesis.py" and (
        "fuzz" not in markexpr or "not fuzz" in markexpr
    ):
        return True
    return None
