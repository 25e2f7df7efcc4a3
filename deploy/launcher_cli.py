"""``fedseg demo``, ``fedseg simulate`` and ``fedseg deploy`` commands (placeholder)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Attach the launcher commands to the root app."""

    @app.command("demo")
    def demo() -> None:
        """Run a whole federation on this machine (not built yet)."""
        typer.echo("not built yet")
