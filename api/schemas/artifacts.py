"""Build artifacts and their platforms."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


class ArtifactPlatformPublic(BaseModel):
    platform: str
    image_id: str | None
    local_image: str | None
    manifest_digest: str | None
    build_seconds: float | None
    push_seconds: float | None
    pruned_at: datetime | None


class ArtifactPublic(BaseModel):
    id: uuid.UUID
    server_id: uuid.UUID
    deployment_id: uuid.UUID | None
    status: str = Field(description="building | built | pushed | failed")
    source_repo: str
    source_branch: str | None
    source_revision: str
    subdirectory: str | None
    recipe: dict[str, Any]
    local_image: str | None
    registry_image: str | None
    manifest_tag: str | None
    manifest_digest: str | None
    credential_outcomes: dict[str, Any]
    timings: dict[str, Any]
    error: str | None
    created_at: datetime
    finished_at: datetime | None
    platforms: list[ArtifactPlatformPublic]
