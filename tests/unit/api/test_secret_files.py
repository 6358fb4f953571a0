"""Files holding platform credentials are readable by their owner alone, however they were found."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli import client as cli
from cli.up import ensure_secret


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    # The most permissive umask a user could have: modes must not depend on it.
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def test_cli_token_file_is_0600_in_a_0700_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loose_umask: None
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    cli.save_config({"url": "http://127.0.0.1:3000", "token": "mcpt_secret"})
    path = tmp_path / "config" / "mcphost" / "config.json"
    assert cli.config_path() == path
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    assert cli.load_config()["token"] == "mcpt_secret"
    assert [p.name for p in path.parent.iterdir()] == ["config.json"]  # no temporary file left behind


def test_cli_token_file_found_with_loose_modes_is_tightened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loose_umask: None
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    directory = tmp_path / "mcphost"
    directory.mkdir(mode=0o755)
    path = directory / "config.json"
    path.write_text('{"token": "mcpt_old"}')
    path.chmod(0o644)

    assert cli.load_config()["token"] == "mcpt_old"
    assert mode(path) == 0o600

    path.chmod(0o666)
    cli.save_config({"token": "mcpt_new"})
    assert mode(path) == 0o600
    assert mode(directory) == 0o700
    assert cli.load_config() == {"token": "mcpt_new"}


def test_state_dir_key_files_are_0600(tmp_path: Path, loose_umask: None) -> None:
    first = ensure_secret(tmp_path, "jwt_secret")
    assert len(first) == 64
    assert mode(tmp_path / "jwt_secret") == 0o600
    assert ensure_secret(tmp_path, "jwt_secret") == first  # kept across restarts
    assert ensure_secret(tmp_path, "secrets_key") != first
    assert mode(tmp_path / "secrets_key") == 0o600


@pytest.mark.parametrize("found", [0o644, 0o640, 0o604, 0o666, 0o755])
def test_state_dir_key_files_found_with_loose_modes_are_fixed(tmp_path: Path, found: int) -> None:
    path = tmp_path / "secrets_key"
    path.write_text("k" * 64 + "\n")
    path.chmod(found)
    assert ensure_secret(tmp_path, "secrets_key") == "k" * 64
    assert mode(path) == 0o600
