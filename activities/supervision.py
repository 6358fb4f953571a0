"""Activities of SupervisorWorkflow: probe the serving instance, restart it, record what happened.

Probe and restart run on the instance's host queue. Each first asks the database whether the revision
still serves: a stopped, deleted or redeployed server ends its supervision instead of being revived."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity

from activities.common import as_application_error, heartbeating
from activities.health import probe_mcp
from activities.records import InstanceRecord, write_instance
from activities.runtime import RuntimeActivities, from_record
from core.db import notify_route_changed
from core.failures import RuntimeFailure
from core.models import Deployment, Server, ServerLog, UsageMetric
from core.telemetry import BuildEvent, log_event
from records.servers import SERVING
from records.servers import Status as ServerStatus
from runtimes.base import Instance


@dataclass
class ProbeInput:
    instance: InstanceRecord
    timeout_seconds: float = 10.0


@dataclass
class ProbeResult:
    state: str  # healthy | unhealthy | crashed | gone
    detail: str = ""


@dataclass
class RestartInput:
    instance: InstanceRecord  # the failed one: removed (if still there) before a new one is launched


@dataclass
class RestartResult:
    gone: bool
    instance: InstanceRecord | None = None


@dataclass
class SupervisionEvent:
    server_id: str
    deployment_id: str
    event: str  # unhealthy | restart | recovered | degraded
    message: str
    attempt: int | None = None
    backoff_seconds: float | None = None
    failures: int | None = None
    degraded: bool | None = None  # set the server's status to degraded (True) or back to running (False)
    key: str = ""  # unique per event of one supervisor: a retried record writes nothing twice


class SupervisionActivities:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], runtime: RuntimeActivities) -> None:
        self.sessionmaker = sessionmaker
        self.runtime = runtime

    async def _serves(self, deployment_id: str) -> bool:
        async with self.sessionmaker() as session:
            deployment = await session.get(Deployment, uuid.UUID(deployment_id))
            if deployment is None:
                return False
            server = await session.get(Server, deployment.server_id)
            return server is not None and server.active_deployment_id == deployment.id and server.status in SERVING

    @activity.defn(name="supervise_probe")
    async def supervise_probe(self, data: ProbeInput) -> ProbeResult:
        if not await self._serves(data.instance.deployment_id):
            return ProbeResult(state="gone", detail="the revision no longer serves")
        instance = from_record(data.instance)
        executor = self.runtime.executor(instance.runtime)
        status = await executor.status(instance)
        if status.state != "running":
            return ProbeResult(state="crashed", detail=f"the instance is {status.state} (exit code {status.exit_code})")
        try:
            await heartbeating(probe_mcp(instance.url, timeout=data.timeout_seconds), "probing")
        except Exception as exc:  # any failure to speak MCP is unhealthy
            return ProbeResult(state="unhealthy", detail=f"{type(exc).__name__}: {exc}"[:500])
        return ProbeResult(state="healthy")

    @activity.defn(name="supervise_restart")
    async def supervise_restart(self, data: RestartInput) -> RestartResult:
        """Replace the failed instance with a new one of the same revision. Idempotent: a retry finds the
        instance the earlier attempt launched (running) and keeps it, so there is never a second one."""
        if not await self._serves(data.instance.deployment_id):
            return RestartResult(gone=True)
        failed = from_record(data.instance)
        executor, spec = await self.runtime.launch_spec(data.instance.deployment_id, with_secrets=True)
        try:
            # The failed instance is removed where it runs: a revision asked for on one runtime may run on
            # its fallback (a kubernetes or VM revision on docker).
            holder = self.runtime.executors.get(failed.runtime, executor)
            for instance in await holder.instances(failed.server_id):
                if instance.deployment_id == failed.deployment_id and instance.ref == failed.ref:
                    await heartbeating(holder.remove(instance), "removing the failed instance")
            fresh = await heartbeating(self.runtime.start_instance(executor, spec, fresh=True), "launching")
        except RuntimeFailure as exc:
            raise as_application_error(exc) from None
        await heartbeating(self._until_answering(fresh), "waiting for the new instance to answer MCP")
        record = InstanceRecord(
            runtime=fresh.runtime,
            ref=fresh.ref,
            deployment_id=fresh.deployment_id,
            server_id=fresh.server_id,
            url=fresh.url,
            host_queue=data.instance.host_queue,
        )
        async with self.sessionmaker() as session, session.begin():
            deployment = await session.get(Deployment, uuid.UUID(record.deployment_id), with_for_update=True)
            server = await session.get(Server, uuid.UUID(record.server_id), with_for_update=True)
            if deployment is None or server is None or server.active_deployment_id != deployment.id:
                # Redeployed or stopped while restarting: the new instance must not linger.
                await executor.remove(fresh)
                return RestartResult(gone=True)
            await write_instance(session, record)
            await notify_route_changed(session, server.slug)
        return RestartResult(gone=False, instance=record)

    async def _until_answering(self, instance: Instance, within: float = 60.0) -> None:
        """Give the new instance its start-up time: the next probe should find it answering, not starting.
        One that does not answer within `within` is left to the next probe to judge."""
        executor = self.runtime.executor(instance.runtime)
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if (await executor.status(instance)).state != "running":
                return
            try:
                await probe_mcp(instance.url, timeout=min(5.0, max(0.5, deadline - time.monotonic())))
                return
            except Exception:
                await asyncio.sleep(0.2)

    @activity.defn(name="record_supervision")
    async def record_supervision(self, data: SupervisionEvent) -> None:
        details = BuildEvent(
            deployment_id=data.deployment_id,
            reason=data.message[:500],
            attempt=data.attempt,
            backoff_seconds=data.backoff_seconds,
            failures=data.failures,
            event_key=data.key or None,
        ).stored()
        server_id, dep_id = uuid.UUID(data.server_id), uuid.UUID(data.deployment_id)
        async with self.sessionmaker() as session, session.begin():
            if data.key:
                seen = await session.scalar(
                    select(UsageMetric.id).where(
                        UsageMetric.server_id == server_id, UsageMetric.details["event_key"].astext == data.key
                    )
                )
                if seen is not None:
                    return  # this record was written by an earlier attempt
            if await session.get(Server, server_id) is None:
                return
            level = "info" if data.event == "recovered" else "warning"
            session.add(ServerLog(server_id=server_id, deployment_id=dep_id, level=level, message=data.message))
            session.add(UsageMetric(server_id=server_id, event=data.event, details=details))
            if data.degraded is not None:
                await session.execute(
                    update(Server)
                    .where(Server.id == server_id, Server.active_deployment_id == dep_id, Server.status.in_(SERVING))
                    .values(status=ServerStatus.DEGRADED if data.degraded else ServerStatus.RUNNING)
                )
        log_event(data.server_id, data.event, details)

    def all(self) -> list[Any]:
        return [self.supervise_probe, self.supervise_restart, self.record_supervision]
