"""Governance definitions and runs."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from api.schemas.common import TIER_PATTERN
from core.governance import Step as GovernanceStep


class GovernanceDefinitionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._:@-]*$")
    steps: list[GovernanceStep] = Field(min_length=1, max_length=20)


class GovernanceDefinitionPublic(BaseModel):
    id: uuid.UUID
    name: str
    steps: list[dict[str, Any]]
    created_at: datetime


class GovernanceRunCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    server_id: uuid.UUID
    tier: str = Field(pattern=TIER_PATTERN, description="The tier the artifact is governed for")
    deployment_id: uuid.UUID | None = Field(
        default=None, description="The revision whose artifact is governed. Unset: the serving one"
    )
