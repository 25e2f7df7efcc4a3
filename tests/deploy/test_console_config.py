"""The console's token: from the environment or a 0600 file, never readable by others."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.console.console_config import ConsoleConfigError, load_config


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("FEDSEG_URL", "FEDSEG_TOKEN", "FEDSEG_ADMIN_TOKEN", "FEDSEG_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("FEDSEG_CONSOLE_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))


def config_file(tmp_path: Path, text: str, mode: int) -> Path:
    path = tmp_path / "console.toml"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_a_private_file_gives_url_and_token(tmp_path: Path) -> None:
    path = config_file(tmp_path, 'url = "https://agg:8443/"\ntoken = "tok"\n', 0o600)
    config = load_config(path)
    assert config.url == "https://agg:8443" and config.require_token() == "tok"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_a_token_file_others_can_read_is_refused(tmp_path: Path, mode: int) -> None:
    path = config_file(tmp_path, 'token = "tok"\n', mode)
    with pytest.raises(ConsoleConfigError, match="chmod 600"):
        load_config(path)


def test_the_environment_wins_and_missing_tokens_say_where_to_put_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = config_file(tmp_path, 'url = "http://file"\ntoken = "from-file"\n', 0o600)
    monkeypatch.setenv("FEDSEG_TOKEN", "from-env")
    assert load_config(path).require_token() == "from-env"
    assert load_config(path, url="http://flag").url == "http://flag"
    monkeypatch.delenv("FEDSEG_TOKEN")
    bare = load_config()  # no file in XDG_CONFIG_HOME: defaults, no token
    assert bare.url == "http://127.0.0.1:8000"
    with pytest.raises(ConsoleConfigError, match="FEDSEG_TOKEN"):
        bare.require_token()
    with pytest.raises(ConsoleConfigError, match="FEDSEG_ADMIN_TOKEN"):
        bare.require_token(admin=True)


def test_bad_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConsoleConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml")
    with pytest.raises(ConsoleConfigError, match="not valid TOML"):
        load_config(config_file(tmp_path, "token = \n", 0o600))
    with pytest.raises(ConsoleConfigError, match="unknown key"):
        load_config(config_file(tmp_path, 'tokn = "x"\n', 0o600))
