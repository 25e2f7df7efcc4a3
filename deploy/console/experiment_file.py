"""Experiment files (YAML or JSON) for the console: parsed, validated, errors shown at their lines."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from data_specs.researcher.experiments import ExperimentCreate


@dataclass(frozen=True)
class FileProblem:
    """One problem in an experiment file.

    Args:
        line: 1-based line it concerns, or None when it has no place in the file.
        field: dotted path of the field. Example: ``"train.lr"``.
        message: what is wrong.
        source: the text of that line (stripped of its end), or "".
    """

    line: int | None
    field: str
    message: str
    source: str = ""


class ExperimentFileError(ValueError):
    """An experiment file could not be read or is invalid; ``problems`` lists every one."""

    def __init__(self, path: Path, problems: list[FileProblem]) -> None:
        self.path = path
        self.problems = problems
        super().__init__(self.render())

    def render(self) -> str:
        """Every problem as ``file:line: field: message`` followed by the offending line."""
        out = [f"{self.path}: {len(self.problems)} problem(s)"]
        for p in self.problems:
            where = f"{self.path}:{p.line}" if p.line else str(self.path)
            out.append(f"{where}: {p.field + ': ' if p.field else ''}{p.message}")
            if p.source:
                out.append(f"    {p.line:>4} | {p.source}")
        return "\n".join(out)


def _node_at(root: yaml.Node | None, loc: tuple[Any, ...]) -> yaml.Node | None:
    """The deepest node along ``loc`` (a pydantic error location) in a composed YAML tree."""
    node = root
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = None
            for key, value in node.value:
                if key.value == str(part):
                    nxt = key if part == loc[-1] and isinstance(value, yaml.MappingNode) else value
                    break
            if nxt is None:
                return node
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                return node
            node = node.value[part]
        else:
            return node
    return node


def _key_node(root: yaml.Node | None, loc: tuple[Any, ...]) -> yaml.Node | None:
    """For an unknown field: the key node itself, so the error points at the stray key."""
    parent = _node_at(root, loc[:-1])
    if isinstance(parent, yaml.MappingNode):
        for key, _value in parent.value:
            if key.value == str(loc[-1]):
                return key  # type: ignore[no-any-return]
    return parent


def parse_experiment_text(text: str, path: Path) -> ExperimentCreate:
    """Parse and validate an experiment from the text of a YAML or JSON file.

    Args:
        text: the file's content.
        path: its name (the suffix ``.json`` selects strict JSON; anything else reads YAML).

    Raises:
        ExperimentFileError: a syntax error or failed validation, each problem with its line.
    """
    lines = text.splitlines()

    def src(line: int | None) -> str:
        return lines[line - 1].rstrip() if line and 0 < line <= len(lines) else ""

    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise ExperimentFileError(
            path, [FileProblem(exc.lineno, "", f"invalid JSON: {exc.msg}", src(exc.lineno))]
        ) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        reason = getattr(exc, "problem", None) or str(exc)
        raise ExperimentFileError(
            path, [FileProblem(line, "", f"invalid YAML: {reason}", src(line))]
        ) from exc
    if not isinstance(data, dict):
        raise ExperimentFileError(
            path, [FileProblem(1, "", f"expected a mapping of fields, got {type(data).__name__}")]
        )
    try:
        return ExperimentCreate.model_validate(data)
    except ValidationError as exc:
        try:
            root = yaml.compose(text)
        except yaml.YAMLError:
            root = None  # JSON that YAML cannot read (rare): problems without lines
        problems = []
        for err in exc.errors():
            loc = tuple(p for p in err["loc"])
            find = _key_node if err["type"] == "extra_forbidden" else _node_at
            node = find(root, loc) if root is not None else None
            line = node.start_mark.line + 1 if node is not None else None
            given = err.get("input")
            message = err["msg"]
            if err["type"] not in ("missing", "extra_forbidden") and not isinstance(
                given, dict | list
            ):
                message += f" (got {given!r})"
            field = ".".join(str(p) for p in loc)
            problems.append(FileProblem(line, field, message, src(line)))
        raise ExperimentFileError(path, problems) from exc


def load_experiment_file(path: Path) -> ExperimentCreate:
    """Read and validate an experiment file (``.yaml``/``.yml`` or ``.json``).

    Raises:
        ExperimentFileError: unreadable, not YAML/JSON, or invalid (every problem, with lines).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ExperimentFileError(path, [FileProblem(None, "", f"cannot read: {reason}")]) from exc
    return parse_experiment_text(text, path)
