"""``python -m aggregator``: the same commands as ``fedseg aggregator``."""

from __future__ import annotations

from aggregator.cli import app

if __name__ == "__main__":
    app(prog_name="python -m aggregator")
