"""Activity of PruneHistoryWorkflow: delete server log lines and telemetry events past their retention.

Deleting rows older than a cutoff is idempotent, so a retry (or a second run) deletes only what is
left. Each batch is its own transaction: no run holds a long one, and a run cut short keeps what
it has done.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity

from activities.common import heartbeating
from core.models import ServerLog, UsageMetric
from records.history import History, delete_before


@dataclass
class PruneInput:
    log_cutoff: datetime
    event_cutoff: datetime
    batch_size: int = 5000


@dataclass
class PruneReport:
    # Rows deleted, by table.
    deleted: dict[str, int] = field(default_factory=dict)


class PruneActivities:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self.sessionmaker = sessionmaker

    async def _delete_batch(self, table: History, cutoff: datetime, limit: int) -> int:
        async with self.sessionmaker() as session, session.begin():
            return await delete_before(session, table, cutoff, limit)

    @activity.defn(name="prune_history")
    async def prune_history(self, data: PruneInput) -> PruneReport:
        # The counts heartbeat with the work: a retried attempt counts on from what the last one deleted.
        earlier = activity.info().heartbeat_details
        deleted: dict[str, int] = {str(k): int(v) for k, v in earlier[0].items()} if earlier else {}
        tables: list[tuple[History, datetime]] = [(ServerLog, data.log_cutoff), (UsageMetric, data.event_cutoff)]
        for table, cutoff in tables:
            name = table.__tablename__
            deleted.setdefault(name, 0)
            while True:
                count = await heartbeating(self._delete_batch(table, cutoff, data.batch_size), dict(deleted))
                deleted[name] += count
                activity.heartbeat(dict(deleted))
                if count < data.batch_size:
                    break
        return PruneReport(deleted=deleted)

    def all(self) -> list[Any]:
        return [self.prune_history]
