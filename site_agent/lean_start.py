"""A site agent's start-up without imports it never uses.

Five agents starting on one host pay every start-up import five times, before any of them can
enroll. Two imports ride along with the HTTP client and serve an agent nothing:

- httpcore imports ``trio`` whenever trio is installed (the test extra's browser driver pulls
  it in), for async clients running under trio; the agent's client is synchronous.
- ``import httpx`` loads httpx's own command-line client (``httpx._main``: rich, click,
  pygments) for its ``httpx`` console script.

``skip_unused_imports`` marks both as absent in ``sys.modules``, which both libraries treat as
"not installed" (their documented fallbacks: no trio support, a ``httpx.main`` that says the CLI
extra is missing). It only affects the process of an agent's command (``fedseg site run``), is
called before anything imports httpx, and leaves modules already imported alone.
"""

from __future__ import annotations

import sys

UNUSED_MODULES = ("trio", "httpx._main")
"""Modules a site agent's process never needs: marked absent at its start."""


def skip_unused_imports() -> list[str]:
    """Mark ``UNUSED_MODULES`` absent unless already imported; returns the ones marked."""
    marked: list[str] = []
    for name in UNUSED_MODULES:
        if name not in sys.modules:
            sys.modules[name] = None  # type: ignore[assignment]  # "import name" -> ImportError
            marked.append(name)
    return marked
