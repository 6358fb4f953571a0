"""Writing build/registry telemetry events and build output into the platform database."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.models import ServerLog, UsageMetric
from core.telemetry import EVENT_NAMES, BuildEvent, log_event


class EventWriter:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self.sessionmaker = sessionmaker

    async def emit(self, server_id: str, event: str, **details: Any) -> dict[str, Any]:
        """Store one event (schema-checked) and log it as a JSON line; returns the stored details."""
        assert event in EVENT_NAMES, event
        stored = BuildEvent(**details).stored()
        async with self.sessionmaker() as session, session.begin():
            session.add(UsageMetric(server_id=uuid.UUID(server_id), event=event, details=stored))
        log_event(server_id, event, stored)
        return stored

    async def logs(self, server_id: str, deployment_id: str, lines: list[str], level: str = "info") -> None:
        if not lines:
            return
        async with self.sessionmaker() as session, session.begin():
            session.add_all(
                ServerLog(
                    server_id=uuid.UUID(server_id),
                    deployment_id=uuid.UUID(deployment_id),
                    level=level,
                    message=line[:4000],
                )
                for line in lines
            )
