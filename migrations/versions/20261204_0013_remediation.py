"""remediation playbooks, their bindings to servers, runs and artifacts

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04 00:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOW = sa.func.now()
PLAYBOOKS = "runtime_vm_remediation_playbooks"
RUNS = "runtime_vm_remediation_runs"


def upgrade() -> None:
    op.create_table(
        PLAYBOOKS,
        sa.Column("id", sa.UUID(), primary_key=True),
        sa.Column("owner_id", sa.UUID(), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("definition", JSONB(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.UniqueConstraint("owner_id", "name", name="uq_remediation_playbooks_owner_name"),
    )
    op.create_table(
        "runtime_vm_remediation_bindings",
        sa.Column("server_id", sa.UUID(), sa.ForeignKey("servers.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("playbook_id", sa.UUID(), sa.ForeignKey(f"{PLAYBOOKS}.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
    )
    op.create_table(
        RUNS,
        sa.Column("id", sa.UUID(), primary_key=True),
        sa.Column("playbook_id", sa.UUID(), sa.ForeignKey(f"{PLAYBOOKS}.id", ondelete="CASCADE"), nullable=False),
        sa.Column("server_id", sa.UUID(), sa.ForeignKey("servers.id", ondelete="CASCADE"), nullable=False),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("requester_id", sa.UUID(), sa.ForeignKey("users.id", ondelete="SET NULL")),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("workflow_id", sa.String(200), nullable=False, unique=True),
        sa.Column("definition", JSONB(), nullable=False),
        sa.Column("current_step", sa.String(64)),
        sa.Column("results", JSONB(), server_default="[]", nullable=False),
        sa.Column("exit_code", sa.Integer()),
        sa.Column("reason", sa.Text()),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("sla_breached", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
    )
    op.create_index("ix_runtime_vm_remediation_runs_playbook_id", RUNS, ["playbook_id"])
    op.create_index("ix_runtime_vm_remediation_runs_server_id", RUNS, ["server_id"])
    op.create_index(
        "uq_remediation_runs_active",
        RUNS,
        ["server_id", "playbook_id"],
        unique=True,
        postgresql_where=sa.text("status IN ('awaiting_approval', 'running')"),
    )
    op.create_table(
        "runtime_vm_remediation_artifacts",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.UUID(), sa.ForeignKey(f"{RUNS}.id", ondelete="CASCADE"), nullable=False),
        sa.Column("key", sa.String(200), nullable=False, unique=True),
        sa.Column("step", sa.String(64)),
        sa.Column("kind", sa.String(24), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
    )
    op.create_index("ix_runtime_vm_remediation_artifacts_run_id", "runtime_vm_remediation_artifacts", ["run_id"])


def downgrade() -> None:
    op.drop_table("runtime_vm_remediation_artifacts")
    op.drop_table(RUNS)
    op.drop_table("runtime_vm_remediation_bindings")
    op.drop_table(PLAYBOOKS)
