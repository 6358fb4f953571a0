"""webhooks: delivery records; deployments keep what their health check found; change notifications

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

    # Every change of a server's status, and every new log line or telemetry event, is announced on one
    # channel, whoever writes it (API, workers, migrations): the live streams of any API process follow it.
    op.execute(NOTIFY_FUNCTION)
    for table, events in (
        ("servers", "INSERT OR UPDATE OR DELETE"),
        ("server_logs", "INSERT"),
        ("usage_metrics", "INSERT"),
    ):
        op.execute(
            f"CREATE TRIGGER {table}_notify AFTER {events} ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION mcphost_notify_server()"
        )


NOTIFY_FUNCTION = """
CREATE OR REPLACE FUNCTION mcphost_notify_server() RETURNS trigger AS $$
BEGIN
  IF TG_TABLE_NAME = 'servers' THEN
    IF TG_OP = 'DELETE' THEN
      PERFORM pg_notify('mcphost_servers', json_build_object(
        'kind', 'status', 'id', OLD.id, 'owner_id', OLD.owner_id, 'status', 'deleted')::text);
      RETURN OLD;
    END IF;
    IF TG_OP = 'INSERT' OR NEW.status IS DISTINCT FROM OLD.status THEN
      PERFORM pg_notify('mcphost_servers', json_build_object(
        'kind', 'status', 'id', NEW.id, 'owner_id', NEW.owner_id, 'status', NEW.status)::text);
    END IF;
  ELSIF TG_TABLE_NAME = 'server_logs' THEN
    PERFORM pg_notify('mcphost_servers', json_build_object('kind', 'log', 'id', NEW.server_id)::text);
  ELSE
    PERFORM pg_notify('mcphost_servers', json_build_object('kind', 'metric', 'id', NEW.server_id)::text);
  END IF;
  RETURN NEW;
END
$$ LANGUAGE plpgsql
"""


def downgrade() -> None:
    for table in ("servers", "server_logs", "usage_metrics"):
        op.execute(f"DROP TRIGGER IF EXISTS {table}_notify ON {table}")
    op.execute("DROP FUNCTION IF EXISTS mcphost_notify_server()")
    op.drop_table("webhook_deliveries")
    op.drop_column("deployments", "capabilities")
