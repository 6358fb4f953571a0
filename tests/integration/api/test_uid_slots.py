"""Each server's sandbox uid is recorded and unique; an installation that derived uids from server ids
keeps them where they were unique and separates the servers that shared one."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from core.migrate import upgrade_async
from core.tenancy import hashed_uid_slot
from tests.support.components import admin_database_url, create_database, drop_database
from tests.support.stack import Stack

pytestmark = pytest.mark.integration


def _sharing_ids() -> tuple[uuid.UUID, uuid.UUID]:
    """Two server ids the old rule gave one uid (a birthday search: a few hundred ids on average)."""
    seen: dict[int, uuid.UUID] = {}
    for _ in itertools.count():
        candidate = uuid.uuid4()
        slot = hashed_uid_slot(candidate)
        if slot in seen:
            return seen[slot], candidate
        seen[slot] = candidate
    raise AssertionError("unreachable")


@pytest.fixture
async def database() -> AsyncIterator[str]:
    admin = admin_database_url()
    assert admin is not None
    name, url = await create_database(admin)
    try:
        yield url
    finally:
        await drop_database(admin, name)


async def _insert_server(conn: asyncpg.Connection, owner: uuid.UUID, server_id: uuid.UUID, n: int) -> None:
    await conn.execute(
        "INSERT INTO servers (id, owner_id, name, slug, source, env, api_key_hash, api_key_prefix, webhook_secret,"
        " status, active_seq, deploy_seq, created_at)"
        " VALUES ($1, $2, $3, $3, '{}', '{}', $4, 'k', 's', 'created', 0, 0, now() + make_interval(secs => $5))",
        server_id,
        owner,
        f"srv-{n}",
        f"{n:064d}",
        n,
    )


async def test_recorded_slots_keep_unique_hashed_uids_and_separate_shared_ones(database: str) -> None:
    await upgrade_async(database, "0015")
    first, second = _sharing_ids()
    alone = uuid.uuid4()
    owner = uuid.uuid4()
    conn = await asyncpg.connect(database.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        await conn.execute(
            "INSERT INTO users (id, email, password_hash, role, server_quota, created_at)"
            " VALUES ($1, 'a@example.com', 'x', 'user', 10, now())",
            owner,
        )
        for n, server_id in enumerate((first, alone, second)):
            await _insert_server(conn, owner, server_id, n)
        await upgrade_async(database, "head")
        slots = {row["id"]: row["uid_slot"] for row in await conn.fetch("SELECT id, uid_slot FROM servers")}
        # The older of two servers that shared a uid keeps it (its files belong to it), as does a server
        # that had one alone; the younger gets a slot nobody had.
        assert slots[first] == hashed_uid_slot(first) == hashed_uid_slot(second)
        assert slots[alone] == hashed_uid_slot(alone)
        assert slots[second] not in (slots[first], slots[alone])
        # Servers made from now on take the next slots, never one in use.
        newer = uuid.uuid4()
        await _insert_server(conn, owner, newer, 3)
        fresh = await conn.fetchval("SELECT uid_slot FROM servers WHERE id = $1", newer)
        assert fresh not in slots.values()
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute("UPDATE servers SET uid_slot = $1 WHERE id = $2", slots[first], newer)
    finally:
        await conn.close()


async def test_servers_made_through_the_api_get_distinct_uids(stack: Stack) -> None:
    client, _ = await stack.user()
    async with client:
        made = []
        for n in range(3):
            response = await client.post(
                "/api/servers",
                json={"name": f"uid-{n}-{uuid.uuid4().hex[:6]}", "source": {"type": "image", "image": "example/x:1"}},
            )
            assert response.status_code == 201, response.text
            made.append(response.json()["id"])
        uids = [await stack.sandbox_uid(server_id) for server_id in made]
        assert len(set(uids)) == 3 and all(uid >= stack.settings.sandbox_uid_base for uid in uids)
        for server_id in made:
            assert (await client.delete(f"/api/servers/{server_id}")).status_code == 202
