"""The ``fedseg`` console script: one command group per user."""

from __future__ import annotations

import typer

from aggregator.cli import app as aggregator_app
from data_specs.cli import app as data_app
from deploy.console_cli import register as register_console
from deploy.launcher_cli import register as register_launcher
from deploy.tls import deploy_app
from site_agent.cli import app as site_app

app = typer.Typer(
    name="fedseg",
    help="Federated medical image segmentation with inside and outside personalisation.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(data_app, name="data", help="Describe, check and synthesise datasets.")
app.add_typer(aggregator_app, name="aggregator", help="Run the federated aggregator service.")
app.add_typer(site_app, name="site", help="Run a hospital's site agent, adapt and infer.")
app.add_typer(deploy_app, name="deploy", help="Deployment helpers: development TLS certificates.")
register_launcher(app)
register_console(app)

if __name__ == "__main__":
    app()
