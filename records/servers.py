"""Servers: the record a server is created as, and the statuses it moves through. The API creates it;
deployments, stops, supervision and the reconciler move it (their triggers announce each change)."""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from core.db import notify_route_changed
from core.models import Server, ServerLog


class Status(StrEnum):
    """`created` until its first deployment (`deploying`); `running` (or `degraded` while supervision
    sees it unhealthy) once a revision serves; `failed` or `blocked` when a deployment could not serve;
    `stopping` -> `stopped`; `deleting` until its DeleteServerWorkflow removes the record."""

    CREATED = "created"
    DEPLOYING = "deploying"
    RUNNING = "running"
    DEGRADED = "degraded"
    FAILED = "failed"
    BLOCKED = "blocked"
    STOPPING = "stopping"
    STOPPED = "stopped"
    DELETING = "deleting"


# A revision of the server serves.
SERVING = (Status.RUNNING, Status.DEGRADED)


async def open_server(session: AsyncSession, *, created_by: str, **fields: Any) -> Server:
    """A new server (`created`, serving nothing), in the caller's transaction; the gateways forget any
    "no such server" they cached for its slug."""
    server = Server(id=uuid.uuid4(), status=Status.CREATED, **fields)
    session.add(server)
    session.add(ServerLog(server_id=server.id, message=f"server created by {created_by}"))
    await notify_route_changed(session, server.slug)
    return server
