"""Named gateway keys of a server: create (shown once), list, revoke. Changes reach every API and gateway
process at once by NOTIFY."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from fastapi import APIRouter, Response, status
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from api.deps import CurrentUser, SessionDep, StateDep, load_server
from api.schemas.common import ListOf, error_responses
from api.schemas.keys import GatewayKeyCreate, GatewayKeyCreated, GatewayKeyPublic
from core.db import notify_route_changed
from core.errors import Conflict, NotFound
from core.models import ServerApiKey, ServerLog
from core.security import SERVER_KEY_PREFIX, display_prefix, generate_secret_token, hash_token

router = APIRouter(prefix="/api/servers", tags=["gateway keys"])
MAX_KEYS = 100


@router.post(
    "/{server_id}/keys",
    status_code=status.HTTP_201_CREATED,
    response_model=GatewayKeyCreated,
    responses=error_responses(401, 404, 409, 422),
)
async def create_key(
    server_id: uuid.UUID, body: GatewayKeyCreate, user: CurrentUser, session: SessionDep, state: StateDep
) -> GatewayKeyCreated:
    """A new named key for the gateway, optionally expiring and limited to some tools. Shown once."""
    api_key = generate_secret_token(SERVER_KEY_PREFIX)
    expires = datetime.now(UTC) + timedelta(days=body.expires_in_days) if body.expires_in_days else None
    try:
        async with session.begin():
            server = await load_server(session, user, server_id, lock=True)
            live = (
                await session.scalars(
                    select(ServerApiKey.id).where(
                        ServerApiKey.server_id == server.id, ServerApiKey.revoked_at.is_(None)
                    )
                )
            ).all()
            if len(live) >= MAX_KEYS:
                raise Conflict(f"a server may have at most {MAX_KEYS} live keys; revoke one first")
            row = ServerApiKey(
                id=uuid.uuid4(),
                server_id=server.id,
                name=body.name,
                key_hash=hash_token(api_key),
                prefix=display_prefix(api_key),
                tools=body.tools,
                expires_at=expires,
                created_by=user.id,
            )
            session.add(row)
            scope = f"tools {', '.join(body.tools)}" if body.tools is not None else "all tools"
            session.add(
                ServerLog(server_id=server.id, message=f"gateway key {body.name!r} ({scope}) created by {user.email}")
            )
            await notify_route_changed(session, server.slug)
    except IntegrityError:
        raise Conflict(f"this server already has a live key named {body.name!r}") from None
    await session.refresh(row)
    state.routes.invalidate(server.slug)
    return GatewayKeyCreated(**GatewayKeyPublic.model_validate(row).model_dump(), api_key=api_key)


@router.get("/{server_id}/keys", response_model=ListOf[GatewayKeyPublic], responses=error_responses(401, 404, 422))
async def list_keys(server_id: uuid.UUID, user: CurrentUser, session: SessionDep) -> ListOf[GatewayKeyPublic]:
    """The server's named keys, revoked ones included (their values are never shown again)."""
    server = await load_server(session, user, server_id)
    rows = (
        await session.scalars(
            select(ServerApiKey).where(ServerApiKey.server_id == server.id).order_by(ServerApiKey.created_at)
        )
    ).all()
    return ListOf[GatewayKeyPublic](count=len(rows), data=[GatewayKeyPublic.model_validate(r) for r in rows])


@router.delete(
    "/{server_id}/keys/{key_id}", status_code=status.HTTP_204_NO_CONTENT, responses=error_responses(401, 404, 422)
)
async def revoke_key(
    server_id: uuid.UUID, key_id: uuid.UUID, user: CurrentUser, session: SessionDep, state: StateDep
) -> Response:
    """Revoke a key: it stops working at once on every process. Revoking twice is fine."""
    async with session.begin():
        server = await load_server(session, user, server_id, lock=True)
        row = await session.scalar(
            select(ServerApiKey).where(ServerApiKey.id == key_id, ServerApiKey.server_id == server.id)
        )
        if row is None:
            raise NotFound(f"key {key_id} not found")
        if row.revoked_at is None:
            row.revoked_at = datetime.now(UTC)
            session.add(ServerLog(server_id=server.id, message=f"gateway key {row.name!r} revoked by {user.email}"))
            await notify_route_changed(session, server.slug)
    state.routes.invalidate(server.slug)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
