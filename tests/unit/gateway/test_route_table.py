"""The gateway's route cache against a fake database: a change notified while a row is being read is
not hidden behind the stale row."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from gateway.routes import RouteTable


class FakeResult:
    def __init__(self, row: tuple[Any, ...] | None) -> None:
        self.row = row

    def first(self) -> tuple[Any, ...] | None:
        return self.row

    def all(self) -> list[tuple[Any, ...]]:
        return []  # no named keys


class FakeDatabase:
    """Answers each read with the key hash current when the read *started*, after `gate` opens."""

    def __init__(self) -> None:
        self.key_hash = "old"
        self.reads = 0
        self.gate = asyncio.Event()
        self.gate.set()

    def __call__(self) -> FakeDatabase:
        return self

    async def __aenter__(self) -> FakeDatabase:
        return self

    async def __aexit__(self, *_: object) -> None:
        return None

    async def execute(self, statement: object) -> FakeResult:
        if "server_api_keys" in str(statement):
            return FakeResult(None)
        self.reads += 1
        # id, slug, default key hash, status, gateway options, upstream, active deployment
        row: tuple[Any, ...] = (uuid.uuid4(), "s", self.key_hash, "created", {}, None, None)
        await self.gate.wait()
        return FakeResult(row)


async def test_routes_are_cached_until_invalidated() -> None:
    db = FakeDatabase()
    table = RouteTable(db, "postgresql+asyncpg://unused/db", ttl=3600)  # type: ignore[arg-type]
    assert (await table.lookup("s")) is not None
    await table.lookup("s")
    assert db.reads == 1
    table.invalidate("s")
    await table.lookup("s")
    assert db.reads == 2


async def test_a_read_overtaken_by_an_invalidation_is_not_cached() -> None:
    db = FakeDatabase()
    table = RouteTable(db, "postgresql+asyncpg://unused/db", ttl=3600)  # type: ignore[arg-type]
    db.gate.clear()
    reading = asyncio.create_task(table.lookup("s"))
    await asyncio.sleep(0)  # the read has the old row in hand ...
    db.key_hash = "new"
    table.invalidate("s")  # ... when the change's notification arrives
    db.gate.set()
    stale = await reading
    assert stale is not None and "old" in stale.keys  # that request was already under way
    fresh = await table.lookup("s")
    assert fresh is not None and "new" in fresh.keys and "old" not in fresh.keys
    assert db.reads == 2


async def test_the_cache_is_bounded_and_unknown_slugs_take_no_query() -> None:
    db = FakeDatabase()
    table = RouteTable(db, "postgresql+asyncpg://unused/db", ttl=3600, max_entries=50)  # type: ignore[arg-type]
    for i in range(500):
        await table.lookup(f"slug-{i}")
    assert len(table) == 50
    reads = db.reads
    for bad in ("UPPER", "-x", "a/b", "x" * 64, "", "é"):
        assert await table.lookup(bad) is None
    assert db.reads == reads and len(table) == 50
