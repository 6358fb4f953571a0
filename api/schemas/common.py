"""Bodies and helpers shared by several resources: lists, error bodies, certification requirements, log
lines and metric events, governance runs."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T")


class ListOf(BaseModel, Generic[T]):
    count: int
    data: list[T]


class Message(BaseModel):
    detail: str


class ValidationIssue(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorBody(BaseModel):
    """Every error response: what to fix, and a stable machine-readable code."""

    detail: str | list[ValidationIssue]
    code: str = Field(examples=["not_found", "invalid_input", "payload_too_large"])


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses a route returns, all with the error body."""
    return {status: {"model": ErrorBody} for status in statuses}


TIER_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,31}$"
REQUIREMENT_PATTERN = r"^[a-z0-9][a-z0-9_.:-]{0,99}$"


class CertificationRequirement(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tier: str = Field(pattern=TIER_PATTERN, description="e.g. gold; lower case letters, digits, _ . -")
    requirement: str = Field(default="default", pattern=REQUIREMENT_PATTERN, description="e.g. smoke, default")


class LogLine(BaseModel):
    source: Literal["platform", "runtime"]
    level: str
    message: str
    created_at: datetime | None = None
    deployment_id: uuid.UUID | None = None


class MetricEvent(BaseModel):
    id: int
    event: str
    details: dict[str, Any]
    created_at: datetime


class GovernanceVote(BaseModel):
    model_config = ConfigDict(extra="forbid")

    comment: str = Field(default="", max_length=2000)


class GovernanceAuditPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    step: str | None
    actor: str | None
    action: str = Field(
        description="step_started | approve | reject | refused | escalated | expired | check | run_ended"
    )
    accepted: bool = Field(description="False for an attempt that was refused (it never reached the workflow)")
    comment: str
    created_at: datetime


class GovernanceRunPublic(BaseModel):
    id: uuid.UUID
    definition_id: uuid.UUID
    server_id: uuid.UUID
    subject: str
    tier: str
    requester_id: uuid.UUID | None
    workflow_id: str
    status: str = Field(description="running | approved | rejected | cancelled")
    current_step: str | None
    reason: str | None
    created_at: datetime
    finished_at: datetime | None
    live: dict[str, Any] | None = Field(default=None, description="The workflow's own state, while it answers")
    audit: list[GovernanceAuditPublic] = Field(default_factory=list)
