"""every server's sandbox uid is recorded and unique: a slot from a sequence instead of a hash of its id

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-05 19:00:00
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The rule older installations used (core.tenancy.hashed_uid_slot), copied so this migration never changes.
OLD_SPAN = 65536


def _hashed(server_id: object) -> int:
    return int.from_bytes(hashlib.sha256(str(server_id).encode()).digest()[:4], "big") % OLD_SPAN


def upgrade() -> None:
    bind = op.get_bind()
    op.execute("CREATE SEQUENCE server_uid_slots MINVALUE 0 START 0")
    op.add_column("servers", sa.Column("uid_slot", sa.Integer(), nullable=True))
    # Existing servers keep the uid their files belong to; the later of two that shared one gets a new
    # slot (its /data is given to that uid on its next start, see core.tenancy.prepare_data_dir).
    rows = bind.execute(sa.text("SELECT id FROM servers ORDER BY created_at, id")).all()
    taken: set[int] = set()
    shared: list[object] = []
    for (server_id,) in rows:
        slot = _hashed(server_id)
        if slot in taken:
            shared.append(server_id)
            continue
        taken.add(slot)
        bind.execute(sa.text("UPDATE servers SET uid_slot = :slot WHERE id = :id"), {"slot": slot, "id": server_id})
    if taken:
        bind.execute(sa.text("SELECT setval('server_uid_slots', :last)"), {"last": max(taken)})
    for server_id in shared:
        bind.execute(
            sa.text("UPDATE servers SET uid_slot = nextval('server_uid_slots') WHERE id = :id"), {"id": server_id}
        )
    op.alter_column("servers", "uid_slot", nullable=False, server_default=sa.text("nextval('server_uid_slots')"))
    op.create_unique_constraint("servers_uid_slot_key", "servers", ["uid_slot"])
    op.execute("ALTER SEQUENCE server_uid_slots OWNED BY servers.uid_slot")


def downgrade() -> None:
    op.drop_constraint("servers_uid_slot_key", "servers", type_="unique")
    op.drop_column("servers", "uid_slot")
    op.execute("DROP SEQUENCE IF EXISTS server_uid_slots")
