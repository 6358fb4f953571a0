"""Deployment change notifications for SSE streams: one LISTEN connection per API process, fanned out
to the streams that follow each deployment. Streams also re-read on a timer, so a lost notification
(or a listener that is reconnecting) only delays an update."""

from __future__ import annotations

import asyncio
from collections import defaultdict

from core.db import DEPLOYMENTS_CHANNEL
from core.listen import PgListener


class DeploymentEvents:
    def __init__(self, database_url: str) -> None:
        self._waiters: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._listener = PgListener(database_url, DEPLOYMENTS_CHANNEL, self._on_notify, self._wake_all)

    def _wake_all(self) -> None:
        for waiters in self._waiters.values():
            for event in waiters:
                event.set()

    def subscribe(self, deployment_id: str) -> asyncio.Event:
        event = asyncio.Event()
        self._waiters[deployment_id].add(event)
        return event

    def unsubscribe(self, deployment_id: str, event: asyncio.Event) -> None:
        waiters = self._waiters.get(deployment_id)
        if waiters is not None:
            waiters.discard(event)
            if not waiters:
                del self._waiters[deployment_id]

    def _on_notify(self, payload: str) -> None:
        for event in self._waiters.get(payload, ()):
            event.set()

    async def start(self) -> None:
        await self._listener.start()

    async def stop(self) -> None:
        await self._listener.stop()
