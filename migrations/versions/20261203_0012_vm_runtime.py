"""virtual-machine runtime: guests, their lifecycle events and attestation posture history

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03 23:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOW = sa.func.now()


def upgrade() -> None:
    op.create_table(
        "runtime_vm_instances",
        sa.Column("id", sa.UUID(), primary_key=True),
        sa.Column("server_id", sa.UUID(), sa.ForeignKey("servers.id", ondelete="CASCADE"), nullable=False),
        sa.Column(
            "deployment_id", sa.UUID(), sa.ForeignKey("deployments.id", ondelete="CASCADE"), nullable=False, unique=True
        ),
        sa.Column("domain", sa.String(100), nullable=False),
        sa.Column("uri", sa.String(300), nullable=False),
        sa.Column("address", sa.String(64)),
        sa.Column("memory_mib", sa.Integer(), nullable=False),
        sa.Column("vcpus", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(24), nullable=False),
        sa.Column("nonce", sa.String(100)),
        sa.Column("posture", sa.String(16), nullable=False),
        sa.Column("posture_reason", sa.String(64)),
        sa.Column("measurement", sa.String(128)),
        sa.Column("attested_at", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
    )
    op.create_index("ix_runtime_vm_instances_server_id", "runtime_vm_instances", ["server_id"])
    op.create_table(
        "runtime_vm_events",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column("server_id", sa.UUID(), sa.ForeignKey("servers.id", ondelete="CASCADE"), nullable=False),
        sa.Column("deployment_id", sa.UUID()),
        sa.Column("domain", sa.String(100), nullable=False),
        sa.Column("event", sa.String(24), nullable=False),
        sa.Column("detail", sa.String(64)),
        sa.Column("at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
    )
    op.create_index("ix_runtime_vm_events_server_at", "runtime_vm_events", ["server_id", "at"])
    op.create_table(
        "runtime_vm_trust_history",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column("server_id", sa.UUID(), sa.ForeignKey("servers.id", ondelete="CASCADE"), nullable=False),
        sa.Column("deployment_id", sa.UUID()),
        sa.Column("domain", sa.String(100), nullable=False),
        sa.Column("previous", sa.String(16)),
        sa.Column("posture", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("note", sa.String(120), nullable=False),
        sa.Column("measurement", sa.String(128)),
        sa.Column("key_id", sa.String(100)),
        sa.Column("at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
    )
    op.create_index("ix_runtime_vm_trust_history_server_at", "runtime_vm_trust_history", ["server_id", "at"])


def downgrade() -> None:
    op.drop_table("runtime_vm_trust_history")
    op.drop_table("runtime_vm_events")
    op.drop_table("runtime_vm_instances")
