"""servers carry resource limits (cores, MiB) and whether they use a GPU

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 09:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("servers", sa.Column("cpu_limit", sa.Float(), nullable=True))
    op.add_column("servers", sa.Column("memory_limit", sa.Integer(), nullable=True))
    op.add_column("servers", sa.Column("use_gpu", sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    op.drop_column("servers", "use_gpu")
    op.drop_column("servers", "memory_limit")
    op.drop_column("servers", "cpu_limit")
