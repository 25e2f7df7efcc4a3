"""Where the researchers' console finds the aggregator and its token: environment, then a 0600 file.

Tokens never come from the command line (they would land in shell history and ``ps``). The
config file is TOML, by default ``~/.config/fedseg/console.toml`` (or ``FEDSEG_CONSOLE_CONFIG``)::

    url = "https://fedseg.example.org:8443"
    token = "..."            # researcher token
    admin_token = "..."      # only for `fedseg researchers create`
    ca_bundle = "/etc/fedseg/ca.pem"

A file that holds a token and can be read by the group or by others is refused.
"""

from __future__ import annotations

import os
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path

ENV_URL = "FEDSEG_URL"
ENV_TOKEN = "FEDSEG_TOKEN"
ENV_ADMIN_TOKEN = "FEDSEG_ADMIN_TOKEN"
ENV_CA = "FEDSEG_CA_BUNDLE"
ENV_CONFIG = "FEDSEG_CONSOLE_CONFIG"
DEFAULT_URL = "http://127.0.0.1:8000"


class ConsoleConfigError(ValueError):
    """The console's configuration is missing, unreadable or unsafe; the message says which."""


@dataclass(frozen=True)
class ConsoleConfig:
    """Resolved connection settings of the console.

    Args:
        url: the aggregator's base URL. Example: ``"https://fedseg.example.org:8443"``.
        token: the researcher token, or None when none is configured.
        admin_token: the admin token, or None.
        ca_bundle: a CA file to trust for HTTPS, or None for the system's trust store.
    """

    url: str
    token: str | None
    admin_token: str | None
    ca_bundle: Path | None

    def require_token(self, *, admin: bool = False) -> str:
        """The researcher (or admin) token.

        Raises:
            ConsoleConfigError: none is configured.
        """
        token = self.admin_token if admin else self.token
        if not token:
            env = ENV_ADMIN_TOKEN if admin else ENV_TOKEN
            key = "admin_token" if admin else "token"
            raise ConsoleConfigError(
                f"no {'admin' if admin else 'researcher'} token: set {env} or put {key} = "
                f'"..." in {default_config_path()} (mode 0600)'
            )
        return token


def default_config_path() -> Path:
    """``$FEDSEG_CONSOLE_CONFIG`` or ``~/.config/fedseg/console.toml``."""
    env = os.environ.get(ENV_CONFIG)
    if env:
        return Path(env).expanduser()
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "fedseg" / "console.toml"


def _read_file(path: Path) -> dict[str, object]:
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConsoleConfigError(f"cannot read the console config {path}: {exc.strerror}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConsoleConfigError(f"{path} is not valid TOML: {exc}") from exc
    has_secret = any(k in data for k in ("token", "admin_token"))
    if has_secret and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConsoleConfigError(
            f"{path} holds a token but its mode is {stat.S_IMODE(mode):04o}: others can read it; "
            f"run: chmod 600 {path}"
        )
    unknown = sorted(set(data) - {"url", "token", "admin_token", "ca_bundle"})
    if unknown:
        raise ConsoleConfigError(f"{path}: unknown key(s) {', '.join(unknown)}")
    for key, value in data.items():
        if not isinstance(value, str):
            raise ConsoleConfigError(f"{path}: {key} must be a string, got {type(value).__name__}")
    return data


def load_config(path: Path | None = None, *, url: str | None = None) -> ConsoleConfig:
    """Resolve the console's settings: ``url`` argument, then environment, then the file.

    Args:
        path: the config file. Default ``default_config_path()`` (skipped when absent).
        url: the aggregator URL given on the command line. Default None.

    Raises:
        ConsoleConfigError: an explicitly named file is missing, or a file is unsafe or invalid.
    """
    explicit = path is not None or bool(os.environ.get(ENV_CONFIG))
    file = path or default_config_path()
    data: dict[str, object] = {}
    if file.exists() or explicit:
        data = _read_file(file)

    def pick(env: str, key: str) -> str | None:
        value = os.environ.get(env) or data.get(key)
        return str(value) if value else None

    ca = pick(ENV_CA, "ca_bundle")
    return ConsoleConfig(
        url=(url or pick(ENV_URL, "url") or DEFAULT_URL).rstrip("/"),
        token=pick(ENV_TOKEN, "token"),
        admin_token=pick(ENV_ADMIN_TOKEN, "admin_token"),
        ca_bundle=Path(ca).expanduser() if ca else None,
    )
