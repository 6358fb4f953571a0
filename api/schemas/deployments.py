"""Deployments, their steps, and rollbacks."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class RollbackToDeployment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    deployment_id: uuid.UUID = Field(description="The deployment to return to")


class RollbackToRevision(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seq: int = Field(ge=1, description="The revision number (as in `deployments`) to return to")


class RollbackToPrevious(BaseModel):
    """No target named: the newest earlier revision that served."""

    model_config = ConfigDict(extra="forbid")


RollbackRequest = RollbackToDeployment | RollbackToRevision | RollbackToPrevious


class RollbackAccepted(BaseModel):
    deployment_id: uuid.UUID
    workflow_id: str
    status: str
    seq: int
    rolled_back_to: int = Field(description="Revision number whose source and config this deployment runs again")


class DeploymentAccepted(BaseModel):
    deployment_id: uuid.UUID
    workflow_id: str
    status: str
    seq: int


class StepPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    step: str
    status: str
    message: str | None
    attempts: int
    started_at: datetime
    finished_at: datetime | None


class LiveProgress(BaseModel):
    step: str | None
    status: str


class DeploymentPublic(BaseModel):
    id: uuid.UUID
    server_id: uuid.UUID
    seq: int
    workflow_id: str
    status: str
    step: str | None
    runtime: str | None
    error: str | None
    created_at: datetime
    finished_at: datetime | None
    revision: str | None = Field(default=None, description="Git sources: the commit this deployment built")
    image_ref: str | None = Field(default=None, description="Git sources: the image it runs (registry digest)")
    image_digest: str | None = None
    artifact_id: uuid.UUID | None = None


class DeploymentDetail(DeploymentPublic):
    steps: list[StepPublic]
    settled: bool = Field(
        default=False,
        description="The deployment has ended and every step it began is finished. A deployment is `running` "
        "as soon as its revision serves; retiring the earlier revision finishes a moment later.",
    )
    live: LiveProgress | None = Field(default=None, description="The workflow's own view, when it answers")
