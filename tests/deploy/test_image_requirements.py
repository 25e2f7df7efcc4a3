"""The lean aggregator image, without Docker: no torch on its import path, nothing missing from it.

The aggregator image installs only ``[tool.fedseg.images] aggregator`` (deploy/Dockerfile). A
subprocess imports every entry point that image runs, then creates and starts an experiment
through the API (tensor layout and initial weights included); torch and MONAI must stay
unimported, and every distribution it imported must come with the aggregator's requirements.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from deploy.image_requirements import ImageRequirementsError, requirements

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# Runs in a fresh interpreter: what `fedseg aggregator serve`, `fedseg deploy certs`, the compose
# bootstrap and the health check import, plus one experiment created and started in memory.
PROBE = r"""
import json, sys
from pathlib import Path
import importlib.metadata as md

import aggregator.api.app, aggregator.cli, deploy.cli
import deploy.entrypoints.bootstrap, deploy.entrypoints.healthcheck
from fastapi.testclient import TestClient
from aggregator.api.app import create_app
from aggregator.settings import AggregatorSettings

token = "admin-token-for-the-import-probe-0123"
# The data dir (argv[1]) outlives the app and its background thread; pytest removes it.
settings = AggregatorSettings(data_dir=Path(sys.argv[1]), admin_token=token, log_level="WARNING")
with TestClient(create_app(settings)) as client:
    admin = {"Authorization": f"Bearer {token}"}
    r = client.post("/api/v1/researchers", json={"name": "probe"}, headers=admin)
    rh = {"Authorization": f"Bearer {r.json()['token']}"}
    ids = []
    for name in ("a", "b"):
        site = client.post("/api/v1/sites", json={"name": name}, headers=rh).json()
        ids.append(site["id"])
        enroll = {"enrollment_token": site["enrollment_token"], "accept_experiments": ["*"]}
        got = client.post("/api/v1/sites/enroll", json=enroll)
        assert got.status_code == 200, got.text
    spec = {"spatial_dims": 2, "out_channels": 2, "channels": [4, 8], "strides": [2],
            "patch_size": [32, 32]}
    body = {"name": "probe", "spec": spec, "rounds": 1, "sites": ids, "min_sites": 2}
    made = client.post("/api/v1/experiments", json=body, headers=rh)
    assert made.status_code == 201, made.text
    started = client.post(f"/api/v1/experiments/{made.json()['id']}/start", headers=rh)
    assert started.status_code == 200, started.text

dists = md.packages_distributions()
used = sorted({d for m in list(sys.modules) for d in dists.get(m.split(".")[0], [])})
print(json.dumps({"modules": sorted(sys.modules), "dists": used}))
"""


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _closure(requirement_lines: list[str]) -> set[str]:
    """Normalised names of the distributions ``pip install`` of these lines brings in."""
    import importlib.metadata as md

    from packaging.requirements import Requirement

    names: set[str] = set()
    done: set[tuple[str, tuple[str, ...]]] = set()
    todo = [(Requirement(line), "") for line in requirement_lines]
    while todo:
        req, extra = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        key = (_norm(req.name), tuple(sorted(req.extras)))
        if key in done:
            continue
        done.add(key)
        names.add(key[0])
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            continue
        todo += [(Requirement(line), e) for line in dist.requires or [] for e in key[1] or ("",)]
    return names


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    data_dir = tmp_path_factory.mktemp("probe")
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(data_dir)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # a subprocess, a real server or real training
def test_the_aggregator_never_imports_torch_or_monai(probe: dict[str, list[str]]) -> None:
    heavy = {"torch", "monai", "nibabel", "SimpleITK", "scipy", "matplotlib", "tensorboard"}
    assert heavy & {m.split(".")[0] for m in probe["modules"]} == set()


@pytest.mark.slow  # a subprocess, a real server or real training
def test_the_aggregator_image_has_everything_the_aggregator_imports(
    probe: dict[str, list[str]],
) -> None:
    have = _closure(requirements(PYPROJECT, "aggregator")) | {"fedseg"}
    # Imported only when present (optional integrations), never needed by the aggregator.
    # sniffio: httpx and anyio import it when installed (the test venv has it through
    # schemathesis), and work without it.
    optional = {"opentelemetry-api", "setuptools", "sniffio"}
    missing = {_norm(d) for d in probe["dists"]} - have - optional
    assert missing == set(), (
        f"the aggregator imports {sorted(missing)}, which the aggregator image lacks: add them to "
        "[tool.fedseg.images] aggregator in pyproject.toml"
    )


def test_image_requirements_keep_the_project_pins() -> None:
    lines = requirements(PYPROJECT, "aggregator")
    deps = PYPROJECT["project"]["dependencies"]
    assert set(lines) <= set(deps) and not any(line.startswith("torch") for line in lines)
    site = requirements(PYPROJECT, "site")
    assert set(site) <= set(deps) and "torch==2.13.0" in site


# What the site image runs: the site agent, its libraries and the entry points it starts.
SITE_CODE = ("site_agent", "personalization", "data_specs", "deploy/entrypoints", "deploy/cli.py")
FIRST_PARTY = {"site_agent", "personalization", "data_specs", "aggregator", "deploy"}
# Imports in that code which the site image leaves out on purpose, and the only file making each.
NOT_IN_SITE_IMAGE = {
    # the aggregator's privacy budget (aggregator/privacy); the site never accounts
    "dp_accounting": "data_specs/privacy/accountant.py",
    # sample-level DP-SGD: the optional [dpsgd] extra, never in the image
    "opacus": "site_agent/training/variants/dp_sgd.py",
}


def _third_party_imports(paths: tuple[str, ...]) -> dict[str, set[str]]:
    """Top-level third-party modules imported anywhere in ``paths`` (lazy imports too)."""
    import ast

    found: dict[str, set[str]] = {}
    files = [
        f for p in paths for f in ([ROOT / p] if p.endswith(".py") else (ROOT / p).rglob("*.py"))
    ]
    for f in files:
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in FIRST_PARTY:
                    found.setdefault(top, set()).add(str(f.relative_to(ROOT)))
    return found


def test_the_site_image_has_everything_the_site_imports() -> None:
    import importlib.metadata as md

    imports = _third_party_imports(SITE_CODE)
    for module, only_file in NOT_IN_SITE_IMAGE.items():
        assert imports.pop(module, {only_file}) == {only_file}, (
            f"{module} spread beyond {only_file}"
        )
    have = _closure(requirements(PYPROJECT, "site"))
    dists = md.packages_distributions()
    missing = {
        module: sorted(files)
        for module, files in imports.items()
        if not {_norm(d) for d in dists.get(module, [module])} & have
    }
    assert missing == {}, (
        f"the site code imports {missing}, which the site image lacks: add them to "
        "[tool.fedseg.images] site in pyproject.toml"
    )


def test_the_site_image_leaves_out_the_server_stack() -> None:
    have = _closure(requirements(PYPROJECT, "site"))
    assert {"sqlalchemy", "alembic", "psycopg", "uvicorn", "fastapi", "matplotlib"} & have == set()
    assert {"simpleitk", "dp-accounting"} & have == set()


def test_image_requirements_refuse_names_outside_the_project() -> None:
    bad = {**PYPROJECT, "tool": {"fedseg": {"images": {"aggregator": ["numpy", "left-pad"]}}}}
    with pytest.raises(ImageRequirementsError, match="left-pad"):
        requirements(bad, "aggregator")
    with pytest.raises(ImageRequirementsError, match="expected one of"):
        requirements(PYPROJECT, "gpu")


def test_image_requirements_script_prints_pip_lines() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "image_requirements.py"), "aggregator"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0 and proc.stdout.splitlines() == requirements(
        PYPROJECT, "aggregator"
    )
    proc = subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "image_requirements.py")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1 and "usage" in proc.stderr
