"""Gateway keys."""

from __future__ import annotations

import re
import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator


class GatewayKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        min_length=1,
        max_length=100,
        json_schema_extra={"pattern": r"^(?!\s*default\s*$)\s*[A-Za-z0-9][A-Za-z0-9 ._@-]*$"},
        description="Unique among the server's live keys; letters, digits, space and . _ @ -; not 'default'",
    )
    expires_in_days: float | None = Field(default=None, gt=0, le=3650, description="Unset: never expires")
    tools: list[str] | None = Field(
        default=None,
        max_length=1000,
        json_schema_extra={
            "items": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": r"^[^\x00-\x1f]+$"}
        },
        description="Tool allowlist: the key sees only these in tools/list and may call only these. Unset: all.",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        value = value.strip()
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9 ._@-]{0,99}", value):
            raise ValueError("name: letters, digits, space and . _ @ - (starting with a letter or digit)")
        if value == "default":
            raise ValueError("'default' names the server's own key; choose another name")
        return value

    @field_validator("tools")
    @classmethod
    def _tools(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        for tool in value:
            if not tool or len(tool) > 200 or any(ord(c) < 32 for c in tool):
                raise ValueError("tool names are 1-200 printable characters")
        return sorted(set(value))


class GatewayKeyPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    prefix: str
    tools: list[str] | None
    expires_at: datetime | None
    created_at: datetime
    revoked_at: datetime | None


class GatewayKeyCreated(GatewayKeyPublic):
    api_key: str = Field(description="Shown only once: send it as Authorization: Bearer or X-API-Key")
