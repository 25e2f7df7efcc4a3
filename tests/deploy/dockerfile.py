"""A small Dockerfile reader for the deploy tests: instructions, build targets, exec-form commands."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "deploy" / "Dockerfile"


@dataclass(frozen=True)
class Target:
    """One image of a multi-stage Dockerfile: its build ``--target`` stage."""

    path: Path
    stage: str

    @property
    def name(self) -> str:
        return f"{self.path.name}:{self.stage}"


DOCKERFILES = {
    "aggregator": Target(DOCKERFILE, "aggregator"),
    "site_agent": Target(DOCKERFILE, "site-agent"),
}


def instructions(path: Path | Target) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs of a Dockerfile, continuation lines joined.

    For a ``Target``: the instructions of its stage and of the stages it is built ``FROM``,
    oldest first (what the image inherits), without the ``FROM`` lines themselves.
    """
    if isinstance(path, Target):
        return _target_instructions(path)
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


def stages(path: Path) -> dict[str, tuple[str, list[tuple[str, str]]]]:
    """``{stage name: (FROM image, instructions)}`` of a multi-stage Dockerfile, in file order."""
    out: dict[str, tuple[str, list[tuple[str, str]]]] = {}
    current: list[tuple[str, str]] | None = None
    for word, args in instructions(path):
        if word == "FROM":
            parts = args.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else f"#{len(out)}"
            current = []
            out[name] = (parts[0], current)
        elif current is not None:
            current.append((word, args))
    return out


def _target_instructions(target: Target) -> list[tuple[str, str]]:
    found = stages(target.path)
    assert target.stage in found, f"{target.path.name} has no stage {target.stage}"
    chain: list[list[tuple[str, str]]] = []
    stage: str | None = target.stage
    while stage in found:
        parent, own = found[stage]
        chain.insert(0, own)
        stage = parent if parent in found else None
    return [pair for own in chain for pair in own]


def exec_form(args: str) -> list[str]:
    """The JSON (exec) form of ENTRYPOINT / CMD / HEALTHCHECK CMD; the shell form is refused."""
    assert args.startswith("["), f"expected the exec form [...], got {args!r}"
    return json.loads(args)


def last(path: Path | Target, word: str) -> str:
    found = [args for w, args in instructions(path) if w == word]
    assert found, f"{path.name} has no {word}"
    return found[-1]


def healthcheck_argv(path: Path | Target) -> list[str]:
    args = last(path, "HEALTHCHECK")
    return exec_form(args[args.index("CMD") + 3 :].strip())


def image_argv(path: Path | Target) -> list[str]:
    """What a container of this image runs with no override: ENTRYPOINT then CMD."""
    return exec_form(last(path, "ENTRYPOINT")) + exec_form(last(path, "CMD"))
