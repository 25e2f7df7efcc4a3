"""A small Dockerfile reader for the deploy tests: instructions, exec-form commands."""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = {
    "aggregator": REPO / "deploy" / "aggregator.Dockerfile",
    "site_agent": REPO / "deploy" / "site_agent.Dockerfile",
}


def instructions(path: Path) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs of a Dockerfile, continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        pending += " " + line.removesuffix("\\") if line.endswith("\\") else " " + line
        if not line.endswith("\\"):
            word, _, rest = pending.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            pending = ""
    return out


def exec_form(args: str) -> list[str]:
    """The JSON (exec) form of ENTRYPOINT / CMD / HEALTHCHECK CMD; the shell form is refused."""
    assert args.startswith("["), f"expected the exec form [...], got {args!r}"
    return json.loads(args)


def last(path: Path, word: str) -> str:
    found = [args for w, args in instructions(path) if w == word]
    assert found, f"{path.name} has no {word}"
    return found[-1]


def healthcheck_argv(path: Path) -> list[str]:
    args = last(path, "HEALTHCHECK")
    return exec_form(args[args.index("CMD") + 3 :].strip())


def image_argv(path: Path) -> list[str]:
    """What a container of this image runs with no override: ENTRYPOINT then CMD."""
    return exec_form(last(path, "ENTRYPOINT")) + exec_form(last(path, "CMD"))
