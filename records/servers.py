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


async def open_server(
    session: AsyncSession,
    *,
    created_by: str,
    owner_id: uuid.UUID,
    name: str,
    slug: str,
    source: dict[str, Any],
    runtime: str | None,
    env: dict[str, Any],
    api_key_hash: str,
    api_key_prefix: str,
    webhook_secret: str,
    cpu_limit: float | None = None,
    memory_limit: int | None = None,
    use_gpu: bool = False,
    isolation: str | None = None,
    gateway: dict[str, Any] | None = None,
    required_certifications: list[dict[str, Any]] | None = None,
) -> Server:
    """A new server (`created`, serving nothing), in the caller's transaction; the gateways forget any
    "no such server" they cached for its slug. `env` and `webhook_secret` come sealed (core.crypto)."""
    server = Server(
        id=uuid.uuid4(),
        status=Status.CREATED,
        owner_id=owner_id,
        name=name,
        slug=slug,
        source=source,
        runtime=runtime,
        env=env,
        api_key_hash=api_key_hash,
        api_key_prefix=api_key_prefix,
        webhook_secret=webhook_secret,
        cpu_limit=cpu_limit,
        memory_limit=memory_limit,
        use_gpu=use_gpu,
        isolation=isolation,
        gateway=gateway or {},
        required_certifications=required_certifications or [],
    )
    session.add(server)
    session.add(ServerLog(server_id=server.id, message=f"server created by {created_by}"))
    await notify_route_changed(session, server.slug)
    return server
