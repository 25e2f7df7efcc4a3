"""The ``fedseg`` console script: one command group per user.

``main`` is the console entry point. For ``fedseg <group> ...`` it imports only that group's
module, so ``fedseg site infer`` does not pay for the aggregator, the console or the launcher
before its first line of output. ``app`` (built on first access) is the whole command tree, for
``fedseg --help``, the top-level commands and tests.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import typer

# group name -> (module, attribute of its Typer app, help shown by ``fedseg --help``)
GROUPS: dict[str, tuple[str, str, str]] = {
    "data": ("data_specs.cli", "app", "Describe, check and synthesise datasets."),
    "aggregator": ("aggregator.cli", "app", "Run the federated aggregator service."),
    "site": ("site_agent.cli", "app", "Run a hospital's site agent, adapt and infer."),
    "deploy": ("deploy.tls", "deploy_app", "Deployment helpers: development TLS certificates."),
}


def _group(name: str) -> typer.Typer:
    module, attribute, _ = GROUPS[name]
    group: typer.Typer = getattr(importlib.import_module(module), attribute)
    return group


def build_app() -> typer.Typer:
    """The whole ``fedseg`` command tree: every group plus the top-level commands."""
    import typer

    from deploy.console.console_cli import register as register_console
    from deploy.launcher.launcher_cli import register as register_launcher

    root = typer.Typer(
        name="fedseg",
        help="Federated medical image segmentation with inside and outside personalisation.",
        no_args_is_help=True,
        add_completion=False,
    )
    for name, (_, _, help_text) in GROUPS.items():
        root.add_typer(_group(name), name=name, help=help_text)
    register_launcher(root)
    register_console(root)
    return root


def __getattr__(name: str) -> typer.Typer:
    if name == "app":
        built = build_app()
        globals()["app"] = built
        return built
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(argv: list[str] | None = None) -> None:
    """Run ``fedseg`` with ``argv`` (default: the process's arguments)."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args and args[0] in GROUPS:
        _group(args[0])(args=args[1:], prog_name=f"fedseg {args[0]}")
        return
    build_app()(args=args, prog_name="fedseg")


if __name__ == "__main__":
    main()
