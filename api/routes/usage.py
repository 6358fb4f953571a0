"""What went through the gateway: invocation traces and per-minute usage of a server."""

from __future__ import annotations

import uuid
from datetime import datetime

from fastapi import APIRouter, Query
from sqlalchemy import select

from api.deps import CurrentUser, SessionDep, load_server
from api.schemas.common import ListOf, error_responses
from api.schemas.usage import InvocationPublic, UsagePublic
from core.models import GatewayInvocation, GatewayUsage

router = APIRouter(prefix="/api/servers", tags=["gateway usage"])


@router.get(
    "/{server_id}/invocations", response_model=ListOf[InvocationPublic], responses=error_responses(401, 404, 422)
)
async def list_invocations(
    server_id: uuid.UUID,
    user: CurrentUser,
    session: SessionDep,
    limit: int = Query(default=100, ge=1, le=1000),
    before: int | None = Query(default=None, ge=1, description="Only invocations with a smaller id (paging)"),
    tool: str | None = Query(default=None, max_length=200),
    key_name: str | None = Query(default=None, max_length=100),
) -> ListOf[InvocationPublic]:
    """MCP requests through the gateway, newest first. Written in batches about a second after they end."""
    server = await load_server(session, user, server_id)
    stmt = select(GatewayInvocation).where(GatewayInvocation.server_id == server.id)
    if before is not None:
        stmt = stmt.where(GatewayInvocation.id < before)
    if tool is not None:
        stmt = stmt.where(GatewayInvocation.tool == tool)
    if key_name is not None:
        stmt = stmt.where(GatewayInvocation.key_name == key_name)
    rows = (await session.scalars(stmt.order_by(GatewayInvocation.id.desc()).limit(limit))).all()
    return ListOf[InvocationPublic](count=len(rows), data=[InvocationPublic.model_validate(r) for r in rows])


@router.get("/{server_id}/usage", response_model=ListOf[UsagePublic], responses=error_responses(401, 404, 422))
async def list_usage(
    server_id: uuid.UUID,
    user: CurrentUser,
    session: SessionDep,
    since: datetime | None = Query(default=None, description="Only minutes from this time on"),
    limit: int = Query(default=1000, ge=1, le=10000),
) -> ListOf[UsagePublic]:
    """Calls, errors, bytes and time per minute, key, method and tool, newest minute first."""
    server = await load_server(session, user, server_id)
    stmt = select(GatewayUsage).where(GatewayUsage.server_id == server.id)
    if since is not None:
        stmt = stmt.where(GatewayUsage.minute >= since)
    stmt = stmt.order_by(GatewayUsage.minute.desc(), GatewayUsage.key_name, GatewayUsage.method, GatewayUsage.tool)
    rows = (await session.scalars(stmt.limit(limit))).all()
    return ListOf[UsagePublic](count=len(rows), data=[UsagePublic.model_validate(r) for r in rows])
