"""Server secrets. Values are write-only: never returned."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from core import secretstore

SECRET_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"


class SecretValue(BaseModel):
    model_config = ConfigDict(extra="forbid")

    value: str = Field(
        max_length=32768,
        json_schema_extra={"pattern": r"^[^\x00]*$"},
        description="Write-only: given to the server as an environment variable, never returned",
    )

    @field_validator("value")
    @classmethod
    def _value(cls, value: str) -> str:
        return secretstore.check_value(value)


class SecretCreate(SecretValue):
    name: str = Field(
        min_length=1,
        max_length=128,
        json_schema_extra={"pattern": SECRET_NAME_PATTERN},
        description="The environment variable name (letters, digits, _; not PORT, PATH, HOME or MCPHOST_*)",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return secretstore.check_name(value)


class SecretPublic(BaseModel):
    """A secret's metadata. Its value is never returned."""

    model_config = ConfigDict(from_attributes=True)

    name: str
    backend: Literal["sealed", "vault"] = Field(description="sealed: in Postgres; vault: in Vault KV v2")
    version: int = Field(description="1 when created, +1 on every rotation")
    vault_path: str | None = Field(description="Where in Vault KV v2 (under VAULT_MOUNT) the value is")
    vault_version: int | None = Field(description="The KV version the server gets at its next launch")
    created_at: datetime
    updated_at: datetime


class SecretEventPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    action: Literal["created", "rotated", "deleted", "injected"]
    version: int | None
    actor: str = Field(description="Who: a user's email, or 'worker' for a launch")
    deployment_id: uuid.UUID | None = Field(description="The deployment whose launch got the value (injected)")
    at: datetime
