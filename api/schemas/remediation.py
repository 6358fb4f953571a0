"""Remediation playbooks and runs."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class PlaybookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._:-]*$")
    steps: list[dict[str, Any]] = Field(
        min_length=1,
        max_length=20,
        description="In order; each has `name` and `kind`: restart | redeploy_previous | "
        "rotate_registry_credentials | resources (cpu, memory_mib) | http (url, method, expect_status, "
        "timeout_seconds) | notify (message) | wait (seconds)",
    )
    approval: dict[str, Any] | None = Field(
        default=None, description="An approval step (governance rules: roles/users, required, four-eyes, SLA)"
    )
    sla_seconds: float | None = Field(default=None, gt=0, le=90 * 24 * 3600)


class PlaybookPublic(BaseModel):
    id: uuid.UUID
    name: str
    steps: list[dict[str, Any]]
    approval: dict[str, Any] | None
    sla_seconds: float | None
    servers: list[uuid.UUID] = Field(description="Servers the playbook is bound to")
    created_at: datetime


class RemediationRunCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    server_id: uuid.UUID


class RemediationVoteBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    comment: str = Field(default="", max_length=2000)


class RemediationRunPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    playbook_id: uuid.UUID
    server_id: uuid.UUID
    trigger: str = Field(description="manual | degraded | untrusted")
    status: str = Field(description="awaiting_approval | running | succeeded | failed | rejected | cancelled")
    version: int = Field(description="Grows with every change; send it back as If-Match to change the run")
    workflow_id: str
    current_step: str | None
    results: list[dict[str, Any]] = Field(description="Each step's status, exit code, typed reason and detail")
    exit_code: int | None = Field(description="0 succeeded, 10 a step failed, 20 rejected, 30 cancelled")
    reason: str | None
    cancel_requested: bool
    sla_breached: bool
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


class RemediationArtifactPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    step: str | None
    kind: str
    content: str
    created_at: datetime
