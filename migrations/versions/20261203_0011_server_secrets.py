"""server secrets: values sealed or in Vault, and who touched them

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 15:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOW = sa.func.now()


def upgrade() -> None:
    op.create_table(
        "server_secrets",
        sa.Column("id", sa.UUID(), primary_key=True),
        sa.Column("server_id", sa.UUID(), sa.ForeignKey("servers.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("backend", sa.String(16), nullable=False),
        sa.Column("sealed", sa.Text()),
        sa.Column("vault_path", sa.Text()),
        sa.Column("vault_version", sa.Integer()),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_by", sa.UUID(), sa.ForeignKey("users.id", ondelete="SET NULL")),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.UniqueConstraint("server_id", "name", name="uq_server_secrets_server_name"),
        sa.CheckConstraint(
            "(backend = 'sealed' AND sealed IS NOT NULL) OR "
            "(backend = 'vault' AND vault_path IS NOT NULL AND vault_version IS NOT NULL)",
            name="ck_server_secrets_stored",
        ),
    )
    op.create_index("ix_server_secrets_server_id", "server_secrets", ["server_id"])
    op.create_table(
        "server_secret_events",
        sa.Column("id", sa.UUID(), primary_key=True),
        sa.Column("server_id", sa.UUID(), sa.ForeignKey("servers.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("version", sa.Integer()),
        sa.Column("actor_id", sa.UUID(), sa.ForeignKey("users.id", ondelete="SET NULL")),
        sa.Column("actor", sa.String(320), nullable=False),
        sa.Column("deployment_id", sa.UUID()),
        sa.Column("at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
    )
    op.create_index("ix_server_secret_events_server_at", "server_secret_events", ["server_id", "at"])


def downgrade() -> None:
    op.drop_table("server_secret_events")
    op.drop_table("server_secrets")
