"""Promotion tracks, promotions and rejected digests."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from core.promotion import STAGE_NAME
from core.promotion import Stage as PromotionStage


class TrackCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    stages: list[PromotionStage] = Field(min_length=1, max_length=10, description="In order, e.g. dev, staging, prod")


class TrackPublic(BaseModel):
    id: uuid.UUID
    name: str
    stages: list[dict[str, Any]]
    held: list[str] = Field(description="Stages whose auto-promotion is held")
    current: dict[str, str | None] = Field(description="The digest each stage runs now (None: none yet)")
    created_at: datetime


class PromotionSchedule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    track_id: uuid.UUID
    stage: str = Field(pattern=STAGE_NAME)
    deployment_id: uuid.UUID | None = Field(
        default=None, description="The deployment whose artifact is promoted (one of your servers')"
    )
    subject: str | None = Field(
        default=None,
        max_length=300,
        description="Or the digest (package@version) itself, as it was promoted into an earlier stage",
    )


class PromotionPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    track_id: uuid.UUID
    stage: str
    stage_index: int
    subject: str
    kind: str = Field(description="manual | auto | rollback")
    status: str = Field(
        description="scheduled | in_progress | awaiting_approval | approved | active | superseded | rolled_back | "
        "rejected | failed | aborted"
    )
    step: str | None = Field(description="queued | order | soak | verification | governance | window | deploy | done")
    origin_deployment_id: uuid.UUID | None
    requester_id: uuid.UUID | None
    workflow_id: str
    evaluation_run_id: uuid.UUID | None
    governance_run_id: uuid.UUID | None
    deployments: dict[str, Any] = Field(description="Server id -> the deployment this promotion made there")
    notes: list[str]
    reason: str | None
    created_at: datetime
    started_at: datetime | None
    activated_at: datetime | None
    finished_at: datetime | None


class DigestRejection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    subject: str = Field(min_length=1, max_length=300, description="The digest (or package@version) to reject")
    reason: str = Field(default="", max_length=2000)


class DigestRejectionPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    subject: str
    reason: str
    rejected_by: str | None
    created_at: datetime
