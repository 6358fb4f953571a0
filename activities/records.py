"""Activities that record what happened in Postgres. Each is idempotent: safe to run twice."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.build_types import ArtifactImage
from activities.common import as_application_error
from core.db import notify_route_changed
from core.failures import RuntimeFailure
from core.files import remove_data_dir
from core.models import Deployment, DeploymentStep, GatewaySession, Server, ServerLog, ServerSecret
from core.secretstore import SecretStore, SecretStoreError
from records.deployments import TERMINAL, InstanceRecord, Status, write_instance
from records.deployments import notify as notify_deployment
from records.servers import Status as ServerStatus

# Set in a deployment's instance record once its host has retired everything of it: no host need be asked again.
RETIRED = "retired"


@dataclass
class DeploymentPlan:
    deployment_id: str
    server_id: str
    slug: str
    seq: int
    runtime: str
    source_type: str


@dataclass
class RecordImage:
    deployment_id: str
    image: ArtifactImage


@dataclass
class StepRecord:
    deployment_id: str
    step: str
    status: str  # started | succeeded | failed
    message: str | None = None


@dataclass
class StepBatch:
    deployment_id: str
    steps: list[StepRecord] = field(default_factory=list)
    # Recorded first, in the same transaction: the instance the step before launched.
    instance: InstanceRecord | None = None


@dataclass
class InstanceHosts:
    # Host task queues that may still hold instances of the server; "" stands for the shared task queue.
    host_queues: list[str] = field(default_factory=list)


@dataclass
class ServerNote:
    server_id: str
    message: str
    level: str = "warning"


@dataclass
class ActivateInput:
    deployment_id: str
    instance: InstanceRecord


@dataclass
class ActivateResult:
    activated: bool
    previous_deployment_id: str | None = None


@dataclass
class FinishInput:
    deployment_id: str
    status: str  # failed | superseded | cancelled
    error: str | None = None


@dataclass
class DrainQuery:
    server_id: str
    keep_deployment_id: str


@dataclass
class DrainState:
    active: int  # session-era sessions on earlier revisions, in use within the idle window
    pinned: int  # such sessions not ended yet, in use or not
    drain_seconds: float


@dataclass
class ServerRef:
    server_id: str


class RecordActivities:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        state_dir: Path | None = None,
        *,
        drain_seconds: float = 300.0,
        session_idle_seconds: float = 60.0,
        secrets: SecretStore | None = None,
        forget: list[Callable[[str], Awaitable[None]]] | None = None,
    ) -> None:
        self.secrets = secrets
        # What runtimes keep per server beyond its instances (a cluster's volume claim), dropped on delete.
        self.forget = forget or []
        self.sessionmaker = sessionmaker
        # How long sessions opened on an earlier revision keep it after a redeploy, and how long without a
        # request (or an open stream) a session counts as no longer in use.
        self.drain_seconds = drain_seconds
        self.session_idle_seconds = session_idle_seconds
        # Where servers' /data directories live; None leaves them alone (tests of the records only).
        self.state_dir = state_dir

    async def _log(
        self,
        session: AsyncSession,
        server_id: uuid.UUID,
        deployment_id: uuid.UUID | None,
        message: str,
        level: str = "info",
    ) -> None:
        session.add(ServerLog(server_id=server_id, deployment_id=deployment_id, level=level, message=message))

    @activity.defn(name="load_plan")
    async def load_plan(self, deployment_id: str) -> DeploymentPlan:
        async with self.sessionmaker() as session, session.begin():
            row = (
                await session.execute(
                    select(Deployment, Server)
                    .join(Server, Server.id == Deployment.server_id)
                    .where(Deployment.id == uuid.UUID(deployment_id))
                )
            ).first()
            if row is None:
                raise ApplicationError(f"deployment {deployment_id} no longer exists", type="gone", non_retryable=True)
            deployment, server = row
            if deployment.status == "pending":
                deployment.status = "deploying"
                server.status = "deploying" if server.active_deployment_id is None else server.status
            return DeploymentPlan(
                deployment_id=deployment_id,
                server_id=str(server.id),
                slug=server.slug,
                seq=deployment.seq,
                runtime=deployment.runtime or "process",
                source_type=str(deployment.spec["source"]["type"]),
            )

    @activity.defn(name="record_step")
    async def record_step(self, record: StepRecord) -> None:
        async with self.sessionmaker() as session, session.begin():
            await self._write_steps(session, record.deployment_id, [record])

    @activity.defn(name="record_steps")
    async def record_steps(self, batch: StepBatch) -> None:
        """Consecutive step records (and the instance just launched) in one transaction."""
        async with self.sessionmaker() as session, session.begin():
            if batch.instance is not None:
                await write_instance(session, batch.instance)
            await self._write_steps(session, batch.deployment_id, batch.steps)

    async def _write_steps(self, session: AsyncSession, deployment_id: str, records: list[StepRecord]) -> None:
        dep_id = uuid.UUID(deployment_id)
        server_id = await session.scalar(select(Deployment.server_id).where(Deployment.id == dep_id))
        if server_id is None or not records:
            return
        for record in records:
            finished = func.now() if record.status != "started" else None
            stmt = insert(DeploymentStep).values(
                deployment_id=dep_id,
                step=record.step,
                status=record.status,
                message=record.message,
                finished_at=finished,
            )
            # A retried "started" counts an attempt; a later status just updates the row.
            attempts = DeploymentStep.attempts + 1 if record.status == "started" else DeploymentStep.attempts
            stmt = stmt.on_conflict_do_update(
                constraint="uq_deployment_steps_step",
                set_={
                    "status": record.status,
                    "message": record.message,
                    "finished_at": finished,
                    "attempts": attempts,
                },
            )
            await session.execute(stmt)
            text_ = f"{record.step}: {record.status}" + (f" - {record.message}" if record.message else "")
            await self._log(session, server_id, dep_id, text_, "error" if record.status == "failed" else "info")
        await session.execute(update(Deployment).where(Deployment.id == dep_id).values(step=records[-1].step))
        await notify_deployment(session, dep_id)

    @activity.defn(name="record_image")
    async def record_image(self, data: RecordImage) -> None:
        """The image a git deployment runs: launch reads it from here (with the port and path inside it)."""
        async with self.sessionmaker() as session, session.begin():
            deployment = await session.get(Deployment, uuid.UUID(data.deployment_id), with_for_update=True)
            if deployment is None:
                raise ApplicationError("deployment no longer exists", type="gone", non_retryable=True)
            image = data.image
            deployment.artifact_id = uuid.UUID(image.artifact_id)
            deployment.image_ref = image.image_ref
            deployment.image_digest = image.digest
            deployment.spec = {
                **deployment.spec,
                "built": {"image": image.image_ref, "port": image.port, "path": image.path},
            }

    @activity.defn(name="instance_hosts")
    async def instance_hosts(self, data: ServerRef) -> InstanceHosts:
        """Where the server's instances may still be: the hosts of its recorded instances not yet retired."""
        async with self.sessionmaker() as session:
            rows = await session.execute(
                select(Deployment.status, Deployment.instance).where(Deployment.server_id == uuid.UUID(data.server_id))
            )
            queues: set[str] = set()
            for status, instance in rows.all():
                if not instance or instance.get(RETIRED):
                    continue
                queue = str(instance.get("host_queue") or "")
                # A record from before hosts had queues names none; while it may still serve, the shared queue
                # stands in for its host, as it did when it was launched.
                if queue or status in (Status.DEPLOYING, Status.RUNNING):
                    queues.add(queue)
        return InstanceHosts(host_queues=sorted(queues))

    @activity.defn(name="note_server")
    async def note_server(self, data: ServerNote) -> None:
        async with self.sessionmaker() as session, session.begin():
            if await session.get(Server, uuid.UUID(data.server_id)) is not None:
                await self._log(session, uuid.UUID(data.server_id), None, data.message, data.level)

    @activity.defn(name="activate")
    async def activate(self, data: ActivateInput) -> ActivateResult:
        """Point the gateway at this deployment, unless a newer one already serves (or a stop came after)."""
        dep_id = uuid.UUID(data.deployment_id)
        async with self.sessionmaker() as session, session.begin():
            deployment = await session.get(Deployment, dep_id, with_for_update=True)
            if deployment is None:
                raise ApplicationError("deployment no longer exists", type="gone", non_retryable=True)
            server = await session.get(Server, deployment.server_id, with_for_update=True)
            assert server is not None
            if server.active_deployment_id == dep_id:
                return ActivateResult(activated=True)  # this step already ran
            if server.active_seq >= deployment.seq:
                return ActivateResult(activated=False)
            previous = server.active_deployment_id
            server.active_deployment_id = dep_id
            server.active_seq = deployment.seq
            server.status = ServerStatus.RUNNING
            # The health check stored them on the deployment record.
            server.capabilities = deployment.capabilities
            # The deployment itself turns "running" in complete_deployment, once the earlier revision
            # is retired and every step is recorded: a client that sees "running" sees a finished record.
            deployment.upstream_url = data.instance.url
            await self._log(session, server.id, dep_id, f"serving revision {deployment.seq}")
            await notify_route_changed(session, server.slug)
            return ActivateResult(activated=True, previous_deployment_id=str(previous) if previous else None)

    @activity.defn(name="draining_sessions")
    async def draining_sessions(self, data: DrainQuery) -> DrainState:
        """Session-era MCP sessions still pinned to the server's earlier revisions (see gateway.sessions)."""
        earlier = (
            GatewaySession.server_id == uuid.UUID(data.server_id),
            GatewaySession.deployment_id != uuid.UUID(data.keep_deployment_id),
            GatewaySession.ended_at.is_(None),
        )
        cutoff = datetime.now(UTC) - timedelta(seconds=self.session_idle_seconds)
        async with self.sessionmaker() as session:
            pinned = await session.scalar(select(func.count()).select_from(GatewaySession).where(*earlier))
            active = 0
            if pinned:
                active = (
                    await session.scalar(
                        select(func.count())
                        .select_from(GatewaySession)
                        .where(*earlier, GatewaySession.last_seen_at > cutoff)
                    )
                    or 0
                )
        return DrainState(active=active, pinned=pinned or 0, drain_seconds=self.drain_seconds)

    @activity.defn(name="end_drain")
    async def end_drain(self, data: DrainQuery) -> int:
        """End the pins of every earlier revision's sessions, so the gateway sends nothing more there; their
        clients get 404 on their next request and start a new session, on the serving revision."""
        async with self.sessionmaker() as session, session.begin():
            ended = await session.execute(
                update(GatewaySession)
                .where(
                    GatewaySession.server_id == uuid.UUID(data.server_id),
                    GatewaySession.deployment_id != uuid.UUID(data.keep_deployment_id),
                    GatewaySession.ended_at.is_(None),
                )
                .values(ended_at=func.now())
            )
            server = await session.get(Server, uuid.UUID(data.server_id))
            if server is not None:
                await notify_route_changed(session, server.slug)
        return int(ended.rowcount or 0)  # type: ignore[attr-defined]

    @activity.defn(name="complete_deployment")
    async def complete_deployment(self, deployment_id: str) -> str:
        """The deployment's final status once its steps are done: ``running`` when the gateway still
        serves it (earlier running revisions become ``stopped``), else ``superseded`` by a newer
        revision or ``stopped`` by a stop that came meanwhile."""
        dep_id = uuid.UUID(deployment_id)
        async with self.sessionmaker() as session, session.begin():
            deployment = await session.get(Deployment, dep_id, with_for_update=True)
            if deployment is None:
                raise ApplicationError("deployment no longer exists", type="gone", non_retryable=True)
            if deployment.status in TERMINAL:
                return deployment.status  # this step already ran
            server = await session.get(Server, deployment.server_id, with_for_update=True)
            assert server is not None
            if server.active_deployment_id == dep_id:
                status = Status.RUNNING
                await session.execute(
                    update(Deployment)
                    .where(
                        Deployment.server_id == server.id,
                        Deployment.status == Status.RUNNING,
                        Deployment.seq < deployment.seq,
                    )
                    .values(status=Status.STOPPED, finished_at=func.coalesce(Deployment.finished_at, func.now()))
                )
            else:
                status = Status.STOPPED if server.active_deployment_id is None else Status.SUPERSEDED
                deployment.error = "a stop came first" if status == Status.STOPPED else "a newer deployment took over"
            deployment.status = status
            deployment.finished_at = func.now()
            await notify_deployment(session, dep_id)
            return status

    @activity.defn(name="finish_deployment")
    async def finish_deployment(self, data: FinishInput) -> None:
        dep_id = uuid.UUID(data.deployment_id)
        async with self.sessionmaker() as session, session.begin():
            deployment = await session.get(Deployment, dep_id, with_for_update=True)
            if deployment is None or deployment.status in TERMINAL:
                return
            deployment.status = data.status
            deployment.error = data.error
            deployment.finished_at = func.now()
            server = await session.get(Server, deployment.server_id, with_for_update=True)
            assert server is not None
            if server.active_deployment_id is None and server.status == ServerStatus.DEPLOYING:
                ended = data.status in (Status.FAILED, Status.BLOCKED)
                server.status = ServerStatus(data.status) if ended else ServerStatus.STOPPED
            level = "error" if data.status == "failed" else "warning" if data.status == "blocked" else "info"
            await self._log(session, server.id, dep_id, f"deployment {data.status}: {data.error or ''}".strip(), level)
            await notify_deployment(session, dep_id)

    @activity.defn(name="note_deployment")
    async def note_deployment(self, data: FinishInput) -> None:
        """Keep a warning on a deployment that runs (a step after its route switch failed)."""
        dep_id = uuid.UUID(data.deployment_id)
        async with self.sessionmaker() as session, session.begin():
            deployment = await session.get(Deployment, dep_id, with_for_update=True)
            if deployment is None:
                return
            deployment.error = data.error
            await self._log(session, deployment.server_id, dep_id, f"warning: {data.error}", "warning")
            await notify_deployment(session, dep_id)

    @activity.defn(name="deactivate_server")
    async def deactivate_server(self, data: ServerRef) -> None:
        """Take the server off the gateway and stop any deployment still under way from taking it back."""
        async with self.sessionmaker() as session, session.begin():
            server = await session.get(Server, uuid.UUID(data.server_id), with_for_update=True)
            if server is None:
                return
            server.active_deployment_id = None
            server.active_seq = server.deploy_seq
            if server.status != ServerStatus.DELETING:
                server.status = ServerStatus.STOPPING
            await session.execute(
                update(Deployment)
                .where(Deployment.server_id == server.id, Deployment.status == Status.RUNNING)
                .values(status=Status.STOPPED)
            )
            await self._log(session, server.id, None, "server stopped")
            await notify_route_changed(session, server.slug)

    @activity.defn(name="mark_server_stopped")
    async def mark_server_stopped(self, data: ServerRef) -> None:
        """Called once the instances are gone; a deploy started meanwhile keeps its own status."""
        async with self.sessionmaker() as session, session.begin():
            await session.execute(
                update(Server)
                .where(Server.id == uuid.UUID(data.server_id), Server.status == ServerStatus.STOPPING)
                .values(status=ServerStatus.STOPPED)
            )

    @activity.defn(name="delete_server_records")
    async def delete_server_records(self, data: ServerRef) -> None:
        """Delete the server's rows, then its /data directory.

        Rows first: once they are gone no upload can reach the directory again. A failed removal is
        retried with the activity, and finding nothing left is success. Secrets kept in Vault are
        destroyed before their rows go (a retry finds them gone, which is fine)."""
        if self.secrets is not None:
            async with self.sessionmaker() as session:
                kept = (
                    await session.execute(
                        select(ServerSecret.backend, ServerSecret.vault_path).where(
                            ServerSecret.server_id == uuid.UUID(data.server_id), ServerSecret.backend == "vault"
                        )
                    )
                ).all()
            for backend, path in kept:
                try:
                    await self.secrets.delete(backend, path)
                except SecretStoreError as exc:
                    raise ApplicationError(str(exc), type="secret_store", non_retryable=exc.permanent) from None
        for forget in self.forget:
            try:
                await forget(data.server_id)
            except RuntimeFailure as exc:
                raise as_application_error(exc) from None
        async with self.sessionmaker() as session, session.begin():
            slug = await session.scalar(select(Server.slug).where(Server.id == uuid.UUID(data.server_id)))
            await session.execute(delete(Server).where(Server.id == uuid.UUID(data.server_id)))
            if slug:
                await notify_route_changed(session, slug)
        if self.state_dir is not None:
            await asyncio.to_thread(remove_data_dir, self.state_dir, data.server_id)

    def all(self) -> list[Any]:
        return [
            self.load_plan,
            self.record_step,
            self.record_steps,
            self.record_image,
            self.instance_hosts,
            self.note_server,
            self.activate,
            self.complete_deployment,
            self.draining_sessions,
            self.end_drain,
            self.finish_deployment,
            self.note_deployment,
            self.deactivate_server,
            self.mark_server_stopped,
            self.delete_server_records,
        ]
