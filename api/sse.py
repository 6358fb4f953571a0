"""Server-sent event streams of the API: one framing, one set of headers and one OpenAPI description for
every route that streams (deployments, logs, metrics, trust, governance, promotions, remediation)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

from fastapi.responses import StreamingResponse
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from api.events import ServerEvents
from api.schemas.common import error_responses

# Proxies must pass events on as they come.
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
SSE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {}}, "description": "Server-sent events"},
    **error_responses(401, 404, 422),
}
# A comment line at least this often keeps idle connections open through proxies.
KEEPALIVE_SECONDS = 15.0


Row = TypeVar("Row")


async def rows_after(db: AsyncSession, model: type[Row], run_id: uuid.UUID, after: int) -> Sequence[Row]:
    """A run's entries (a governance run's audit, a remediation run's artifacts) written after id `after`,
    oldest first: what a stream has not sent yet."""
    table: Any = model
    return (await db.scalars(select(model).where(table.run_id == run_id, table.id > after).order_by(table.id))).all()


def event(name: str, data: Any, event_id: int | None = None) -> bytes:
    """One event: its id (for Last-Event-ID), its name and its data as JSON."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {name}\ndata: {json.dumps(data, default=str)}\n\n".encode()


def sse_response(events: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)


# What a followed stream does each time it looks: the events to send, and whether that was the last.
Step = Callable[[], Awaitable[tuple[list[bytes], bool]]]


async def follow(hub: ServerEvents, kind: str, key: str, step: Step, recheck: float) -> AsyncIterator[bytes]:
    """Run `step` at once, then on each notification of `kind` for `key` (a server, a promotion, a run)
    and at least every `recheck` seconds, so a lost notification only delays an event. Keep-alive
    comments keep idle proxies from cutting the stream."""
    wake = hub.follow(kind, key)
    idle = 0.0
    try:
        while True:
            wake.clear()
            chunks, last = await step()
            for chunk in chunks:
                yield chunk
            if last:
                return
            if chunks:
                idle = 0.0
            try:
                await asyncio.wait_for(wake.wait(), timeout=recheck)
            except TimeoutError:
                idle += recheck
                if idle >= KEEPALIVE_SECONDS:
                    idle = 0.0
                    yield b": keep-alive\n\n"
    finally:
        hub.unfollow(kind, key, wake)
