"""webhook secrets are stored sealed (a Fernet token is longer than the 128 characters allowed so far)

Secrets written in clear before this stay readable; `mcphost secrets reseal` seals them.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21 09:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.alter_column("servers", "webhook_secret", type_=sa.Text(), existing_type=sa.String(length=128))


def downgrade() -> None:
    # Sealed secrets do not fit the old column: a downgrade needs them in clear, which is not kept.
    raise RuntimeError("0003 cannot be downgraded: sealed webhook secrets do not fit servers.webhook_secret")
