"""Deployment change notifications for SSE streams: one LISTEN connection per API process, fanned out
to the streams that follow each deployment. Streams also re-read on a timer, so a lost notification
(or a listener that is reconnecting) only delays an update."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from typing import Any

from core.db import DEPLOYMENTS_CHANNEL, SERVERS_CHANNEL
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


class ServerEvents:
    """Changes of servers, from Postgres triggers on `servers`, `server_logs` and `usage_metrics` (so a
    change made by any process reaches every API replica): status changes are handed to the status
    streams as they come; log and metric inserts wake the streams that follow that server."""

    QUEUE_SIZE = 1000

    def __init__(self, database_url: str) -> None:
        self._wakers: dict[tuple[str, str], set[asyncio.Event]] = defaultdict(set)
        self._status: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self._listener = PgListener(database_url, SERVERS_CHANNEL, self._on_notify, self._on_reconnect)

    def follow(self, kind: str, server_id: str) -> asyncio.Event:
        """An event set whenever a `kind` ("log" or "metric") row of the server is written."""
        event = asyncio.Event()
        self._wakers[(kind, server_id)].add(event)
        return event

    def unfollow(self, kind: str, server_id: str, event: asyncio.Event) -> None:
        waiters = self._wakers.get((kind, server_id))
        if waiters is not None:
            waiters.discard(event)
            if not waiters:
                del self._wakers[(kind, server_id)]

    def statuses(self) -> asyncio.Queue[dict[str, Any] | None]:
        """A queue of `{id, owner_id, status}` changes; None means some were missed (resend everything)."""
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(self.QUEUE_SIZE)
        self._status.add(queue)
        return queue

    def forget(self, queue: asyncio.Queue[dict[str, Any] | None]) -> None:
        self._status.discard(queue)

    def _offer(self, queue: asyncio.Queue[dict[str, Any] | None], item: dict[str, Any] | None) -> None:
        try:
            queue.put_nowait(item)
        except asyncio.QueueFull:  # a slow reader: it starts over from a fresh snapshot
            while not queue.empty():
                queue.get_nowait()
            queue.put_nowait(None)

    def _on_notify(self, payload: str) -> None:
        try:
            change = json.loads(payload)
        except ValueError:
            return
        if change.get("kind") == "status":
            for queue in self._status:
                self._offer(queue, change)
            return
        kind = str(change.get("kind"))
        for event in self._wakers.get((kind, str(change.get("id"))), ()):
            event.set()
        # Followers of every server of a kind (the posture feed filters what the caller may see itself).
        for event in self._wakers.get((kind, "*"), ()):
            event.set()

    def _on_reconnect(self) -> None:
        for waiters in self._wakers.values():
            for event in waiters:
                event.set()
        for queue in self._status:
            self._offer(queue, None)

    async def start(self) -> None:
        await self._listener.start()

    async def stop(self) -> None:
        await self._listener.stop()
