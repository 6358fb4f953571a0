"""webhooks: delivery records; deployments keep what their health check found

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 01:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("deployments", sa.Column("capabilities", postgresql.JSONB(astext_type=sa.Text()), nullable=True))
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.UUID(), primary_key=True),
        sa.Column("server_id", sa.UUID(), sa.ForeignKey("servers.id", ondelete="CASCADE"), nullable=False),
        sa.Column("provider", sa.String(16), nullable=False),
        sa.Column("delivery_id", sa.String(200), nullable=True),
        sa.Column("event", sa.String(64), nullable=True),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("ref", sa.String(255), nullable=True),
        sa.Column("revision", sa.String(64), nullable=True),
        sa.Column("deployment_id", sa.UUID(), sa.ForeignKey("deployments.id", ondelete="SET NULL"), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    )
    op.create_index(
        "uq_webhook_deliveries_accepted",
        "webhook_deliveries",
        ["server_id", "provider", "delivery_id"],
        unique=True,
        postgresql_where=sa.text("outcome = 'accepted' AND delivery_id IS NOT NULL"),
    )
    op.create_index("ix_webhook_deliveries_server_created", "webhook_deliveries", ["server_id", "created_at"])


def downgrade() -> None:
    op.drop_table("webhook_deliveries")
    op.drop_column("deployments", "capabilities")
