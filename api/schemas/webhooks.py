"""Redeploy webhooks and their deliveries."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class WebhookRedeploy(BaseModel):
    """Optional body of the generic webhook: what to deploy. Empty: the server's source as configured."""

    model_config = ConfigDict(extra="forbid")

    ref: str | None = Field(
        default=None,
        max_length=255,
        description="Git servers: a branch or tag (or refs/heads/...) to deploy the head of",
    )
    revision: str | None = Field(
        default=None, pattern=r"^[0-9a-f]{40}$", description="Git servers: the exact commit to deploy (40 hex digits)"
    )


class WebhookOutcome(BaseModel):
    outcome: str = Field(description="accepted (a deployment runs), ignored (nothing to do, and why) or rejected")
    reason: str
    delivery_id: str | None = None
    deployment_id: uuid.UUID | None = None
    workflow_id: str | None = None
    revision: str | None = None


class WebhookDeliveryPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    provider: str
    delivery_id: str | None
    event: str | None
    outcome: str
    reason: str
    status_code: int
    ref: str | None
    revision: str | None
    deployment_id: uuid.UUID | None
    created_at: datetime
