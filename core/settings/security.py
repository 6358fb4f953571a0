"""Who may sign in and how secrets are kept: session tokens, the keys sealing secrets at rest, Vault
(or OpenBao) for server secrets, and the abuse limits of the account endpoints."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings

from core.crypto import EnvCipher, split_keys


class SecuritySettings(BaseSettings):
    """Session tokens, sealing keys, Vault, and login limits."""

    jwt_secret: SecretStr = Field(description="HMAC key for session tokens; at least 32 characters.")
    secrets_key: SecretStr = Field(
        description="Key(s) sealing server config env at rest: comma-separated, 32+ characters each; first seals."
    )
    jwt_ttl_seconds: int = Field(default=8 * 3600, ge=60)
    jwt_issuer: str = "mcphost"
    jwt_audience: str = "mcphost-api"

    # Abuse limits of the account endpoints.
    login_rate_per_minute: int = Field(default=10, ge=1, description="Login/register attempts per address a minute.")
    login_account_rate_per_minute: int = Field(
        default=5, ge=1, description="Failed logins per account from one address a minute."
    )
    login_account_ceiling_per_minute: int | None = Field(
        default=None,
        ge=1,
        description="Failed logins per account from all addresses together a minute; past it the account is "
        "refused from everywhere for the rest of that minute. Unset: 10 x LOGIN_ACCOUNT_RATE_PER_MINUTE.",
    )

    # Vault (or OpenBao): where server secrets are kept when VAULT_ADDR and VAULT_TOKEN are set.
    vault_addr: str | None = Field(
        default=None, description="Vault (or OpenBao) address; with VAULT_TOKEN, server secrets are kept in KV v2."
    )
    vault_token: SecretStr | None = None
    vault_mount: str = Field(default="secret", min_length=1, description="The KV v2 mount server secrets go to.")
    vault_prefix: str = Field(
        default="mcphost", min_length=1, description="Path under the mount: <prefix>/<server id>/<name>."
    )
    vault_cacert: Path | None = Field(default=None, description="CA bundle to verify Vault's TLS certificate.")

    @field_validator("jwt_secret")
    @classmethod
    def _strong_secret(cls, value: SecretStr) -> SecretStr:
        raw = value.get_secret_value()
        if len(raw) < 32:
            raise ValueError("JWT_SECRET must be at least 32 characters (try: openssl rand -hex 32)")
        if raw.lower() in {"changeme" * 4, "secret" * 6}:
            raise ValueError("JWT_SECRET is a well-known default; generate a random one")
        return value

    @field_validator("secrets_key")
    @classmethod
    def _strong_keys(cls, value: SecretStr) -> SecretStr:
        keys = [k.strip() for k in value.get_secret_value().split(",") if k.strip()]
        if not keys or any(len(k) < 32 for k in keys):
            raise ValueError("SECRETS_KEY needs keys of at least 32 characters (try: openssl rand -hex 32)")
        return value

    @field_validator("vault_addr")
    @classmethod
    def _vault_addr(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"https?://[^\s/]+/?", value.strip()):
            raise ValueError("VAULT_ADDR must be an http(s) address such as https://vault.example:8200")
        return value.strip().rstrip("/") if value else None

    @model_validator(mode="after")
    def _login_ceiling(self) -> Self:
        # At or below the per-address limit, one address's failures would shut the account for everyone.
        ceiling = self.login_account_ceiling_per_minute
        if ceiling is not None and ceiling <= self.login_account_rate_per_minute:
            raise ValueError(
                "LOGIN_ACCOUNT_CEILING_PER_MINUTE must be above LOGIN_ACCOUNT_RATE_PER_MINUTE (failures from one "
                "address), or one address could lock an account out for everyone"
            )
        return self

    @model_validator(mode="after")
    def _vault_pair(self) -> Self:
        if bool(self.vault_addr) != (self.vault_token is not None):
            raise ValueError("set VAULT_ADDR and VAULT_TOKEN together (or neither: secrets are sealed in Postgres)")
        return self

    def env_cipher(self) -> EnvCipher:
        return EnvCipher(split_keys(self.secrets_key.get_secret_value()))

    @property
    def login_account_ceiling(self) -> int:
        return self.login_account_ceiling_per_minute or 10 * self.login_account_rate_per_minute
