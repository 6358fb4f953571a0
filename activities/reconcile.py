"""Activities of ReconcileWorkflow: set right what a workflow could not record, remove what nobody owns.

A deployment's workflow records every step in Postgres. If the database stays away longer than the
record activities retry, the workflow fails with its record still `deploying`, and the instance it
launched lives on with no record that owns it. Once the database is back, the reconciler finds

- deployment records still `pending`/`deploying` whose workflow has ended or does not exist: one that
  took the route (the server points at it) is `running`, any other is `failed`, with the reason; and
- instances on this host whose deployment is no longer wanted (ended, never took the route or was
  replaced) while no workflow of the server is running that would retire them itself.

Instances of servers this database does not know are left alone: a container engine may be shared
with another installation, and a deleted server's instances are removed by its delete workflow.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.client import WorkflowExecutionStatus
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.common import heartbeating
from core import temporal
from core.failures import RuntimeFailure
from core.models import Deployment, DeploymentStep, Server, ServerLog
from records.deployments import IN_PROGRESS, Status
from records.deployments import notify as notify_deployment
from records.servers import Status as ServerStatus
from runtimes.base import Executor

MARK = "reconciler"


@dataclass
class ReconcileInput:
    grace_seconds: float = 120.0


@dataclass
class ReconcileReport:
    # One line per record set right or instance removed.
    actions: list[str] = field(default_factory=list)


# Workflows that launch or remove a server's instances.
INSTANCE_WORKFLOWS = ("DeployWorkflow", "StopServerWorkflow", "DeleteServerWorkflow", "EvaluationRunWorkflow")


class ReconcileActivities:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], executors: dict[str, Executor]) -> None:
        self.sessionmaker = sessionmaker
        self.executors = executors

    async def _workflow_end(self, workflow_id: str) -> str | None:
        """None while the workflow runs; else how it ended (or that it does not exist)."""
        try:
            described = await activity.client().get_workflow_handle(workflow_id).describe()
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                return "does not exist (it never started, or its history is past retention)"
            raise
        if described.status in (None, WorkflowExecutionStatus.RUNNING):
            return None
        return f"ended {described.status.name.lower().replace('_', ' ')}"

    @activity.defn(name="reconcile_records")
    async def reconcile_records(self, data: ReconcileInput) -> ReconcileReport:
        cutoff = datetime.now(UTC) - timedelta(seconds=data.grace_seconds)
        async with self.sessionmaker() as session:
            stale = (
                await session.execute(
                    select(Deployment.id, Deployment.workflow_id).where(
                        Deployment.status.in_(IN_PROGRESS), Deployment.created_at < cutoff
                    )
                )
            ).all()
        report = ReconcileReport()
        for deployment_id, workflow_id in stale:
            activity.heartbeat(str(deployment_id))
            ended = await self._workflow_end(workflow_id)
            if ended is None:
                continue
            if line := await self._settle(deployment_id, workflow_id, ended):
                report.actions.append(line)
        return report

    async def _settle(self, deployment_id: uuid.UUID, workflow_id: str, ended: str) -> str | None:
        async with self.sessionmaker() as session, session.begin():
            deployment = await session.get(Deployment, deployment_id, with_for_update=True)
            if deployment is None or deployment.status not in IN_PROGRESS:
                return None  # it finished meanwhile
            server = await session.get(Server, deployment.server_id, with_for_update=True)
            assert server is not None
            serving = server.active_deployment_id == deployment.id
            why = f"its workflow {workflow_id} {ended} before recording how the deployment ended"
            if serving:
                deployment.status = Status.RUNNING
                deployment.error = f"{why}; it serves, so it is running ({MARK})"
            else:
                deployment.status = Status.FAILED
                deployment.error = f"{why}; set to failed by the {MARK}, its instance is removed"
                if server.active_deployment_id is None and server.status == ServerStatus.DEPLOYING:
                    server.status = ServerStatus.FAILED
            deployment.finished_at = datetime.now(UTC)
            # Steps it had started never finished.
            await session.execute(
                update(DeploymentStep)
                .where(DeploymentStep.deployment_id == deployment.id, DeploymentStep.status == "started")
                .values(status="failed", message=f"interrupted: {why}", finished_at=datetime.now(UTC))
            )
            level = "warning" if serving else "error"
            message = f"deployment {deployment.seq} {deployment.status}: {deployment.error}"
            session.add(ServerLog(server_id=server.id, deployment_id=deployment.id, level=level, message=message))
            await notify_deployment(session, deployment.id)
            return f"server {server.id} deployment {deployment.seq}: {deployment.status} ({ended})"

    async def _server_busy(self, server_id: str) -> bool:
        """Whether a deploy, stop or delete of the server is running (it retires what it replaces itself), or
        an evaluation (its candidate instance belongs to no deployment record). Governance runs, which can
        last days and launch nothing, do not count."""
        kinds = ", ".join(f"'{w}'" for w in INSTANCE_WORKFLOWS)
        query = (
            f"{temporal.SERVER_ID.name} = '{server_id}' AND ExecutionStatus = 'Running' AND WorkflowType IN ({kinds})"
        )
        async for _ in activity.client().list_workflows(query, limit=1):
            return True
        return False

    @activity.defn(name="reconcile_instances")
    async def reconcile_instances(self, data: ReconcileInput) -> ReconcileReport:
        """Remove this host's instances that no deployment owns any more."""
        cutoff = datetime.now(UTC) - timedelta(seconds=data.grace_seconds)
        report = ReconcileReport()
        for executor in self.executors.values():
            try:
                server_ids = await heartbeating(executor.server_ids(), "listing servers")
            except RuntimeFailure as exc:
                activity.logger.warning("reconciler: %s runtime not listed: %s", executor.name, exc.message)
                continue
            for server_id in server_ids:
                activity.heartbeat(server_id)
                report.actions.extend(await self._reconcile_server(executor, server_id, cutoff))
        return report

    async def _reconcile_server(self, executor: Executor, server_id: str, cutoff: datetime) -> list[str]:
        instances = await executor.instances(server_id)
        if not instances:
            return []
        async with self.sessionmaker() as session:
            server = await session.get(Server, uuid.UUID(server_id))
            if server is None:
                return []  # not this installation's (or its delete workflow is on it)
            wanted = {uuid.UUID(i.deployment_id) for i in instances if _is_uuid(i.deployment_id)}
            rows = (
                await session.execute(
                    select(Deployment.id, Deployment.status, Deployment.finished_at).where(Deployment.id.in_(wanted))
                )
            ).all()
            active = server.active_deployment_id
        known = {str(row.id): row for row in rows}
        orphans = []
        for instance in instances:
            row = known.get(instance.deployment_id)
            if row is not None and (row.status in IN_PROGRESS or row.id == active):
                continue  # being deployed, or serving
            if row is not None and row.finished_at is not None and row.finished_at > cutoff:
                continue  # just ended: its own workflow may be retiring it right now
            orphans.append(instance)
        if not orphans or await self._server_busy(server_id):
            return []
        actions = []
        for instance in orphans:
            try:
                await heartbeating(executor.remove(instance), "removing")
            except RuntimeFailure as exc:
                raise ApplicationError(f"could not remove instance {instance.ref}: {exc.message}") from None
            row = known.get(instance.deployment_id)
            why = f"its deployment is {row.status}" if row is not None else "no deployment record owns it"
            line = f"removed {executor.name} instance {instance.ref} of deployment {instance.deployment_id}: {why}"
            actions.append(f"server {server_id}: {line}")
            async with self.sessionmaker() as session, session.begin():
                if await session.get(Server, uuid.UUID(server_id)) is not None:
                    session.add(ServerLog(server_id=uuid.UUID(server_id), level="warning", message=f"{MARK}: {line}"))
        return actions

    def all(self) -> list[Any]:
        return [self.reconcile_records, self.reconcile_instances]


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True
