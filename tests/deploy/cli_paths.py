"""Resolve a container's command line to the typer command it runs, and check its options."""

from __future__ import annotations

import importlib
from typing import Any

import typer
from typer.testing import CliRunner


def _typer_app(argv: list[str]) -> tuple[typer.Typer, list[str]]:
    if argv[0] == "fedseg":
        from deploy.cli import app

        if argv[1:2] == ["deploy"] and not deploy_registered():
            # Until the root registers it (test_compose.py says so), check the sub-app itself.
            from deploy.tls import deploy_app

            return deploy_app, argv[2:]
        return app, argv[1:]
    if argv[:2] == ["python", "-m"]:
        module = importlib.import_module(argv[2])
        apps = [v for v in vars(module).values() if isinstance(v, typer.Typer)]
        assert len(apps) == 1, f"{argv[2]} should define exactly one typer app, found {len(apps)}"
        return apps[0], argv[3:]
    raise AssertionError(f"expected `fedseg ...` or `python -m ...`, got {argv}")


def deploy_registered() -> bool:
    """Whether the ``fedseg`` root has the ``deploy`` group (``deploy.tls.deploy_app``)."""
    from deploy.cli import app

    return "deploy" in getattr(typer.main.get_command(app), "commands", {})


def resolve(argv: list[str]) -> tuple[Any, list[str]]:
    """The command ``argv`` runs and the arguments left for it; its ``--help`` must exit 0.

    Args:
        argv: a container command line. Example: ``["fedseg", "site", "run", "--config", "f"]``.

    Returns:
        ``(click command, remaining arguments)``.
    """
    app, rest = _typer_app(argv)
    cmd: Any = typer.main.get_command(app)
    words: list[str] = []
    while getattr(cmd, "commands", None) is not None:
        assert rest, f"`{' '.join(argv)}` stops at a group; commands: {sorted(cmd.commands)}"
        word, rest = rest[0], rest[1:]
        assert word in cmd.commands, (
            f"`{cmd.name}` has no command {word!r}, only {sorted(cmd.commands)}"
        )
        cmd = cmd.commands[word]
        words.append(word)
    result = CliRunner().invoke(app, [*words, "--help"])
    assert result.exit_code == 0, result.output
    return cmd, rest


def check_options(cmd: Any, args: list[str]) -> None:
    """Every ``--option`` in ``args`` is an option of ``cmd``."""
    known = {opt for p in cmd.params for opt in (*p.opts, *p.secondary_opts)}
    given = {a.split("=", 1)[0] for a in args if a.startswith("--")}
    assert given <= known, (
        f"`{cmd.name}` has no option {sorted(given - known)}; it has {sorted(known)}"
    )
