"""build artifacts: build_artifact_runs, build_artifact_platforms, and what image a deployment runs

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 06:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSONB = postgresql.JSONB(astext_type=sa.Text())


def upgrade() -> None:
    op.create_table(
        "build_artifact_runs",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("server_id", sa.UUID(), nullable=False),
        sa.Column("deployment_id", sa.UUID(), nullable=True),
        sa.Column("build_key", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("source_repo", sa.Text(), nullable=False),
        sa.Column("source_branch", sa.String(length=255), nullable=True),
        sa.Column("source_revision", sa.String(length=64), nullable=False),
        sa.Column("subdirectory", sa.Text(), nullable=True),
        sa.Column("recipe", JSONB, nullable=False),
        sa.Column("local_image", sa.Text(), nullable=True),
        sa.Column("registry_image", sa.Text(), nullable=True),
        sa.Column("manifest_tag", sa.String(length=128), nullable=True),
        sa.Column("manifest_digest", sa.String(length=80), nullable=True),
        sa.Column("credential_outcomes", JSONB, nullable=False),
        sa.Column("timings", JSONB, nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["server_id"], ["servers.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["deployment_id"], ["deployments.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("server_id", "build_key", name="uq_build_artifact_runs_key"),
    )
    op.create_index("ix_build_artifact_runs_server_id", "build_artifact_runs", ["server_id"])
    op.create_index("ix_build_artifact_runs_deployment_id", "build_artifact_runs", ["deployment_id"])
    op.create_table(
        "build_artifact_platforms",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.UUID(), nullable=False),
        sa.Column("platform", sa.String(length=64), nullable=False),
        sa.Column("image_id", sa.String(length=128), nullable=True),
        sa.Column("local_image", sa.Text(), nullable=True),
        sa.Column("manifest_digest", sa.String(length=80), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("build_seconds", sa.Float(), nullable=True),
        sa.Column("push_seconds", sa.Float(), nullable=True),
        sa.Column("pruned_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["build_artifact_runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_id", "platform", name="uq_build_artifact_platforms_platform"),
    )
    op.create_index("ix_build_artifact_platforms_run_id", "build_artifact_platforms", ["run_id"])
    op.add_column("deployments", sa.Column("artifact_id", sa.UUID(), nullable=True))
    op.add_column("deployments", sa.Column("revision", sa.String(length=64), nullable=True))
    op.add_column("deployments", sa.Column("image_ref", sa.Text(), nullable=True))
    op.add_column("deployments", sa.Column("image_digest", sa.String(length=80), nullable=True))
    op.create_foreign_key(
        "fk_deployments_artifact_id", "deployments", "build_artifact_runs", ["artifact_id"], ["id"], ondelete="SET NULL"
    )
    op.create_index("ix_deployments_artifact_id", "deployments", ["artifact_id"])


def downgrade() -> None:
    op.drop_index("ix_deployments_artifact_id", table_name="deployments")
    op.drop_constraint("fk_deployments_artifact_id", "deployments", type_="foreignkey")
    for column in ("image_digest", "image_ref", "revision", "artifact_id"):
        op.drop_column("deployments", column)
    op.drop_table("build_artifact_platforms")
    op.drop_table("build_artifact_runs")
