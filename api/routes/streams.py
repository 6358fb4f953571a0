"""Live server-sent event streams: a server's log lines, its telemetry events, and the status of every
server the caller can see. Woken by Postgres notifications (see api.events.ServerEvents), so any API
replica serves any stream; each also re-reads on a timer, so a lost notification only delays a line."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from sqlalchemy import select

from api.deps import AppState, CurrentUser, SessionDep, StateDep, load_server
from api.schemas.common import LogLine, MetricEvent
from api.sse import KEEPALIVE_SECONDS, SSE_RESPONSES, event, follow, sse_response
from core.models import Deployment, Server, ServerLog, UsageMetric

router = APIRouter(prefix="/api/servers", tags=["streams"])

RECHECK_SECONDS = 1.0


def new_lines(seen: list[str], current: list[str]) -> list[str]:
    """The lines of `current` (a tail of a growing output) that come after what `seen` (an earlier tail of
    it) already held: the longest head of `current` that ends `seen` is dropped."""
    for overlap in range(min(len(seen), len(current)), 0, -1):
        if current[:overlap] == seen[len(seen) - overlap :]:
            return current[overlap:]
    return current


async def _follow(
    state: AppState, kind: str, server_id: uuid.UUID, poll: Callable[[], Awaitable[list[bytes] | None]]
) -> AsyncIterator[bytes]:
    """Run `poll` at once, then on each notification of `kind` for the server (or every second); stop when
    it returns None (the server is gone)."""
    hub = state.server_events
    assert hub is not None

    async def step() -> tuple[list[bytes], bool]:
        chunks = await poll()
        if chunks is None:
            return [event("end", {"reason": "the server was deleted"})], True
        return chunks, False

    async for chunk in follow(hub, kind, str(server_id), step, RECHECK_SECONDS):
        yield chunk


@router.get("/stream", response_class=StreamingResponse, responses=SSE_RESPONSES)
async def servers_stream(user: CurrentUser, state: StateDep) -> StreamingResponse:
    """`server` events `{id, status}`: first one per server the caller can see, then one on every change
    of any of them (`deleted` when one goes). Admins see every server."""
    hub = state.server_events
    assert hub is not None
    admin, me = user.role == "admin", str(user.id)

    async def snapshot() -> list[bytes]:
        async with state.sessionmaker() as session:
            query = select(Server.id, Server.status).order_by(Server.created_at)
            if not admin:
                query = query.where(Server.owner_id == user.id)
            rows = (await session.execute(query)).all()
        return [event("server", {"id": str(sid), "status": status}) for sid, status in rows]

    async def stream() -> AsyncIterator[bytes]:
        changes = hub.statuses()
        try:
            for chunk in await snapshot():
                yield chunk
            while True:
                try:
                    change = await asyncio.wait_for(changes.get(), timeout=KEEPALIVE_SECONDS)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                if change is None:  # some changes were missed: say where everything stands now
                    for chunk in await snapshot():
                        yield chunk
                    continue
                if admin or change.get("owner_id") == me:
                    yield event("server", {"id": change.get("id"), "status": change.get("status")})
        finally:
            hub.forget(changes)

    return sse_response(stream())


@router.get("/{server_id}/logs/stream", response_class=StreamingResponse, responses=SSE_RESPONSES)
async def logs_stream(
    server_id: uuid.UUID,
    user: CurrentUser,
    session: SessionDep,
    state: StateDep,
    tail: int = Query(default=100, ge=0, le=5000, description="How many earlier lines of each source to send first"),
) -> StreamingResponse:
    """`log` events (as `GET /logs` lines): the last `tail` platform lines and lines of the newest
    revision's own output, then each new line of either as it is written, on any runtime this API host
    can read."""
    server = await load_server(session, user, server_id)
    last_id = 0
    if tail:
        ids = (
            await session.scalars(
                select(ServerLog.id).where(ServerLog.server_id == server.id).order_by(ServerLog.id.desc()).limit(tail)
            )
        ).all()
        last_id = (min(ids) - 1) if ids else 0
    else:
        last_id = (
            await session.scalar(
                select(ServerLog.id).where(ServerLog.server_id == server.id).order_by(ServerLog.id.desc()).limit(1)
            )
            or 0
        )
    await session.rollback()
    seen: dict[str, list[str]] = {}
    first = [True]

    async def poll() -> list[bytes] | None:
        nonlocal last_id
        chunks: list[bytes] = []
        async with state.sessionmaker() as fresh:
            if await fresh.get(Server, server_id) is None:
                return None
            rows = (
                await fresh.scalars(
                    select(ServerLog)
                    .where(ServerLog.server_id == server_id, ServerLog.id > last_id)
                    .order_by(ServerLog.id)
                    .limit(1000)
                )
            ).all()
            latest = await fresh.scalar(
                select(Deployment).where(Deployment.server_id == server_id).order_by(Deployment.seq.desc()).limit(1)
            )
        for row in rows:
            last_id = row.id
            line = LogLine(
                source="platform",
                level=row.level,
                message=row.message,
                created_at=row.created_at,
                deployment_id=row.deployment_id,
            )
            chunks.append(event("log", line.model_dump(mode="json"), row.id))
        if latest is not None:
            output = await state.shared_log_tail(latest, 200)
            key = str(latest.id)
            fresh_lines = new_lines(seen.get(key, []), output)
            if first[0]:
                fresh_lines = fresh_lines[-tail:] if tail else []
            seen.clear()
            seen[key] = output
            for text in fresh_lines:
                line = LogLine(source="runtime", level="info", message=text, deployment_id=latest.id)
                chunks.append(event("log", line.model_dump(mode="json")))
        first[0] = False
        return chunks

    return sse_response(_follow(state, "log", server_id, poll))


@router.get("/{server_id}/metrics/stream", response_class=StreamingResponse, responses=SSE_RESPONSES)
async def metrics_stream(
    server_id: uuid.UUID,
    user: CurrentUser,
    session: SessionDep,
    state: StateDep,
    after: int | None = Query(default=None, ge=0, description="Send events after this id first (default: only new)"),
) -> StreamingResponse:
    """`metric` events (as `GET /metrics` items): telemetry of builds, pushes and the supervisor
    (`unhealthy`, `restart`, `recovered`, `degraded`) as they are recorded."""
    server = await load_server(session, user, server_id)
    if after is None:
        after = (
            await session.scalar(
                select(UsageMetric.id)
                .where(UsageMetric.server_id == server.id)
                .order_by(UsageMetric.id.desc())
                .limit(1)
            )
            or 0
        )
    await session.rollback()
    last_id = after

    async def poll() -> list[bytes] | None:
        nonlocal last_id
        async with state.sessionmaker() as fresh:
            if await fresh.get(Server, server_id) is None:
                return None
            rows = (
                await fresh.scalars(
                    select(UsageMetric)
                    .where(UsageMetric.server_id == server_id, UsageMetric.id > last_id)
                    .order_by(UsageMetric.id)
                    .limit(1000)
                )
            ).all()
        chunks = []
        for row in rows:
            last_id = row.id
            item = MetricEvent(id=row.id, event=row.event, details=row.details, created_at=row.created_at)
            chunks.append(event("metric", item.model_dump(mode="json"), row.id))
        return chunks

    return sse_response(_follow(state, "metric", server_id, poll))
