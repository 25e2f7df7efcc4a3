"""A real PostgreSQL server for tests: Debian's binaries, ``initdb`` + ``pg_ctl`` in a temp folder.

It listens on a Unix socket in its own folder only (no TCP port), runs as the ``postgres`` user
when the tests run as root (``initdb`` refuses root), and is stopped with ``pg_ctl stop -m
immediate`` at the end. ``database_url`` hands each test a fresh database.
"""

from __future__ import annotations

import contextlib
import getpass
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from sqlalchemy.engine import make_url

PG_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)  # newest first
INSTALL_HINT = "apt-get install postgresql (.ci/run does)"


class PostgresUnavailable(RuntimeError):
    """PostgreSQL's binaries are missing or the server did not start (the tier skips)."""


def database_name(url: str) -> str:
    """The database a SQLAlchemy URL names."""
    return str(make_url(url).database)


def _binary(name: str) -> str:
    for folder in PG_DIRS:
        if (folder / name).is_file():
            return str(folder / name)
    found = shutil.which(name)
    if found is None:
        raise PostgresUnavailable(f"{name} not found; {INSTALL_HINT}")
    return found


class PostgresServer:
    """One throw-away cluster; ``start`` it, take ``database_url()``s, ``stop`` it.

    Args:
        durable: keep PostgreSQL's fsync (benchmarks); tests turn it off for speed. Default False.
    """

    def __init__(self, *, durable: bool = False) -> None:
        self.durable = durable
        self.root = Path(tempfile.mkdtemp(prefix="fedseg-pg-"))
        self.data = self.root / "data"
        self.socket_dir = self.root / "sock"
        self._user: str | None = None
        self._names = itertools.count()

    def _run(self, *cmd: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        if self._user is not None:
            cmd = ("runuser", "-u", self._user, "--", *cmd)
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)

    def start(self) -> PostgresServer:
        """``initdb`` and ``pg_ctl start``.

        Raises:
            PostgresUnavailable: binaries missing, or initdb / start failed (with their output).
        """
        initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
        self.socket_dir.mkdir()
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError as exc:
                raise PostgresUnavailable(f"no postgres user to run as; {INSTALL_HINT}") from exc
            self._user = "postgres"
            shutil.chown(self.root, "postgres")
            shutil.chown(self.socket_dir, "postgres")
            self.root.chmod(0o755)
        self.superuser = self._user or getpass.getuser()
        done = self._run(
            initdb, "-D", str(self.data), "-A", "trust", "-U", self.superuser, "-E", "UTF8"
        )
        if done.returncode != 0:
            raise PostgresUnavailable(f"initdb failed: {done.stderr.strip()[-400:]}")
        options = (
            f"-c listen_addresses='' -c unix_socket_directories='{self.socket_dir}' "
            "-c max_connections=300"
        )
        if not self.durable:
            options += " -c fsync=off -c full_page_writes=off"
        log = self.root / "server.log"
        done = self._run(pg_ctl, "-D", str(self.data), "-l", str(log), "-o", options, "-w", "start")
        if done.returncode != 0:
            text = log.read_text(errors="replace") if log.exists() else done.stderr
            raise PostgresUnavailable(f"pg_ctl start failed: {text.strip()[-400:]}")
        return self

    def execute(self, sql: str, database: str = "postgres") -> None:
        """Run one statement in autocommit (CREATE DATABASE and the like)."""
        import psycopg

        with psycopg.connect(
            host=str(self.socket_dir), user=self.superuser, dbname=database, autocommit=True
        ) as conn:
            conn.execute(sql.encode())

    def database_url(self) -> str:
        """A fresh, empty database's SQLAlchemy URL."""
        name = f"fedseg_{os.getpid()}_{next(self._names)}"
        self.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://{self.superuser}@/{name}?host={self.socket_dir}"

    def clone(self, url: str, suffix: str) -> str:
        """A copy of the database at ``url`` (``CREATE DATABASE ... TEMPLATE``); its URL."""
        parsed = make_url(url)
        name = f"{parsed.database}_{suffix}"
        self.execute(f'CREATE DATABASE "{name}" TEMPLATE "{parsed.database}"')
        return parsed.set(database=name).render_as_string(hide_password=False)

    def stop(self) -> None:
        """Stop the server at once and remove its folder."""
        with contextlib.suppress(Exception):
            if self.data.exists():
                self._run(_binary("pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
        shutil.rmtree(self.root, ignore_errors=True)
