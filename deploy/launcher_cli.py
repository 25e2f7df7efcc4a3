"""``fedseg demo``, ``fedseg simulate`` and ``fedseg deploy`` commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Attach the launcher commands to the root app."""

    @app.command("demo")
    def demo(
        sites: Annotated[
            int, typer.Option("--sites", min=2, max=8, help="Federated hospitals.")
        ] = 3,
        cases: Annotated[int, typer.Option("--cases", min=5, help="Cases per hospital.")] = 16,
        rounds: Annotated[int, typer.Option("--rounds", min=1, help="Federated rounds.")] = 4,
        epochs: Annotated[int, typer.Option("--epochs", min=1, help="Local epochs per round.")] = 2,
        seed: Annotated[int, typer.Option("--seed")] = 0,
        work_dir: Annotated[
            Path, typer.Option("--work-dir", help="Scratch folder (recreated).")
        ] = Path("demo_work"),
        report_dir: Annotated[Path, typer.Option("--report-dir", help="Report folder.")] = Path(
            "demo_report"
        ),
    ) -> None:
        """Run a whole federation on this machine: aggregator + site agents as processes."""
        from data_specs.errors import DataSpecError
        from deploy.demo import DemoConfig, run_demo
        from deploy.processes import LaunchError
        from deploy.researcher_client import ResearcherApiError
        from site_agent.errors import SiteAgentError

        cfg = DemoConfig(
            sites=sites,
            cases=cases,
            rounds=rounds,
            local_epochs=epochs,
            seed=seed,
            work_dir=work_dir,
            report_dir=report_dir,
        )
        try:
            run_demo(cfg)
        except (LaunchError, ResearcherApiError, DataSpecError, SiteAgentError) as exc:
            typer.echo(f"demo failed: {exc}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            typer.echo("demo interrupted; every process it started was stopped", err=True)
            raise typer.Exit(130) from None
