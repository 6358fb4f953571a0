"""What a server secret may be called and hold, and the Vault settings that go together."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from core.secretstore import SecretStore, check_name, check_value
from core.settings import Settings

BASE = {"database_url": "postgresql://x/y", "jwt_secret": "j" * 40, "secrets_key": "k" * 40}


@pytest.mark.parametrize("name", ["TOKEN", "_x", "api_key_2", "A" * 128])
def test_environment_variable_names_are_accepted(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("2FA", "not a valid"),
        ("WITH-DASH", "not a valid"),
        ("A" * 129, "not a valid"),
        ("", "not a valid"),
        ("PORT", "set by the platform"),
        ("path", "set by the platform"),
        ("LD_PRELOAD", "set by the platform"),
        ("MCPHOST_BRIDGE_PATH", "set by the platform"),
    ],
)
def test_bad_or_reserved_names_say_why(name: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        check_name(name)


def test_values_are_text_without_nul_and_bounded() -> None:
    assert check_value("é" * 100) == "é" * 100
    with pytest.raises(ValueError, match="NUL"):
        check_value("a\x00b")
    with pytest.raises(ValueError, match="32 KiB"):
        check_value("é" * 20000)  # 40000 bytes


def test_vault_address_and_token_go_together() -> None:
    assert Settings.model_validate(BASE).vault_addr is None
    with pytest.raises(ValidationError, match="together"):
        Settings.model_validate({**BASE, "vault_addr": "http://127.0.0.1:8200"})
    with pytest.raises(ValidationError, match="http"):
        Settings.model_validate({**BASE, "vault_addr": "127.0.0.1:8200", "vault_token": "t"})
    both = Settings.model_validate({**BASE, "vault_addr": "https://vault.example:8200/", "vault_token": "t"})
    assert both.vault_addr == "https://vault.example:8200"


async def test_the_sealed_store_round_trips_and_never_holds_the_value_in_clear() -> None:
    store = SecretStore(Settings.model_validate(BASE).env_cipher())
    written = await store.write("server", "TOKEN", "hunter2")
    assert written.backend == "sealed" and written.sealed and "hunter2" not in written.sealed
    assert await store.read("sealed", written.sealed, None, None) == "hunter2"
    assert store.backend == "sealed"
