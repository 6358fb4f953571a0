"""A server's history: its log lines (`server_logs`) and telemetry events (`usage_metrics`), kept for their
retention and then deleted by PruneHistoryWorkflow, a batch per transaction."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from core.models import ServerLog, UsageMetric

History = type[ServerLog] | type[UsageMetric]


async def delete_before(session: AsyncSession, table: History, cutoff: datetime, limit: int) -> int:
    """Delete at most `limit` rows of `table` created before `cutoff`, oldest first; returns how many. Rows
    another transaction is deleting are skipped, so two pruners never wait on each other."""
    oldest = (
        select(table.id)
        .where(table.created_at < cutoff)
        .order_by(table.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    result = await session.execute(delete(table).where(table.id.in_(oldest.scalar_subquery())))
    return int(cast(CursorResult[Any], result).rowcount or 0)
