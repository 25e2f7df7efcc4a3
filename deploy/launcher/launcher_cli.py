"""``fedseg demo``, ``fedseg simulate`` and ``fedseg deploy`` commands."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from data_specs.constants import (
    InputFit,
    LrSchedule,
    OptimizerName,
    PersonalizationMethod,
    Precision,
)
from data_specs.sources.partition import PartitionScheme
from data_specs.strategy_params import StrategyName
from deploy.launcher.demo_config import DemoConfig

if TYPE_CHECKING:
    from data_specs.task_spec import TaskSpec


class SimBackend(StrEnum):
    """Where ``fedseg simulate`` runs its virtual sites."""

    INPROCESS = "inprocess"
    RAY = "ray"


_DEMO = DemoConfig()  # the demo's defaults, written once in DemoConfig


def simulation_spec(
    manifests: list[Path],
    *,
    dims: int,
    patch: int,
    classes: int | None = None,
    in_channels: int | None = None,
    fit: InputFit | None = None,
) -> TaskSpec:
    """The recipe's U-Net for ``fedseg simulate``: channels and classes from the first manifest
    unless given.

    Raises:
        ManifestError: the first manifest does not load.
    """
    from data_specs.manifests.manifest import load_manifest
    from data_specs.task_spec import TaskSpec

    first = load_manifest(manifests[0]) if manifests else None
    deep = dims == 2
    return TaskSpec(
        spatial_dims=2 if dims == 2 else 3,
        in_channels=in_channels or (first.num_channels if first else 1),
        out_channels=classes or (first.num_classes if first else 4),
        channels=(16, 32, 64, 128) if deep else (16, 32, 64),
        strides=(2, 2, 2) if deep else (2, 2),
        num_res_units=2,
        patch_size=(patch,) * dims,
        fit=fit or (InputFit.RESIZE if deep else InputFit.PATCH),
    )


def register(app: typer.Typer) -> None:
    """Attach the launcher commands to the root app."""

    @app.command("demo")
    def demo(
        sites: Annotated[
            int, typer.Option("--sites", min=2, max=8, help="Federated hospitals.")
        ] = _DEMO.sites,
        cases: Annotated[
            int, typer.Option("--cases", min=5, help="Cases per hospital.")
        ] = _DEMO.cases,
        rounds: Annotated[
            int, typer.Option("--rounds", min=1, help="Federated rounds.")
        ] = _DEMO.rounds,
        epochs: Annotated[
            int, typer.Option("--epochs", min=1, help="Local epochs per round.")
        ] = _DEMO.local_epochs,
        seed: Annotated[int, typer.Option("--seed")] = _DEMO.seed,
        work_dir: Annotated[
            Path, typer.Option("--work-dir", help="Scratch folder (recreated).")
        ] = _DEMO.work_dir,
        report_dir: Annotated[
            Path, typer.Option("--report-dir", help="Report folder.")
        ] = _DEMO.report_dir,
    ) -> None:
        """Run a whole federation on this machine: aggregator + site agents as processes."""
        from data_specs.errors import DataSpecError
        from deploy.console.researcher_client import ResearcherApiError
        from deploy.launcher.demo import run_demo
        from deploy.launcher.processes import LaunchError
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

    @app.command("simulate")
    def simulate(
        manifests: Annotated[list[Path], typer.Argument(help="Source dataset.json files.")],
        out: Annotated[Path, typer.Option("--out", help="Results folder (recreated).")] = Path(
            "runs/simulation"
        ),
        partition: Annotated[
            PartitionScheme, typer.Option("--partition", help="How cases go to virtual sites.")
        ] = PartitionScheme.NATURAL,
        sites: Annotated[
            int, typer.Option("--sites", min=1, help="Virtual sites (not for natural).")
        ] = 4,
        fraction: Annotated[
            float,
            typer.Option(
                "--fraction", "-C", min=0.01, max=1.0, help="Fraction of sites per round."
            ),
        ] = 1.0,
        epochs: Annotated[int, typer.Option("--epochs", "-E", min=1, help="Local epochs.")] = 1,
        batch_size: Annotated[
            int, typer.Option("--batch-size", "-B", min=1, help="Local batch size.")
        ] = 8,
        lr: Annotated[float, typer.Option("--lr", help="Learning rate.")] = 3e-3,
        optimizer: Annotated[
            OptimizerName, typer.Option("--optimizer", help="The local optimiser.")
        ] = OptimizerName.ADAM,
        rounds: Annotated[int, typer.Option("--rounds", min=1)] = 5,
        strategy: Annotated[
            StrategyName, typer.Option("--strategy", help="Server aggregation strategy.")
        ] = StrategyName.FEDAVG,
        personalization: Annotated[
            PersonalizationMethod,
            typer.Option("--personalization", help="Inside personalisation (none: FedAvg)."),
        ] = PersonalizationMethod.NONE,
        mu: Annotated[float, typer.Option("--mu", help="FedProx mu.")] = 0.0,
        patch: Annotated[
            int, typer.Option("--patch", help="Square patch size (2D) or cube (3D).")
        ] = 32,
        dims: Annotated[int, typer.Option("--dims", min=2, max=3)] = 2,
        classes: Annotated[
            int | None,
            typer.Option(
                "--classes", help="Classes including background (default: the manifest's)."
            ),
        ] = None,
        in_channels: Annotated[
            int | None,
            typer.Option("--in-channels", min=1, help="Image channels (default: the manifest's)."),
        ] = None,
        seed: Annotated[int, typer.Option("--seed")] = 0,
        fit: Annotated[
            InputFit | None,
            typer.Option(
                "--fit",
                help="resize (whole slices resized to the patch; 2D default) or patch "
                "(random patches, sliding-window inference; 3D default).",
            ),
        ] = None,
        lr_schedule: Annotated[
            LrSchedule, typer.Option("--lr-schedule", help="poly (default) or constant.")
        ] = LrSchedule.POLY,
        precision: Annotated[
            Precision, typer.Option("--precision", help="auto (bf16 where supported), fp32, bf16.")
        ] = Precision.AUTO,
        deep_supervision: Annotated[
            int,
            typer.Option(
                "--deep-supervision",
                min=0,
                max=6,
                help="Auxiliary losses on this many lower decoder levels (0 = off).",
            ),
        ] = 0,
        backend: Annotated[
            SimBackend,
            typer.Option(
                "--backend", help="inprocess (sites in turn) or ray (a Ray actor per site)."
            ),
        ] = SimBackend.INPROCESS,
        address: Annotated[
            str | None,
            typer.Option(
                "--address", help="Ray: auto (a `ray start` cluster) or ray://head:10001."
            ),
        ] = None,
        cpus_per_site: Annotated[
            float, typer.Option("--cpus-per-site", min=0.0, help="Ray: CPUs per site.")
        ] = 1.0,
        gpus_per_site: Annotated[
            float, typer.Option("--gpus-per-site", min=0.0, help="Ray: GPUs per site.")
        ] = 0.0,
    ) -> None:
        """Run one federated experiment in-process through the real aggregator and agent code.

        The default network is the recipe's: a U-Net 16-32-64-128 with two residual units per
        level (16-32-64 in 3D), trained with a poly learning-rate schedule over all rounds, the
        optimiser's state kept on each site between rounds, and bf16 autocast where the CPU or
        GPU supports it.
        """
        from pydantic import ValidationError

        from data_specs.errors import DataSpecError
        from deploy.console.researcher_client import ResearcherApiError
        from deploy.launcher.processes import LaunchError
        from deploy.launcher.ray_backend import RayOptions
        from deploy.launcher.simulation import SimulationConfig, run_simulation
        from site_agent.errors import SiteAgentError

        try:
            spec = simulation_spec(
                manifests,
                dims=dims,
                patch=patch,
                classes=classes,
                in_channels=in_channels,
                fit=fit,
            )
            cfg = SimulationConfig(
                manifests=manifests,
                out_dir=out,
                spec=spec,
                partition=partition,
                num_sites=sites,
                fraction=fraction,
                local_epochs=epochs,
                batch_size=batch_size,
                lr=lr,
                optimizer=optimizer,
                rounds=rounds,
                strategy=strategy,
                personalization=personalization,
                fedprox_mu=mu,
                seed=seed,
                train_overrides={
                    "lr_schedule": lr_schedule,
                    "precision": precision,
                    "persist_optimizer": True,
                    "deep_supervision": deep_supervision,
                },
            )
            if backend == SimBackend.RAY:
                cfg.backend = "ray"
                cfg.ray = RayOptions(
                    address=address, cpus_per_site=cpus_per_site, gpus_per_site=gpus_per_site
                )
            elif address is not None:
                raise ValueError("--address needs --backend ray")
            result = run_simulation(cfg)
        except (
            LaunchError,
            ValidationError,
            ValueError,
            DataSpecError,
            SiteAgentError,
            ResearcherApiError,
        ) as exc:
            typer.echo(f"simulation failed: {exc}", err=True)
            raise typer.Exit(1) from None
        typer.echo(f"{result.status} in {result.seconds:.0f} s; results in {result.out_dir}")
        for site, row in result.final_dice.items():
            typer.echo(
                f"  {site}: "
                + ", ".join(f"{k} Dice {v:.3f}" for k, v in row.items() if v is not None)
            )
        if result.status != "completed":  # a failed experiment is a failed command
            typer.echo(f"simulation {result.status}; see {result.out_dir}", err=True)
            raise typer.Exit(1)
