"""Virtual-machine guests and their trust posture: `GET /api/servers/{id}/vm` and the posture change feed
`GET /api/policy/stream` (server-sent events, woken by Postgres notifications so any API replica serves
it)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from sqlalchemy import select

from api.deps import CurrentUser, SessionDep, StateDep, load_server
from api.schemas.common import error_responses
from api.schemas.trust import ServerVm, TrustChangePublic, VmEventPublic, VmGuestPublic
from api.sse import KEEPALIVE_SECONDS, event, sse_response
from core.models import Server, VmEvent, VmInstance, VmTrustChange

router = APIRouter(prefix="/api", tags=["trust"])

STREAM_RESPONSES = {
    200: {"content": {"text/event-stream": {}}, "description": "Server-sent events"},
    **error_responses(401, 422),
}


@router.get("/servers/{server_id}/vm", response_model=ServerVm, responses=error_responses(401, 404, 422))
async def server_vm(
    server_id: uuid.UUID,
    user: CurrentUser,
    session: SessionDep,
    limit: int = Query(default=100, ge=1, le=1000, description="Most events and posture changes returned."),
) -> ServerVm:
    """The server's virtual-machine guests with their attestation posture, the hypervisor's lifecycle
    events for them, and the history of their posture."""
    server = await load_server(session, user, server_id)
    guests = (
        await session.scalars(
            select(VmInstance).where(VmInstance.server_id == server.id).order_by(VmInstance.created_at.desc())
        )
    ).all()
    events = (
        await session.scalars(
            select(VmEvent).where(VmEvent.server_id == server.id).order_by(VmEvent.id.desc()).limit(limit)
        )
    ).all()
    trust = (
        await session.scalars(
            select(VmTrustChange)
            .where(VmTrustChange.server_id == server.id)
            .order_by(VmTrustChange.id.desc())
            .limit(limit)
        )
    ).all()
    return ServerVm(
        guests=[VmGuestPublic.model_validate(g) for g in guests],
        events=[VmEventPublic.model_validate(e) for e in events],
        trust=[TrustChangePublic.model_validate(t) for t in trust],
    )


@router.get("/policy/stream", response_class=StreamingResponse, responses=STREAM_RESPONSES)
async def policy_stream(
    user: CurrentUser,
    state: StateDep,
    after: int = Query(default=0, ge=0, description="Start after this posture change id (0: from now on)."),
) -> StreamingResponse:
    """`trust` events: each change of the attestation posture of a guest of a server the caller can see
    (admins: every server), as `runtime_vm_trust_history` records it. With `after`, the changes after
    that id come first. Event ids are the change ids, so a client resumes where it left off."""
    hub = state.server_events
    assert hub is not None
    admin = user.role == "admin"

    async def since(last: int) -> list[VmTrustChange]:
        async with state.sessionmaker() as session:
            query = select(VmTrustChange).where(VmTrustChange.id > last).order_by(VmTrustChange.id).limit(500)
            if not admin:
                query = query.join(Server, Server.id == VmTrustChange.server_id).where(Server.owner_id == user.id)
            return list((await session.scalars(query)).all())

    async def newest() -> int:
        async with state.sessionmaker() as session:
            rows = await session.scalars(select(VmTrustChange.id).order_by(VmTrustChange.id.desc()).limit(1))
            return rows.first() or 0

    async def stream() -> AsyncIterator[bytes]:
        wake = hub.follow("trust", "*")
        try:
            last = after or await newest()
            yield b": ready\n\n"
            while True:
                wake.clear()
                for change in await since(last):
                    last = change.id
                    body = TrustChangePublic.model_validate(change).model_dump(mode="json")
                    yield event("trust", body, change.id)
                try:
                    await asyncio.wait_for(wake.wait(), timeout=KEEPALIVE_SECONDS)
                except TimeoutError:
                    yield b": keep-alive\n\n"
        finally:
            hub.unfollow("trust", "*", wake)

    return sse_response(stream())
