"""Deciding what may run and where: policy decisions, governance definitions with their runs and
audit, and promotion tracks with their promotions and rejected digests."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from core.models.base import Base, now_column


class PolicyDecision(Base):
    """Every decision of the policy engine (core.policy), with the facts it was made from."""

    __tablename__ = "runtime_policy_decisions"
    __table_args__ = (Index("ix_runtime_policy_decisions_server_created", "server_id", "created_at"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    server_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("servers.id", ondelete="CASCADE"))
    deployment_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"))
    # One decision per deployment: a retried activity finds it instead of deciding twice.
    decision_key: Mapped[str] = mapped_column(String(200), unique=True)
    subject: Mapped[str | None] = mapped_column(String(300))
    allowed: Mapped[bool] = mapped_column(Boolean)
    backend: Mapped[str] = mapped_column(String(32))
    notes: Mapped[list[str]] = mapped_column(JSONB)
    facts: Mapped[dict[str, Any]] = mapped_column()
    created_at: Mapped[datetime] = now_column()


class GovernanceDefinition(Base):
    """A reusable list of governance steps (core.governance.Definition)."""

    __tablename__ = "governance_workflows"
    __table_args__ = (UniqueConstraint("owner_id", "name", name="uq_governance_workflows_owner_name"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    steps: Mapped[dict[str, Any]] = mapped_column()  # {"steps": [...]}
    created_at: Mapped[datetime] = now_column()


class GovernanceRun(Base):
    """One run of a definition for an artifact and tier (GovernanceRunWorkflow, id `governance-<run>`)."""

    __tablename__ = "governance_runs"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    definition_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("governance_workflows.id", ondelete="CASCADE"))
    server_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("servers.id", ondelete="CASCADE"), index=True)
    subject: Mapped[str] = mapped_column(String(300))
    tier: Mapped[str] = mapped_column(String(32))
    requester_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    workflow_id: Mapped[str] = mapped_column(String(200), unique=True)
    steps: Mapped[dict[str, Any]] = mapped_column()  # the definition's steps as they were at the start
    # running | approved | rejected | cancelled
    status: Mapped[str] = mapped_column(String(16), default="running")
    current_step: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = now_column()
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class GovernanceAudit(Base):
    """Who did what on a governance run, when, with what comment; refused attempts included."""

    __tablename__ = "governance_audit"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("governance_runs.id", ondelete="CASCADE"), index=True)
    # Unique per event of the workflow, so a retried record writes nothing twice; NULL for API records.
    event_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    step: Mapped[str | None] = mapped_column(String(64))
    actor: Mapped[str | None] = mapped_column(String(320))  # email, or None for the platform
    # step_started | approve | reject | refused | escalated | expired | check | step_ended | run_ended
    action: Mapped[str] = mapped_column(String(32))
    accepted: Mapped[bool] = mapped_column(Boolean, default=True)
    comment: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = now_column()


class PromotionTrack(Base):
    """An ordered list of stages a digest is promoted through (core.promotion.TrackSpec)."""

    __tablename__ = "promotion_tracks"
    __table_args__ = (UniqueConstraint("owner_id", "name", name="uq_promotion_tracks_owner_name"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    stages: Mapped[dict[str, Any]] = mapped_column()  # {"stages": [...]}
    # Stages whose auto-promotion an operator has held.
    held: Mapped[list[str]] = mapped_column(JSONB, default=list, server_default="[]")
    created_at: Mapped[datetime] = now_column()


class Promotion(Base):
    """One digest into one stage of a track (PromotionWorkflow, id `promotion-<id>`)."""

    __tablename__ = "promotions"
    __table_args__ = (
        Index("ix_promotions_track_stage_created", "track_id", "stage", "created_at"),
        # One open promotion of a digest into a stage: asking again (or auto-promotion) finds it.
        Index(
            "uq_promotions_open",
            "track_id",
            "stage",
            "subject",
            unique=True,
            postgresql_where=text("status IN ('scheduled', 'in_progress', 'awaiting_approval', 'approved')"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    track_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("promotion_tracks.id", ondelete="CASCADE"))
    stage: Mapped[str] = mapped_column(String(32))
    stage_index: Mapped[int] = mapped_column(Integer)
    subject: Mapped[str] = mapped_column(String(300))  # the digest (or package@version) promoted
    kind: Mapped[str] = mapped_column(String(16), default="manual")  # manual | auto | rollback
    # scheduled | in_progress | awaiting_approval | approved | active | superseded | rolled_back | rejected |
    # failed | aborted (core.promotion)
    status: Mapped[str] = mapped_column(String(24), default="scheduled")
    step: Mapped[str | None] = mapped_column(String(32))  # queued | order | soak | verification | ...
    # The deployment whose artifact is promoted: each stage server deploys exactly that artifact.
    origin_deployment_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("deployments.id", ondelete="SET NULL"))
    requester_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    workflow_id: Mapped[str] = mapped_column(String(200), unique=True)
    evaluation_run_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("eval_runs.id", ondelete="SET NULL"))
    governance_run_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("governance_runs.id", ondelete="SET NULL"))
    deployments: Mapped[dict[str, Any]] = mapped_column(default=dict)  # {server id: deployment id}
    notes: Mapped[list[str]] = mapped_column(JSONB, default=list, server_default="[]")
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = now_column()
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    activated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class PromotionRejection(Base):
    """A digest an operator rejected on a track: never promoted there again (automatically or not)."""

    __tablename__ = "promotion_rejections"
    __table_args__ = (UniqueConstraint("track_id", "subject", name="uq_promotion_rejections_subject"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    track_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("promotion_tracks.id", ondelete="CASCADE"))
    subject: Mapped[str] = mapped_column(String(300))
    reason: Mapped[str] = mapped_column(Text, default="")
    rejected_by: Mapped[str | None] = mapped_column(String(320))
    created_at: Mapped[datetime] = now_column()
