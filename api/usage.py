"""Usage metrics written off the request path: the gateway enqueues, a background task batches inserts."""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.models import UsageMetric

log = logging.getLogger("mcphost.usage")


@dataclass
class UsageEvent:
    server_id: uuid.UUID
    event: str
    details: dict[str, Any]


class UsageRecorder:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], *, capacity: int = 10_000) -> None:
        self.sessionmaker = sessionmaker
        self.queue: asyncio.Queue[UsageEvent] = asyncio.Queue(maxsize=capacity)
        self.dropped = 0
        self._task: asyncio.Task[None] | None = None

    def record(self, server_id: uuid.UUID, event: str, **details: Any) -> None:
        try:
            self.queue.put_nowait(UsageEvent(server_id, event, details))
        except asyncio.QueueFull:
            self.dropped += 1  # never slow down traffic for metrics

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="usage-recorder")

    async def _run(self) -> None:
        while True:
            batch = [await self.queue.get()]
            await asyncio.sleep(0.2)
            while not self.queue.empty() and len(batch) < 500:
                batch.append(self.queue.get_nowait())
            await self._write(batch)

    async def _write(self, batch: list[UsageEvent]) -> None:
        try:
            async with self.sessionmaker() as session, session.begin():
                await session.execute(
                    insert(UsageMetric),
                    [{"server_id": e.server_id, "event": e.event, "details": e.details} for e in batch],
                )
        except Exception:
            # A server deleted meanwhile makes its rows fail the foreign key; metrics are best effort.
            log.warning("could not write %d usage events", len(batch), exc_info=True)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        remaining = []
        while not self.queue.empty():
            remaining.append(self.queue.get_nowait())
        if remaining:
            await self._write(remaining)
