"""A Postgres LISTEN connection kept open for the life of an API process, reconnecting when lost."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import asyncpg

from core.db import asyncpg_dsn

log = logging.getLogger("mcphost.listen")


class PgListener:
    def __init__(
        self,
        database_url: str,
        channel: str,
        on_notify: Callable[[str], None],
        on_reconnect: Callable[[], None] | None = None,
    ) -> None:
        self.database_url = database_url
        self.channel = channel
        self.on_notify = on_notify
        # Called on every (re)connect and loss: notifications may have been missed meanwhile.
        self.on_reconnect = on_reconnect or (lambda: None)
        self._connection: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self._connection is not None and not self._connection.is_closed()

    def _dispatch(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        self.on_notify(payload)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._keep_listening(), name=f"listen-{self.channel}")

    async def _keep_listening(self) -> None:
        while True:
            try:
                self._connection = await asyncpg.connect(asyncpg_dsn(self.database_url))
                await self._connection.add_listener(self.channel, self._dispatch)
                self.on_reconnect()
                while not self._connection.is_closed():
                    await asyncio.sleep(1.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("LISTEN %s unavailable (%s); retrying", self.channel, exc)
            self.on_reconnect()
            await asyncio.sleep(2.0)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self.connected:
            assert self._connection is not None
            await self._connection.close()
