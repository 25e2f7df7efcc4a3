"""`fedseg data_specs` commands (placeholder until its issue lands)."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True)


@app.command("info")
def info() -> None:
    """Say that this command group is not built yet."""
    typer.echo("not built yet")
