"""policy: certifications bound to artifacts, what a server requires, every policy decision

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 16:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSONB = postgresql.JSONB(astext_type=sa.Text())


def upgrade() -> None:
    op.add_column("servers", sa.Column("required_certifications", JSONB, server_default="[]", nullable=False))
    op.add_column("eval_runs", sa.Column("certify", JSONB, nullable=True))
    op.add_column("eval_runs", sa.Column("subject", sa.String(300), nullable=True))
    op.create_table(
        "certifications",
        sa.Column("id", sa.UUID(), primary_key=True),
        sa.Column("server_id", sa.UUID(), sa.ForeignKey("servers.id", ondelete="CASCADE"), nullable=False),
        sa.Column("subject", sa.String(300), nullable=False),
        sa.Column(
            "artifact_id", sa.UUID(), sa.ForeignKey("build_artifact_runs.id", ondelete="SET NULL"), nullable=True
        ),
        sa.Column("tier", sa.String(32), nullable=False),
        sa.Column("requirement", sa.String(100), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column(
            "evaluation_run_id",
            sa.UUID(),
            sa.ForeignKey("eval_runs.id", ondelete="SET NULL"),
            nullable=True,
            unique=True,
        ),
        sa.Column("valid_days", sa.Float(), nullable=False),
        sa.Column("valid_from", sa.DateTime(timezone=True), nullable=True),
        sa.Column("valid_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_by", sa.UUID(), sa.ForeignKey("users.id", ondelete="SET NULL"), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    )
    op.create_index("ix_certifications_server_subject", "certifications", ["server_id", "subject"])
    op.create_table(
        "runtime_policy_decisions",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column("server_id", sa.UUID(), sa.ForeignKey("servers.id", ondelete="CASCADE"), nullable=False),
        sa.Column("deployment_id", sa.UUID(), sa.ForeignKey("deployments.id", ondelete="CASCADE"), nullable=True),
        sa.Column("decision_key", sa.String(200), nullable=False, unique=True),
        sa.Column("subject", sa.String(300), nullable=True),
        sa.Column("allowed", sa.Boolean(), nullable=False),
        sa.Column("backend", sa.String(32), nullable=False),
        sa.Column("notes", JSONB, nullable=False),
        sa.Column("facts", JSONB, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    )
    op.create_index(
        "ix_runtime_policy_decisions_server_created", "runtime_policy_decisions", ["server_id", "created_at"]
    )


def downgrade() -> None:
    op.drop_table("runtime_policy_decisions")
    op.drop_table("certifications")
    op.drop_column("eval_runs", "subject")
    op.drop_column("eval_runs", "certify")
    op.drop_column("servers", "required_certifications")
