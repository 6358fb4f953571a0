"""Deployment records: their states, how one is opened (the one way every deployment is made: the
deployments route, webhooks, rollback, promotions, remediation), which earlier revision a rollback serves
again, and the notice their followers get. Functions run inside the caller's transaction; whoever opens a
deployment starts its workflow after the commit, at most once per deployment."""

from __future__ import annotations

import copy
import hashlib
import json
import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core import db
from core.db import DEPLOYMENTS_CHANNEL
from core.errors import Conflict, InvalidInput
from core.isolation import isolation_refusal
from core.models import Deployment, Server
from core.settings import IMPLEMENTED_RUNTIMES
from core.sources import default_runtime_for, parse_source, runtime_refusal


def deploy_workflow_id(server_id: uuid.UUID, seq: int) -> str:
    return f"deploy-{server_id}-{seq}"


class Status(StrEnum):
    PENDING = "pending"
    DEPLOYING = "deploying"
    RUNNING = "running"
    FAILED = "failed"
    STOPPED = "stopped"  # it served, and a newer revision or a stop ended it
    SUPERSEDED = "superseded"  # a newer revision took over first (it may have served for a moment)
    CANCELLED = "cancelled"
    BLOCKED = "blocked"  # the policy gate refused it


IN_PROGRESS = (Status.PENDING, Status.DEPLOYING)
TERMINAL = (Status.RUNNING, Status.FAILED, Status.STOPPED, Status.SUPERSEDED, Status.CANCELLED, Status.BLOCKED)
# Statuses of a revision that may have reached the gateway; it did when its upstream_url is recorded.
SERVED = (Status.RUNNING, Status.STOPPED, Status.SUPERSEDED)
# Idempotency keys the platform makes itself: identical redeploys, webhook commits, rollbacks, promotions.
RESERVED_KEY_PREFIXES = ("auto:", "webhook:", "rollback:", "promotion:")


@dataclass
class Opened:
    deployment: Deployment
    replayed: bool  # an earlier request (same key, or the same deployment still under way) made it


def _fingerprint(spec: dict[str, Any], runtime: str) -> str:
    return hashlib.sha256(json.dumps([spec, runtime], sort_keys=True).encode()).hexdigest()[:32]


def current_spec(
    server: Server, container_runtime: str, *, source: dict[str, Any] | None = None
) -> tuple[dict[str, Any], str]:
    """What deploying the server now means: its source (or `source` in its place) and config, and the
    runtime it runs on. Refuses a source its runtime cannot run."""
    if server.status == "deleting":
        raise Conflict("the server is being deleted")
    raw = source if source is not None else server.source
    parsed = parse_source(raw)
    runtime = server.runtime or default_runtime_for(parsed, container_runtime)
    if runtime not in IMPLEMENTED_RUNTIMES:
        raise InvalidInput(f"a {parsed.type} source cannot run on the {runtime} runtime; change the server's runtime")
    refusal = runtime_refusal(runtime, parsed) or isolation_refusal(server.isolation, runtime)
    if refusal is not None:
        raise InvalidInput(refusal)
    return {"source": copy.deepcopy(raw), "env": server.env or {}}, runtime


async def open_deployment(
    session: AsyncSession,
    server: Server,
    *,
    spec: dict[str, Any],
    runtime: str,
    idempotency_key: str | None,
    created_by: uuid.UUID | None,
    workflow_id: str | None = None,
) -> Opened:
    """The deployment for this request, made now or found: by `idempotency_key` when given (whatever its
    status), else an identical one still under way. Runs inside the caller's transaction; `server` must be
    locked (SELECT ... FOR UPDATE) so two requests cannot both make one."""
    auto_prefix = f"auto:{_fingerprint(spec, runtime)}:"
    if idempotency_key:
        lookup = select(Deployment).where(
            Deployment.server_id == server.id, Deployment.idempotency_key == idempotency_key
        )
    else:
        lookup = select(Deployment).where(
            Deployment.server_id == server.id,
            Deployment.idempotency_key.startswith(auto_prefix, autoescape=True),
            Deployment.status.in_(IN_PROGRESS),
        )
    existing = await session.scalar(lookup.order_by(Deployment.seq.desc()).limit(1))
    if existing is not None:
        return Opened(existing, replayed=True)
    server.deploy_seq += 1
    deployment = Deployment(
        id=uuid.uuid4(),
        server_id=server.id,
        seq=server.deploy_seq,
        idempotency_key=idempotency_key or f"{auto_prefix}{server.deploy_seq}",
        workflow_id=workflow_id or deploy_workflow_id(server.id, server.deploy_seq),
        status=Status.PENDING,
        runtime=runtime,
        spec=spec,
        created_by=created_by,
    )
    session.add(deployment)
    return Opened(deployment, replayed=False)


def served(deployment: Deployment) -> bool:
    """Whether the revision reached the gateway once: it passed its health check and took the route."""
    return deployment.status in SERVED and deployment.upstream_url is not None


async def previous_served(session: AsyncSession, server: Server) -> Deployment | None:
    """The revision a rollback (manual, or a remediation's "redeploy previous") serves again: the newest
    one before the serving revision that reached the gateway."""
    earlier = select(Deployment).where(
        Deployment.server_id == server.id, Deployment.status.in_(SERVED), Deployment.upstream_url.is_not(None)
    )
    if server.active_deployment_id is not None:
        earlier = earlier.where(Deployment.id != server.active_deployment_id, Deployment.seq < server.active_seq)
    return await session.scalar(earlier.order_by(Deployment.seq.desc()).limit(1))


def rollback_source(target: Deployment) -> dict[str, Any]:
    """The source a rollback to `target` deploys: for git, the exact commit it ran (its artifact is reused)."""
    source = dict(target.spec["source"])
    if source.get("type") == "git" and target.revision:
        source["ref"] = target.revision
    return source


async def notify(session: AsyncSession, deployment_id: uuid.UUID) -> None:
    """Wake up whoever follows this deployment (SSE streams, the CLI); delivered when the transaction
    commits, never for a change that is rolled back."""
    await db.notify(session, DEPLOYMENTS_CHANNEL, str(deployment_id))


@dataclass
class InstanceRecord:
    """Where a deployment's instance runs and how it is reached: what workflows pass between activities and
    what `deployments.instance` holds (with the deployment's and server's ids from the row itself)."""

    runtime: str
    ref: str
    deployment_id: str
    server_id: str
    url: str
    # The task queue of the host holding the instance ("" in histories from before hosts had queues).
    host_queue: str = ""


def instance_json(instance: InstanceRecord) -> dict[str, str]:
    return {"runtime": instance.runtime, "ref": instance.ref, "url": instance.url, "host_queue": instance.host_queue}


def instance_of(deployment: Deployment) -> InstanceRecord | None:
    """The instance recorded for a deployment, or None when it has none."""
    data = deployment.instance
    if not data:
        return None
    return InstanceRecord(
        runtime=str(data.get("runtime", "")),
        ref=str(data.get("ref", "")),
        deployment_id=str(deployment.id),
        server_id=str(deployment.server_id),
        url=str(data.get("url", "")),
        host_queue=str(data.get("host_queue", "")),
    )


async def write_instance(session: AsyncSession, instance: InstanceRecord) -> None:
    """Record where a deployment's instance is and how the gateway reaches it."""
    await session.execute(
        update(Deployment)
        .where(Deployment.id == uuid.UUID(instance.deployment_id))
        .values(instance=instance_json(instance), upstream_url=instance.url)
    )
