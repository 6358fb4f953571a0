"""Where server secrets live: sealed in Postgres (Fernet, like config env) or in Vault KV v2.

A secret is a named value a server gets as an environment variable at launch. The API writes and
deletes values and never reads them back; only the worker reads them, at launch. With Vault
(`VAULT_ADDR` + `VAULT_TOKEN`), the value is written to `<VAULT_MOUNT>/<VAULT_PREFIX>/<server id>/<name>`
and the database keeps only that path and the KV version to read; otherwise the database keeps the
value sealed with SECRETS_KEY. A row remembers its backend, so secrets written before Vault was
configured keep working (`mcphost secrets reseal` does not move them).

hvac is synchronous: every call runs in a thread.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any

from core.crypto import EnvCipher

NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
MAX_VALUE_BYTES = 32768
MAX_SECRETS = 100
# Set by the platform or by the runtime itself: a secret may not replace them.
RESERVED = {"PORT", "HOME", "PATH", "HOSTNAME", "LD_PRELOAD", "LD_LIBRARY_PATH", "PYTHONPATH", "NODE_OPTIONS"}


def check_name(name: str) -> str:
    """A valid secret name, or ValueError saying what to fix."""
    if not NAME.match(name):
        raise ValueError(
            f"{name!r} is not a valid environment variable name: a letter or _, then letters, digits and _, "
            "at most 128 characters"
        )
    if name.upper() in RESERVED or name.upper().startswith("MCPHOST_"):
        raise ValueError(f"{name} is set by the platform or the runtime and cannot be a secret")
    return name


def check_value(value: str) -> str:
    if "\x00" in value:
        raise ValueError("a secret value cannot contain NUL bytes")
    if len(value.encode()) > MAX_VALUE_BYTES:
        raise ValueError(f"a secret value is at most {MAX_VALUE_BYTES // 1024} KiB")
    return value


class SecretStoreError(Exception):
    """The secret store cannot be reached or refused the request (the API answers 503)."""

    permanent = False


class SecretMissing(SecretStoreError):
    """The value is not where the row says (deleted outside the platform, or Vault is not configured)."""

    permanent = True


@dataclass(frozen=True)
class Written:
    backend: str  # sealed | vault
    sealed: str | None  # the sealed value (sealed backend)
    path: str | None  # the KV path under the mount (vault backend)
    version: int | None  # the KV version that holds this value (vault backend)


@dataclass(frozen=True)
class VaultConfig:
    addr: str
    token: str
    mount: str = "secret"
    prefix: str = "mcphost"
    verify: str | bool = True


class SecretStore:
    """Writes to the configured backend; reads and deletes through the backend a row names."""

    def __init__(self, cipher: EnvCipher, vault: VaultConfig | None = None) -> None:
        self.cipher = cipher
        self.vault = vault
        self._client: Any = None

    @property
    def backend(self) -> str:
        return "vault" if self.vault else "sealed"

    def _kv(self) -> tuple[Any, str]:
        """hvac's KV v2 client and the mount, or SecretMissing when Vault is not configured."""
        if self.vault is None:
            raise SecretMissing("this secret is kept in Vault, but VAULT_ADDR and VAULT_TOKEN are not set")
        if self._client is None:
            import hvac

            self._client = hvac.Client(
                url=self.vault.addr, token=self.vault.token, verify=self.vault.verify, timeout=10
            )
        return self._client.secrets.kv.v2, self.vault.mount

    async def write(self, server_id: str, name: str, value: str) -> Written:
        if self.vault is None:
            return Written("sealed", self.cipher.seal_text(value), None, None)
        kv, mount = self._kv()
        path = f"{self.vault.prefix.strip('/')}/{server_id}/{name}"

        def put() -> int:
            result = kv.create_or_update_secret(path=path, secret={"value": value}, mount_point=mount)
            return int(result["data"]["version"])

        return Written("vault", None, path, await self._call(put, "write"))

    async def read(self, backend: str, sealed: str | None, path: str | None, version: int | None) -> str:
        if backend == "sealed":
            assert sealed is not None
            return self.cipher.open_text(sealed)
        kv, mount = self._kv()

        def get() -> str:
            result = kv.read_secret_version(
                path=path, version=version, mount_point=mount, raise_on_deleted_version=True
            )
            return str(result["data"]["data"]["value"])

        return await self._call(get, "read")

    async def delete(self, backend: str, path: str | None) -> None:
        """Destroy every version of a Vault secret (sealed values go with their row). Missing is fine."""
        if backend != "vault" or path is None:
            return
        kv, mount = self._kv()
        await self._call(lambda: kv.delete_metadata_and_all_versions(path=path, mount_point=mount), "delete")

    async def _call(self, fn: Any, what: str) -> Any:
        import hvac.exceptions
        import requests

        try:
            return await asyncio.to_thread(fn)
        except hvac.exceptions.InvalidPath:
            if what == "delete":
                return None
            raise SecretMissing(
                "the secret's version is missing from Vault (deleted outside the platform?): set it again"
            ) from None
        except (hvac.exceptions.VaultError, requests.RequestException) as exc:
            # The message names the failure, never the value (hvac errors carry Vault's own text).
            raise SecretStoreError(f"Vault {what} failed: {type(exc).__name__}") from None


def store_from_settings(settings: Any) -> SecretStore:
    vault = None
    if settings.vault_addr and settings.vault_token is not None:
        vault = VaultConfig(
            addr=settings.vault_addr,
            token=settings.vault_token.get_secret_value(),
            mount=settings.vault_mount,
            prefix=settings.vault_prefix,
            verify=str(settings.vault_cacert) if settings.vault_cacert else True,
        )
    return SecretStore(settings.env_cipher(), vault)
