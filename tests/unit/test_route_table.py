"""The gateway's route cache against a fake database: a change notified while a row is being read is
not hidden behind the stale row."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from api.gateway import RouteTable


class FakeResult:
    def __init__(self, row: tuple[Any, ...]) -> None:
        self.row = row

    def first(self) -> tuple[Any, ...]:
        return self.row


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

    async def execute(self, _statement: object) -> FakeResult:
        self.reads += 1
        row = (uuid.uuid4(), "s", self.key_hash, "created", None)
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
    assert stale is not None and stale.api_key_hash == "old"  # that request was already under way
    fresh = await table.lookup("s")
    assert fresh is not None and fresh.api_key_hash == "new"
    assert db.reads == 2
