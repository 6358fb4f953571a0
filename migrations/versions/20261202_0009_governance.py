"""governance: definitions, runs, the audit trail; roles of people

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 17:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSONB = postgresql.JSONB(astext_type=sa.Text())


def upgrade() -> None:
    op.add_column("users", sa.Column("roles", JSONB, server_default="[]", nullable=False))
    op.create_table(
        "governance_workflows",
        sa.Column("id", sa.UUID(), primary_key=True),
        sa.Column("owner_id", sa.UUID(), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("steps", JSONB, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.UniqueConstraint("owner_id", "name", name="uq_governance_workflows_owner_name"),
    )
    op.create_index("ix_governance_workflows_owner_id", "governance_workflows", ["owner_id"])
    op.create_table(
        "governance_runs",
        sa.Column("id", sa.UUID(), primary_key=True),
        sa.Column(
            "definition_id",
            sa.UUID(),
            sa.ForeignKey("governance_workflows.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("server_id", sa.UUID(), sa.ForeignKey("servers.id", ondelete="CASCADE"), nullable=False),
        sa.Column("subject", sa.String(300), nullable=False),
        sa.Column("tier", sa.String(32), nullable=False),
        sa.Column("requester_id", sa.UUID(), sa.ForeignKey("users.id", ondelete="SET NULL"), nullable=True),
        sa.Column("workflow_id", sa.String(200), nullable=False, unique=True),
        sa.Column("steps", JSONB, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("current_step", sa.String(64), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_governance_runs_server_id", "governance_runs", ["server_id"])
    op.create_table(
        "governance_audit",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.UUID(), sa.ForeignKey("governance_runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("event_key", sa.String(200), nullable=True, unique=True),
        sa.Column("step", sa.String(64), nullable=True),
        sa.Column("actor", sa.String(320), nullable=True),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("accepted", sa.Boolean(), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    )
    op.create_index("ix_governance_audit_run_id", "governance_audit", ["run_id"])


def downgrade() -> None:
    op.drop_table("governance_audit")
    op.drop_table("governance_runs")
    op.drop_table("governance_workflows")
    op.drop_column("users", "roles")
