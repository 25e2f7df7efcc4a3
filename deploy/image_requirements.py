"""What each container image installs, read from pyproject.toml (run by deploy/Dockerfile).

``python3 image_requirements.py aggregator`` prints ``[tool.fedseg.images] aggregator``: the
subset of the project's dependencies the aggregator imports (no torch, no MONAI). ``... site``
prints ``[tool.fedseg.images] site``: what the site agent imports (no server stack). Each printed line is a requirement for ``pip install -r``.
Standard library only: it runs with the base image's python before anything is installed.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

IMAGES = ("aggregator", "site")


class ImageRequirementsError(ValueError):
    """pyproject.toml lacks the list, or it names a package the project does not depend on."""


def _name(requirement: str) -> str:
    """The distribution name of a requirement, normalised (``uvicorn[standard]>=0.29`` -> uvicorn)."""
    head = requirement.split(";")[0]
    for sep in "[<>=!~ ":
        head = head.split(sep)[0]
    return head.strip().lower().replace("_", "-").replace(".", "-")


def requirements(pyproject: dict, image: str) -> list[str]:  # type: ignore[type-arg]
    """The requirement lines of ``image`` (``aggregator`` or ``site``).

    Args:
        pyproject: the parsed pyproject.toml.
        image: ``aggregator`` or ``site``; each names its list in ``[tool.fedseg.images]``.

    Raises:
        ImageRequirementsError: unknown image, missing list, or a name outside the project's
            dependencies (the pins must stay the project's own).
    """
    deps: list[str] = pyproject["project"]["dependencies"]
    if image not in IMAGES:
        raise ImageRequirementsError(f"expected one of {IMAGES}, got {image!r}")
    try:
        names: list[str] = pyproject["tool"]["fedseg"]["images"][image]
    except KeyError as exc:
        raise ImageRequirementsError(f"pyproject.toml has no [tool.fedseg.images] {image}") from exc
    by_name = {_name(d): d for d in deps}
    unknown = [n for n in names if _name(n) not in by_name]
    if unknown:
        raise ImageRequirementsError(
            f"[tool.fedseg.images] {image} names {unknown}, which are not project dependencies"
        )
    return [by_name[_name(n)] for n in names]


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(f"usage: image_requirements.py {{{'|'.join(IMAGES)}}}", file=sys.stderr)
        return 1
    here = Path(__file__).resolve().parent
    found = [p for p in (here / "pyproject.toml", here.parent / "pyproject.toml") if p.is_file()]
    try:
        if not found:
            raise ImageRequirementsError(f"no pyproject.toml next to {here} or above it")
        lines = requirements(tomllib.loads(found[0].read_text()), argv[0])
    except ImageRequirementsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
