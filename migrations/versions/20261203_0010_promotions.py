"""promotions: tracks of stages, promotions of a digest into a stage, rejected digests

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 12:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSONB = postgresql.JSONB(astext_type=sa.Text())
NOW = sa.func.now()


def upgrade() -> None:
    op.create_table(
        "promotion_tracks",
        sa.Column("id", sa.UUID(), primary_key=True),
        sa.Column("owner_id", sa.UUID(), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("stages", JSONB, nullable=False),
        sa.Column("held", JSONB, server_default="[]", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.UniqueConstraint("owner_id", "name", name="uq_promotion_tracks_owner_name"),
    )
    op.create_index("ix_promotion_tracks_owner_id", "promotion_tracks", ["owner_id"])
    op.create_table(
        "promotions",
        sa.Column("id", sa.UUID(), primary_key=True),
        sa.Column("track_id", sa.UUID(), sa.ForeignKey("promotion_tracks.id", ondelete="CASCADE"), nullable=False),
        sa.Column("stage", sa.String(32), nullable=False),
        sa.Column("stage_index", sa.Integer(), nullable=False),
        sa.Column("subject", sa.String(300), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("step", sa.String(32), nullable=True),
        sa.Column(
            "origin_deployment_id", sa.UUID(), sa.ForeignKey("deployments.id", ondelete="SET NULL"), nullable=True
        ),
        sa.Column("requester_id", sa.UUID(), sa.ForeignKey("users.id", ondelete="SET NULL"), nullable=True),
        sa.Column("workflow_id", sa.String(200), nullable=False, unique=True),
        sa.Column("evaluation_run_id", sa.UUID(), sa.ForeignKey("eval_runs.id", ondelete="SET NULL"), nullable=True),
        sa.Column(
            "governance_run_id", sa.UUID(), sa.ForeignKey("governance_runs.id", ondelete="SET NULL"), nullable=True
        ),
        sa.Column("deployments", JSONB, nullable=False),
        sa.Column("notes", JSONB, server_default="[]", nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("activated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_promotions_track_stage_created", "promotions", ["track_id", "stage", "created_at"])
    op.create_index(
        "uq_promotions_open",
        "promotions",
        ["track_id", "stage", "subject"],
        unique=True,
        postgresql_where=sa.text("status IN ('scheduled', 'in_progress', 'awaiting_approval', 'approved')"),
    )
    op.create_table(
        "promotion_rejections",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column("track_id", sa.UUID(), sa.ForeignKey("promotion_tracks.id", ondelete="CASCADE"), nullable=False),
        sa.Column("subject", sa.String(300), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("rejected_by", sa.String(320), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.UniqueConstraint("track_id", "subject", name="uq_promotion_rejections_subject"),
    )


def downgrade() -> None:
    op.drop_table("promotion_rejections")
    op.drop_index("uq_promotions_open", table_name="promotions")
    op.drop_index("ix_promotions_track_stage_created", table_name="promotions")
    op.drop_table("promotions")
    op.drop_index("ix_promotion_tracks_owner_id", table_name="promotion_tracks")
    op.drop_table("promotion_tracks")
