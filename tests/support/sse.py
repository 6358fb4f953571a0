"""Reading a server-sent event stream in a test: a background task parses events into a queue, and
`until` waits for the first event that matches."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx


class EventStream:
    def __init__(self, client: httpx.AsyncClient, path: str, **params: Any) -> None:
        self.client, self.path, self.params = client, path, params
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.status: int | None = None
        self._opened = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> EventStream:
        self._task = asyncio.create_task(self._read())
        await asyncio.wait_for(self._opened.wait(), timeout=30)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()
        try:
            await self._task
        except (asyncio.CancelledError, httpx.HTTPError):
            pass

    async def _read(self) -> None:
        try:
            async with self.client.stream("GET", self.path, params=self.params, timeout=None) as response:
                self.status = response.status_code
                self._opened.set()
                if response.status_code != 200:
                    return
                name, data = "message", []
                async for line in response.aiter_lines():
                    if line.startswith("event:"):
                        name = line.partition(":")[2].strip()
                    elif line.startswith("data:"):
                        data.append(line.partition(":")[2].strip())
                    elif not line and data:
                        await self.events.put((name, json.loads("\n".join(data))))
                        name, data = "message", []
        finally:
            self._opened.set()

    async def until(self, match: Callable[[str, Any], bool], timeout: float = 60) -> tuple[str, Any]:
        """The first event (skipping others) for which `match(name, data)` holds."""

        async def first() -> tuple[str, Any]:
            while True:
                name, data = await self.events.get()
                if match(name, data):
                    return name, data

        return await asyncio.wait_for(first(), timeout=timeout)
