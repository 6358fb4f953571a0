"""Activities of remediation runs: record what a run did (idempotently, each change bumping the run's
version), carry out its steps, and start the runs of the playbooks bound to a server when it turns
degraded or its guest untrusted."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.common import heartbeating
from core.attestation import now_utc
from core.errors import DomainError
from core.gitpolicy import GitUrlRejected, check_git_url_resolves_public
from core.models import (
    Deployment,
    RemediationArtifact,
    RemediationBinding,
    RemediationPlaybook,
    RemediationRun,
    Server,
    ServerLog,
    User,
)
from core.remediation import ACTIVE, EXIT_OK, EXIT_STEP_FAILED, HttpStep, ResourcesStep
from core.settings import Settings
from records.deployments import (
    InstanceRecord,
    current_spec,
    instance_of,
    open_deployment,
    previous_served,
    rollback_source,
)
from records.remediation_runs import notify_run, open_run

log = logging.getLogger("mcphost.remediation")

ARTIFACT_LIMIT = 16 * 1024


@dataclass
class RunRecord:
    """A change of a run. `key` makes it happen once: a retried record finds its artifact and stops."""

    run_id: str
    key: str
    message: str
    step: str | None = None
    kind: str = "log"
    status: str | None = None
    current_step: str | None = None
    result: dict[str, Any] | None = None
    exit_code: int | None = None
    reason: str | None = None
    sla_breached: bool | None = None
    finished: bool = False


@dataclass
class StepInput:
    run_id: str
    server_id: str
    index: int
    step: dict[str, Any]


@dataclass
class StepResult:
    ok: bool
    exit_code: int = EXIT_OK
    reason: str = ""
    detail: str = ""
    # restart: the serving instance to replace (the workflow restarts it on its host).
    instance: InstanceRecord | None = None
    # redeploy_previous: the deployment opened (the workflow runs it as a child DeployWorkflow).
    deployment_id: str = ""
    workflow_id: str = ""
    start: bool = False


@dataclass
class TriggerInput:
    server_id: str
    trigger: str  # degraded | untrusted
    detail: str = ""


@dataclass
class Triggered:
    run_ids: list[str] = field(default_factory=list)


def failed(reason: str, detail: str) -> StepResult:
    """A failed step: exit code 10 and the typed reason `step_failed:<kind>:<why>`."""
    return StepResult(False, EXIT_STEP_FAILED, f"step_failed:{reason}", detail)


# (run id, server id, requester id, playbook definition, workflow id): starts the run's workflow; an
# already started one is fine.
StartRun = Callable[[str, str, str, dict[str, Any], str], Awaitable[None]]


class RemediationActivities:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        settings: Settings,
        *,
        start_run: StartRun | None = None,
        refresh_credentials: Callable[[], Awaitable[str | None]] | None = None,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.settings = settings
        self.start_run = start_run
        self.refresh_credentials = refresh_credentials

    @activity.defn(name="remediation_record")
    async def remediation_record(self, data: RunRecord) -> int:
        """Apply a change to the run once; returns the run's version after it."""
        run_id = uuid.UUID(data.run_id)
        async with self.sessionmaker() as session, session.begin():
            run = await session.get(RemediationRun, run_id, with_for_update=True)
            if run is None:
                raise ApplicationError("the remediation run no longer exists", type="gone", non_retryable=True)
            added = await session.execute(
                insert(RemediationArtifact)
                .values(
                    run_id=run_id,
                    key=f"{data.run_id}:{data.key}",
                    step=data.step,
                    kind=data.kind,
                    content=data.message[:ARTIFACT_LIMIT],
                )  # fmt: skip
                .on_conflict_do_nothing(index_elements=["key"])
                .returning(RemediationArtifact.id)
            )
            if added.first() is None:
                return run.version  # applied by an earlier attempt
            if data.status is not None:
                run.status = data.status
            if data.current_step is not None:
                run.current_step = data.current_step or None
            if data.result is not None:
                run.results = [*run.results, data.result]
            if data.exit_code is not None:
                run.exit_code = data.exit_code
            if data.reason is not None:
                run.reason = data.reason
            if data.sla_breached is not None:
                run.sla_breached = data.sla_breached
            if data.finished:
                run.finished_at = now_utc()
                run.current_step = None
            run.version += 1
            run.updated_at = now_utc()
            await notify_run(session, run.id, run.server_id)
            return run.version

    @activity.defn(name="remediation_step")
    async def remediation_step(self, data: StepInput) -> StepResult:
        """One step, heartbeating while it works: a worker that dies mid-step is noticed within the
        heartbeat timeout and the step is retried on another (an `http` step sends the same
        Idempotency-Key each attempt)."""
        return await heartbeating(self._step(data), data.step.get("name", ""))

    async def _step(self, data: StepInput) -> StepResult:
        kind = data.step.get("kind")
        if kind == "restart":
            return await self._target(data)
        if kind == "redeploy_previous":
            return await self._open_previous(data)
        if kind == "rotate_registry_credentials":
            if self.refresh_credentials is None or not self.settings.registry_auth_refresher:
                return failed("rotate_registry_credentials:no-refresher", "REGISTRY_AUTH_REFRESHER is not set here")
            problem = await self.refresh_credentials()
            if problem is not None:
                return failed("rotate_registry_credentials:refresher", problem[:500])
            return StepResult(True, detail="registry credentials refreshed")
        if kind == "resources":
            return await self._resources(data, ResourcesStep.model_validate(data.step))
        if kind == "http":
            return await self._http(data, HttpStep.model_validate(data.step))
        if kind == "notify":
            async with self.sessionmaker() as session, session.begin():
                session.add(
                    ServerLog(server_id=uuid.UUID(data.server_id), message=f"remediation: {data.step['message']}")
                )
            return StepResult(True, detail=str(data.step["message"]))
        raise ApplicationError(f"unknown step kind {kind!r}", type="invalid_playbook", non_retryable=True)

    async def _target(self, data: StepInput) -> StepResult:
        async with self.sessionmaker() as session:
            server = await session.get(Server, uuid.UUID(data.server_id))
            active = (
                await session.get(Deployment, server.active_deployment_id)
                if server and server.active_deployment_id
                else None
            )
        record = instance_of(active) if active is not None else None
        if active is None or record is None:
            return failed("restart:not-serving", "the server serves no revision")
        return StepResult(True, detail=f"restarting revision {active.seq}", instance=record)

    async def _open_previous(self, data: StepInput) -> StepResult:
        async with self.sessionmaker() as session, session.begin():
            server = await session.get(Server, uuid.UUID(data.server_id), with_for_update=True)
            if server is None:
                return failed("redeploy_previous:gone", "the server is gone")
            target = await previous_served(session, server)
            if target is None:
                return failed("redeploy_previous:no-previous-revision", "no earlier revision of this server has served")
            try:
                spec, runtime = current_spec(server, self.settings.container_runtime, source=rollback_source(target))
            except DomainError as exc:
                return failed("redeploy_previous:refused", str(exc))
            spec["env"] = target.spec.get("env") or {}
            opened = await open_deployment(
                session,
                server,
                spec=spec,
                runtime=target.runtime or runtime,
                idempotency_key=f"remediation:{data.run_id}:{data.index}",
                created_by=None,
            )
            deployment = opened.deployment
            if not opened.replayed:
                session.add(ServerLog(server_id=server.id, deployment_id=deployment.id,
                                      message=f"remediation: redeploying revision {target.seq}"))  # fmt: skip
        return StepResult(
            True,
            detail=f"redeploying revision {target.seq} as revision {deployment.seq}",
            deployment_id=str(deployment.id),
            workflow_id=deployment.workflow_id,
            start=deployment.status == "pending",
        )

    async def _resources(self, data: StepInput, step: ResourcesStep) -> StepResult:
        async with self.sessionmaker() as session, session.begin():
            server = await session.get(Server, uuid.UUID(data.server_id), with_for_update=True)
            if server is None:
                return failed("resources:gone", "the server is gone")
            owner = await session.get(User, server.owner_id)
            if owner is None or owner.role != "admin":
                cpu_over = step.cpu is not None and step.cpu > self.settings.max_cpu_limit
                memory_over = step.memory_mib is not None and step.memory_mib > self.settings.max_memory_limit
                if cpu_over or memory_over:
                    return failed(
                        "resources:over-limit",
                        f"at most {self.settings.max_cpu_limit:g} cores and {self.settings.max_memory_limit} MiB "
                        "for a non-administrator's server",
                    )
            changed = []
            if step.cpu is not None:
                server.cpu_limit = step.cpu
                changed.append(f"cpu {step.cpu:g}")
            if step.memory_mib is not None:
                server.memory_limit = step.memory_mib
                changed.append(f"memory {step.memory_mib} MiB")
        return StepResult(True, detail="resources set: " + ", ".join(changed) + " (from the next launch)")

    async def _http(self, data: StepInput, step: HttpStep) -> StepResult:
        url = str(step.url)
        try:
            check_git_url_resolves_public(url, self.settings.remediation_allow_private_urls)
        except GitUrlRejected as exc:
            # The git policy's words, minus its advice: what opens this door is a setting of its own.
            why = str(exc).split(";")[0].replace("repositories", "endpoints").replace("repository", "endpoint")
            return failed(
                "http:url-refused",
                f"{why}; remediation calls go to public https:// endpoints only "
                "(operators can allow others with REMEDIATION_ALLOW_PRIVATE_URLS=true)",
            )
        headers = {"Idempotency-Key": f"remediation-{data.run_id}-{data.index}", "User-Agent": "mcphost-remediation"}
        body = {"run_id": data.run_id, "server_id": data.server_id, "step": step.name}
        try:
            async with httpx.AsyncClient(timeout=step.timeout_seconds, trust_env=False, follow_redirects=False) as http:
                response = await http.request(step.method, url, headers=headers,
                                              json=body if step.method != "GET" else None)  # fmt: skip
        except httpx.HTTPError as exc:
            return failed("http:unreachable", f"{type(exc).__name__}: {exc}"[:500])
        detail = f"{step.method} {url} -> {response.status_code}: {response.text[:2000]}"
        if response.status_code not in step.expect_status:
            return failed(f"http:status-{response.status_code}", detail)
        return StepResult(True, detail=detail)

    @activity.defn(name="remediation_trigger")
    async def remediation_trigger(self, data: TriggerInput) -> Triggered:
        """Start a run of each playbook bound to the server that has none active (a retried trigger starts
        the workflows of the runs it opened before, which is a no-op when they already run)."""
        return Triggered(run_ids=await self.trigger(data.server_id, data.trigger, data.detail))

    async def trigger(self, server_id: str, trigger: str, detail: str = "") -> list[str]:
        if self.start_run is None:
            return []
        started: list[tuple[str, str, dict[str, Any], str]] = []
        async with self.sessionmaker() as session, session.begin():
            server = await session.get(Server, uuid.UUID(server_id))
            if server is None:
                return []
            playbooks = (
                await session.scalars(
                    select(RemediationPlaybook)
                    .join(RemediationBinding, RemediationBinding.playbook_id == RemediationPlaybook.id)
                    .where(RemediationBinding.server_id == server.id)
                    .order_by(RemediationPlaybook.name)
                )
            ).all()
            for playbook in playbooks:
                run = await open_run(session, playbook, server, trigger, None)
                if run is None:  # one is active: take it if it is this trigger's (a retry), else leave it
                    run = await session.scalar(
                        select(RemediationRun).where(
                            RemediationRun.server_id == server.id,
                            RemediationRun.playbook_id == playbook.id,
                            RemediationRun.status.in_(ACTIVE),
                            RemediationRun.trigger == trigger,
                        )
                    )
                    if run is None:
                        continue
                else:
                    session.add(ServerLog(server_id=server.id, message=f"remediation: playbook {playbook.name!r} "
                                          f"started ({trigger}{': ' + detail if detail else ''})"))  # fmt: skip
                started.append((str(run.id), str(run.requester_id or ""), run.definition, run.workflow_id))
        for run_id, requester, definition, workflow_id in started:
            await self.start_run(run_id, server_id, requester, definition, workflow_id)
        return [s[0] for s in started]

    def all(self) -> list[Any]:
        return [self.remediation_record, self.remediation_step, self.remediation_trigger]
