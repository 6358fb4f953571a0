"""Build artifacts: one build of a source revision for a set of platforms, and each platform's image."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from core.models.base import Base, now_column


class BuildArtifactRun(Base):
    """One build of one source revision for a set of platforms, and where it was pushed.

    Unique by (server, build key): the build key is derived from repository, revision, subdirectory,
    platforms and registry, so a retried or repeated build of the same revision finds this row.
    """

    __tablename__ = "build_artifact_runs"
    __table_args__ = (UniqueConstraint("server_id", "build_key", name="uq_build_artifact_runs_key"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    server_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("servers.id", ondelete="CASCADE"), index=True)
    deployment_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("deployments.id", ondelete="SET NULL", use_alter=True), index=True
    )
    build_key: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="building")  # building | built | pushed | failed
    source_repo: Mapped[str] = mapped_column(Text)
    source_branch: Mapped[str | None] = mapped_column(String(255))
    source_revision: Mapped[str] = mapped_column(String(64))
    subdirectory: Mapped[str | None] = mapped_column(Text)
    recipe: Mapped[dict[str, Any]] = mapped_column(default=dict)  # kind, port, path, exposed, config schema
    local_image: Mapped[str | None] = mapped_column(Text)
    registry_image: Mapped[str | None] = mapped_column(Text)
    manifest_tag: Mapped[str | None] = mapped_column(String(128))
    manifest_digest: Mapped[str | None] = mapped_column(String(80))
    credential_outcomes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    timings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = now_column()
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class BuildArtifactPlatform(Base):
    __tablename__ = "build_artifact_platforms"
    __table_args__ = (UniqueConstraint("run_id", "platform", name="uq_build_artifact_platforms_platform"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("build_artifact_runs.id", ondelete="CASCADE"), index=True)
    platform: Mapped[str] = mapped_column(String(64))
    image_id: Mapped[str | None] = mapped_column(String(128))
    local_image: Mapped[str | None] = mapped_column(Text)
    manifest_digest: Mapped[str | None] = mapped_column(String(80))
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    build_seconds: Mapped[float | None] = mapped_column()
    push_seconds: Mapped[float | None] = mapped_column()
    pruned_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = now_column()
