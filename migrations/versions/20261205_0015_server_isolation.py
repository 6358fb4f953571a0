"""servers may ask for a stronger isolation than the installation's: gVisor on the docker runtime

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-05 12:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Null: the installation's CONTAINER_ISOLATION, which is what every existing server ran under.
    op.add_column("servers", sa.Column("isolation", sa.String(16), nullable=True))


def downgrade() -> None:
    op.drop_column("servers", "isolation")
