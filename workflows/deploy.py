"""DeployWorkflow: take a server revision from its source to serving traffic, or fail leaving the last
healthy revision serving."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import TypedSearchAttributes
from temporalio.exceptions import ActivityError, CancelledError, ChildWorkflowError
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from activities.build_types import ArtifactImage
    from activities.health import HealthActivities, HealthInput, HealthResult
    from activities.policy import PolicyActivities, PolicyOutcome
    from activities.records import (
        ActivateInput,
        DeploymentPlan,
        DrainQuery,
        DrainState,
        FinishInput,
        InstanceRecord,
        RecordActivities,
        RecordImage,
        StepBatch,
        StepRecord,
    )
    from activities.runtime import RuntimeActivities
    from core import temporal
    from workflows import placement, policies
    from workflows.build import BuildInput, BuildOutcome, BuildWorkflow
    from workflows.contracts.deploy import DeployInput, DeployOutcome, DeployProgress, StepState
    from workflows.errors import failure_reason
    from workflows.push import PushInput, PushWorkflow
    from workflows.supervisor import SupervisorInput, SupervisorWorkflow

# Git sources add "build" (and "push" when a registry is configured) after "resolve".
STEPS = (
    "resolve",
    "build",
    "push",
    "policy",
    "prepare",
    "launch",
    "health_check",
    "switch_route",
    "drain_sessions",
    "retire_previous",
)
# Retired changes: each shipped behind workflow.patched() and every run now takes its new branch. The
# calls are workflow.deprecate_patch(), in the same places, so runs that recorded the markers still
# replay; runs from before the changes cannot be open any more (a deployment ends within its step
# timeouts, its supervision is a workflow of its own). The calls go once no open run has the markers.
#
# Earlier revisions keep serving their open sessions for a while before they are retired.
DRAIN_PATCH = "drain-sessions"
# A step that fails after the route switch leaves the new revision serving: its instance is never removed.
KEEP_SERVING_PATCH = "keep-serving-after-switch"
# A running revision gets a SupervisorWorkflow of its own.
SUPERVISE_PATCH = "supervise"
# The health check stores the tool/prompt/resource lists itself; the history carries only their counts.
STORED_CAPABILITIES_PATCH = "capabilities-stored-by-activity"
# A cancelled deployment cleans up after itself and ends `cancelled` (before, the run just ended cancelled).
CANCEL_PATCH = "cancel-cleans-up"
# Database records are local activities: run by the worker that runs the workflow, without a round trip
# through the task queue each (a deploy writes some twenty records).
LOCAL_RECORDS_PATCH = "records-as-local-activities"
CANCELLED = "the deployment was cancelled"
# `running` is recorded as soon as the new revision serves; the earlier revisions are retired after.
RUNNING_FIRST_PATCH = "running-before-retire"
# Step records that follow each other are written in one transaction (one local activity).
BATCHED_RECORDS_PATCH = "batched-step-records"
# The policy engine decides before anything is prepared or launched; a blocked deployment ends `blocked`.
POLICY_PATCH = "policy-gate"
# Build, push and supervisor children carry the server, deployment and kind search attributes (the Temporal UI
# filters them by McpKind like every other workflow).
KIND_PATCH = "child-search-attributes"


def _where(url: str) -> str:
    """Host and port of an upstream without its path: a bridged server's path is a secret of the platform."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}" if rest else url


@workflow.defn(name="DeployWorkflow")
class DeployWorkflow:
    def __init__(self) -> None:
        self._progress = DeployProgress(step=None, status="pending")
        self._current = "resolve"
        # The host queue this deployment's runtime steps go to (claimed in `prepare`).
        self._host: str | None = None
        self._host_wait = timedelta(seconds=120)

    async def _db(self, method: Any, arg: Any) -> Any:
        """One database record of this deployment (idempotent, retried through a database outage)."""
        return await workflow.execute_local_activity_method(
            method, arg, start_to_close_timeout=policies.DB_TIMEOUT, retry_policy=policies.DATABASE
        )

    @workflow.query(name="progress")
    def progress(self) -> DeployProgress:
        return self._progress

    def _note(self, step: str, status: str, message: str | None) -> None:
        self._progress.step = step
        states = [s for s in self._progress.steps if s.step != step]
        self._progress.steps = [*states, StepState(step=step, status=status, message=message)]

    async def _step(self, step: str, status: str, message: str | None = None) -> None:
        self._note(step, status, message)
        await self._db(
            RecordActivities.record_step,
            StepRecord(deployment_id=self._deployment_id, step=step, status=status, message=message),
        )

    async def _steps(self, *records: tuple[str, str, str | None], instance: InstanceRecord | None = None) -> None:
        """Records that follow each other with nothing between (and the instance just launched, first):
        one transaction."""
        for step, status, message in records:
            self._note(step, status, message)
        batch = StepBatch(
            deployment_id=self._deployment_id,
            steps=[StepRecord(self._deployment_id, step, status, message) for step, status, message in records],
            instance=instance,
        )
        await self._db(RecordActivities.record_steps, batch)

    async def _drain_sessions(self, server_id: str) -> None:
        """Session-era clients opened on an earlier revision keep it until their sessions end or the drain
        deadline passes (a durable timer, checked every few seconds); new sessions already go to this one."""
        query = DrainQuery(server_id=server_id, keep_deployment_id=self._deployment_id)
        state: DrainState = await self._db(RecordActivities.draining_sessions, query)
        if not state.pinned:
            return
        self._current = "drain_sessions"
        deadline = workflow.now() + timedelta(seconds=state.drain_seconds)
        if state.active:
            await self._step(
                "drain_sessions",
                "started",
                f"{state.active} session(s) still use the previous revision; it serves them for up to "
                f"{state.drain_seconds:g} s",
            )
        while state.active and workflow.now() < deadline:
            remaining = (deadline - workflow.now()).total_seconds()
            await workflow.sleep(timedelta(seconds=max(0.001, min(2.0, remaining))))
            state = await self._db(RecordActivities.draining_sessions, query)
        await self._db(RecordActivities.end_drain, query)
        if state.active:
            await self._step(
                "drain_sessions",
                "succeeded",
                f"drain deadline passed: {state.active} session(s) start anew on the serving revision",
            )
        else:
            await self._step("drain_sessions", "succeeded", "every session on the previous revision has ended")
        # The gateways drop the ended pins on the NOTIFY end_drain sent; give them a moment before the old
        # revision stops, so no request is sent to a port that may already belong to something else.
        await workflow.sleep(timedelta(seconds=1))

    def _child_attributes(self, server_id: str, kind: temporal.Kind) -> TypedSearchAttributes | None:
        workflow.deprecate_patch(KIND_PATCH)
        return temporal.search_attributes(kind, server_id=server_id, deployment_id=self._deployment_id)

    @property
    def _host_wait_bound(self) -> timedelta | None:
        """How long a step sent to the deployment's host may wait for it: a gone host fails the step."""
        return self._host_wait if self._host is not None else None

    @workflow.run
    async def run(self, data: DeployInput) -> DeployOutcome:
        self._deployment_id = data.deployment_id
        workflow.deprecate_patch(LOCAL_RECORDS_PATCH)
        workflow.deprecate_patch(BATCHED_RECORDS_PATCH)
        self._host_wait = timedelta(seconds=data.host_wait_seconds)
        self._progress.status = "deploying"
        instance: InstanceRecord | None = None
        self._current = "resolve"
        switched = False
        try:
            await self._step("resolve", "started")
            plan: DeploymentPlan = await self._db(RecordActivities.load_plan, data.deployment_id)
            resolved = f"{plan.source_type} source on the {plan.runtime} runtime"
            before: tuple[tuple[str, str, str | None], ...] = ()
            if plan.source_type == "git":
                await self._step("resolve", "succeeded", resolved)
                self._current = "build"
                await self._build(data)
            else:
                before = (("resolve", "succeeded", resolved),)
            workflow.deprecate_patch(POLICY_PATCH)
            # Git sources are decided on once built: the decision is bound to the image digest.
            self._current = "policy"
            outcome: PolicyOutcome = await self._db(PolicyActivities.decide_policy, data.deployment_id)
            if outcome.gated:
                before = (*before, ("policy", "succeeded" if outcome.allowed else "failed", outcome.message))
            if not outcome.allowed:
                await self._steps(*before)
                blocked = await self._finish("blocked", outcome.message)
                blocked.notes = outcome.notes
                return blocked
            self._current = "prepare"
            if before:
                await self._steps(*before, ("prepare", "started", None))
            else:
                await self._step("prepare", "started")
            workflow.deprecate_patch(placement.PATCH)
            # Any worker of the shared queue may take this: the one that does becomes the host, which
            # spreads deployments over the workers.
            claim = await workflow.execute_activity_method(
                RuntimeActivities.claim_host,
                data.deployment_id,
                start_to_close_timeout=policies.CLAIM_TIMEOUT,
                retry_policy=policies.RUNTIME,
            )
            self._host = claim.host_queue
            prepared: str = await workflow.execute_activity_method(
                RuntimeActivities.prepare_source,
                data.deployment_id,
                start_to_close_timeout=timedelta(seconds=data.install_timeout_seconds),
                heartbeat_timeout=policies.HEARTBEAT,
                retry_policy=policies.RUNTIME,
                task_queue=self._host,
                schedule_to_start_timeout=self._host_wait_bound,
            )
            self._current = "launch"
            await self._steps(("prepare", "succeeded", prepared[:500]), ("launch", "started", None))
            instance = await workflow.execute_activity_method(
                RuntimeActivities.launch_instance,
                data.deployment_id,
                start_to_close_timeout=policies.LAUNCH_TIMEOUT,
                heartbeat_timeout=policies.HEARTBEAT,
                retry_policy=policies.RUNTIME,
                task_queue=self._host,
                schedule_to_start_timeout=self._host_wait_bound,
            )
            where = f" on host {claim.host_id}"
            self._current = "health_check"
            await self._steps(
                ("launch", "succeeded", f"{instance.runtime} instance {instance.ref}{where}"),
                ("health_check", "started", None),
                instance=instance,
            )
            workflow.deprecate_patch(STORED_CAPABILITIES_PATCH)
            health: HealthResult = await workflow.execute_activity_method(
                HealthActivities.check_health,
                HealthInput(instance=instance, timeout_seconds=data.health_timeout_seconds, store=True),
                start_to_close_timeout=timedelta(seconds=data.health_timeout_seconds + 30),
                heartbeat_timeout=policies.HEARTBEAT,
                retry_policy=policies.HEALTH,
                task_queue=self._host,
                schedule_to_start_timeout=self._host_wait_bound,
            )
            healthy = (
                f"MCP {health.protocol_version}: {health.count('tools')} tools, {health.count('prompts')} prompts, "
                f"{health.count('resources')} resources"
            )
            self._current = "switch_route"
            await self._steps(("health_check", "succeeded", healthy), ("switch_route", "started", None))
            activated = await self._db(
                RecordActivities.activate,
                ActivateInput(
                    deployment_id=data.deployment_id,
                    instance=instance,
                ),
            )
            if not activated.activated:
                await self._step("switch_route", "failed", "a newer deployment or a stop came first")
                await self._cleanup(instance)
                return await self._finish("superseded", "a newer deployment or a stop came first")
            switched = True
            await self._step("switch_route", "succeeded", f"gateway now serves {_where(instance.url)}")
            workflow.deprecate_patch(DRAIN_PATCH)
            await self._drain_sessions(data.server_id)

            self._current = "retire_previous"
            await self._step("retire_previous", "started")
            workflow.deprecate_patch(RUNNING_FIRST_PATCH)
            return await self._running_then_retire(data, instance)
        except asyncio.CancelledError:
            workflow.deprecate_patch(CANCEL_PATCH)
            return await self._failed(data, instance, switched, CANCELLED, "cancelled")
        except (ActivityError, ChildWorkflowError) as err:
            if isinstance(err.cause, CancelledError):
                workflow.deprecate_patch(CANCEL_PATCH)
                return await self._failed(data, instance, switched, CANCELLED, "cancelled")
            return await self._failed(data, instance, switched, failure_reason(err))

    async def _retire(self, data: DeployInput) -> tuple[list[str], list[str]]:
        """Stop the server's earlier instances; the deployments stopped, and what could not be reached. Earlier
        revisions may live on other hosts than this one's: each is retired where it is."""
        assert self._host is not None, "a revision serves only once its host is claimed"
        placed = await placement.retire_on_hosts(
            data.server_id, keep_deployment_id=data.deployment_id, also=self._host, wait=self._host_wait
        )
        return placed.stopped_deployment_ids, placed.warnings

    async def _running_then_retire(self, data: DeployInput, instance: InstanceRecord) -> DeployOutcome:
        """The new revision serves: say `running` now, then stop the earlier ones. The retire_previous step
        finishes after that (`settled` on the record); a failure there is a warning, never a removal."""
        final: str = await self._db(RecordActivities.complete_deployment, data.deployment_id)
        if final != "running":
            # A newer revision or a stop took over meanwhile: it retires what is left, this one included.
            await self._step("retire_previous", "succeeded", f"nothing to retire: {final} meanwhile")
            await self._cleanup(instance)
            self._progress.status = final
            return DeployOutcome(deployment_id=data.deployment_id, status=final, error=f"{final} meanwhile")
        self._progress.status = "running"
        try:
            stopped, warnings = await self._retire(data)
        except ActivityError as err:
            reason = failure_reason(err)
            warning = (
                f"retire_previous failed after the switch ({reason}); this revision serves; earlier instances "
                "may still run until the next deployment or stop retires them"
            )
            # The warning first: whoever sees the step finished sees it too.
            await self._db(
                RecordActivities.note_deployment,
                FinishInput(deployment_id=data.deployment_id, status="running", error=warning),
            )
            await self._step("retire_previous", "failed", reason)
            self._progress.error = warning
        else:
            message = "; ".join([f"stopped {len(stopped)} earlier instance(s)", *warnings])
            await self._step("retire_previous", "succeeded", message)
        await self._supervise(data, instance)
        return DeployOutcome(
            deployment_id=data.deployment_id,
            status="running",
            error=self._progress.error,
            upstream_url=instance.url,
        )

    async def _failed(
        self, data: DeployInput, instance: InstanceRecord | None, switched: bool, reason: str, status: str = "failed"
    ) -> DeployOutcome:
        """The step under way failed, or the deployment was cancelled (by the API or an operator in the
        Temporal UI; the step was cancelled with it, and an install's processes are killed before its lock
        is let go). Before the route switch what this deployment started is removed and the previous
        revision keeps serving; after it the new revision already serves, and stays."""
        await self._step(self._current, "failed", reason)
        if switched and instance is not None:
            workflow.deprecate_patch(KEEP_SERVING_PATCH)
            outcome = await self._serving_despite(instance, reason)
            if outcome.status == "running":
                await self._supervise(data, instance)
            return outcome
        try:
            await self._cleanup(instance)
        except ActivityError as cleanup_error:
            # The deployment has failed either way; say so, and keep what cleanup could not do.
            workflow.logger.warning("cleanup after a failed deployment failed: %s", failure_reason(cleanup_error))
            reason = f"{reason} (cleanup also failed: {failure_reason(cleanup_error)})"
        return await self._finish(status, reason)

    async def _supervise(self, data: DeployInput, instance: InstanceRecord) -> None:
        """Hand the running revision to its own SupervisorWorkflow, which outlives this one."""
        if data.supervise_interval_seconds <= 0:
            return
        workflow.deprecate_patch(SUPERVISE_PATCH)
        await workflow.start_child_workflow(
            SupervisorWorkflow.run,
            SupervisorInput(
                server_id=data.server_id,
                deployment_id=data.deployment_id,
                instance=instance,
                interval_seconds=data.supervise_interval_seconds,
                failure_threshold=data.supervise_failure_threshold,
                window_seconds=data.supervise_window_seconds,
                backoff_max_seconds=data.supervise_backoff_max_seconds,
            ),
            id=f"supervise-{data.deployment_id}",
            parent_close_policy=ParentClosePolicy.ABANDON,
            search_attributes=self._child_attributes(data.server_id, "supervisor"),
        )

    async def _serving_despite(self, instance: InstanceRecord, reason: str) -> DeployOutcome:
        """A step after the route switch failed: the gateway already sends traffic to this revision, so its
        instance stays and the deployment is running; what the step left undone is said, not hidden."""
        warning = f"{self._current} failed after the switch ({reason}); this revision serves"
        if self._current == "retire_previous":
            warning += "; earlier instances may still run until the next deployment or stop retires them"
        # The warning is written first: whoever sees the deployment finished sees it too.
        await self._db(
            RecordActivities.note_deployment,
            FinishInput(deployment_id=self._deployment_id, status="running", error=warning),
        )
        final: str = await self._db(RecordActivities.complete_deployment, self._deployment_id)
        if final != "running":
            await self._cleanup(instance)
            self._progress.status = final
            return DeployOutcome(deployment_id=self._deployment_id, status=final, error=f"{final} meanwhile")
        self._progress.status = "running"
        self._progress.error = warning
        return DeployOutcome(
            deployment_id=self._deployment_id, status="running", error=warning, upstream_url=instance.url
        )

    async def _build(self, data: DeployInput) -> None:
        """Git sources: the child BuildWorkflow makes the image, the child PushWorkflow publishes it."""
        await self._step("build", "started")
        built: BuildOutcome = await workflow.execute_child_workflow(
            BuildWorkflow.run,
            BuildInput(deployment_id=data.deployment_id),
            id=f"build-{data.deployment_id}",
            search_attributes=self._child_attributes(data.server_id, "build"),
        )
        platforms = ", ".join(built.plan.platforms)
        revision = built.plan.revision[:12]
        if built.plan.reused:
            await self._step("build", "succeeded", f"reused the artifact of {revision} ({platforms})")
        else:
            await self._step("build", "succeeded", f"built {revision} for {platforms}")
        image: ArtifactImage | None = built.image
        if image is None:
            self._current = "push"
            await self._step("push", "started")
            image = await workflow.execute_child_workflow(
                PushWorkflow.run,
                PushInput(plan=built.plan, images=built.images),
                id=f"push-{data.deployment_id}",
                search_attributes=self._child_attributes(data.server_id, "push"),
            )
            await self._step("push", "succeeded", f"pushed {image.image_ref}")
        await self._db(RecordActivities.record_image, RecordImage(deployment_id=data.deployment_id, image=image))

    async def _cleanup(self, instance: InstanceRecord | None) -> None:
        """Remove this deployment's own instance; the previously serving revision is left alone."""
        if instance is not None:
            await workflow.execute_activity_method(
                RuntimeActivities.remove_deployment_instance,
                instance,
                start_to_close_timeout=policies.RETIRE_TIMEOUT,
                heartbeat_timeout=policies.HEARTBEAT,
                retry_policy=policies.CLEANUP,
                # The instance says where it is (it was launched on the claimed host).
                task_queue=instance.host_queue or self._host,
                schedule_to_start_timeout=self._host_wait_bound,
            )
        else:
            # The launch may have started something before failing: find it by looking at the runtime.
            await workflow.execute_activity_method(
                RuntimeActivities.remove_deployment_instances,
                self._deployment_id,
                start_to_close_timeout=policies.RETIRE_TIMEOUT,
                heartbeat_timeout=policies.HEARTBEAT,
                retry_policy=policies.CLEANUP,
                task_queue=self._host,
                schedule_to_start_timeout=self._host_wait_bound,
            )

    async def _finish(self, status: str, error: str) -> DeployOutcome:
        await self._db(
            RecordActivities.finish_deployment,
            FinishInput(deployment_id=self._deployment_id, status=status, error=error),
        )
        self._progress.status = status
        self._progress.error = error
        return DeployOutcome(deployment_id=self._deployment_id, status=status, error=error)
