"""RemediationWorkflow: run one playbook for one server. Business id `remediation-<run>`.

When the playbook requires an approval, nothing runs until it is given: votes are the `vote` Update,
whose validator applies the governance rules (approvers, four-eyes, one vote each, only while the step is
open), so a refused vote never enters history; its SLA and expiry are durable timers. Then the steps run
in order, each as idempotent activities: `restart` replaces the serving instance on its host (the
supervisor's restart, which adopts an instance an interrupted attempt launched), `redeploy_previous`
runs a child DeployWorkflow of the newest earlier revision that served, `wait` is a durable timer, the
others are one activity. Every step's outcome is recorded (with its exit code and typed reason) before
the next starts. A `cancel` signal stops the run after the step under way, which is recorded. The
run's SLA is a durable timer: past it the breach is recorded and the run goes on. The state is the
`state` query."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError

with workflow.unsafe.imports_passed_through():
    from activities.remediation import RemediationActivities, RunRecord, StepInput, StepResult, failed
    from activities.supervision import RestartInput, RestartResult, SupervisionActivities
    from core import temporal
    from core.governance import Vote, Voter, outcome, refusal
    from core.remediation import ACTIVE, EXIT_CANCELLED, EXIT_OK, EXIT_REJECTED, EXIT_STEP_FAILED, Playbook
    from workflows import policies
    from workflows.contracts.deploy import DeployInput, DeployOutcome, DeployWorkflowContract
    from workflows.contracts.remediation import RemediationInput, RemediationState, RemediationVote
    from workflows.errors import failure_reason


class _Ended(Exception):
    def __init__(self, status: str, exit_code: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.exit_code, self.reason = status, exit_code, reason


@workflow.defn(name="RemediationWorkflow")
class RemediationWorkflow:
    @workflow.init
    def __init__(self, data: RemediationInput) -> None:
        self._playbook = Playbook.model_validate(data.definition)
        self._requester = data.requester_id
        self._state = RemediationState(
            run_id=data.run_id, status="awaiting_approval" if self._playbook.approval else "running"
        )
        self._records = 0

    @workflow.query(name="state")
    def state(self) -> RemediationState:
        return self._state

    @workflow.signal(name="cancel")
    def cancel(self) -> None:
        self._state.cancel_requested = True

    def _check_open(self) -> None:
        if self._playbook.approval is None or self._state.status != "awaiting_approval":
            raise ApplicationError("the run is not waiting for an approval", type="closed", non_retryable=True)

    @workflow.update(name="vote")
    async def vote(self, data: RemediationVote) -> RemediationState:
        self._check_open()
        self._state.votes.append(
            Vote(user_id=data.user_id, email=data.email, approve=data.approve, comment=data.comment)
        )
        step = self._playbook.approval.name if self._playbook.approval else ""
        await self._record(
            f"{'approved' if data.approve else 'rejected'} by {data.email}"
            + (f": {data.comment}" if data.comment else ""),
            step=step,
            kind="vote",
        )
        return self._state

    @vote.validator
    def validate_vote(self, data: RemediationVote) -> None:
        self._check_open()
        assert self._playbook.approval is not None
        refused = refusal(
            self._playbook.approval,
            Voter(user_id=data.user_id, email=data.email, roles=data.roles),
            requester_id=self._requester,
            votes=self._state.votes,
            escalated=self._state.escalated,
        )
        if refused is not None:
            raise ApplicationError(refused.message, type=refused.code, non_retryable=True)

    async def _record(self, message: str, **change: Any) -> None:
        self._records += 1
        await workflow.execute_activity_method(
            RemediationActivities.remediation_record,
            RunRecord(run_id=self._state.run_id, key=f"{self._records}", message=message, **change),
            start_to_close_timeout=policies.DB_TIMEOUT,
            retry_policy=policies.DATABASE,
        )

    async def _approval(self) -> None:
        step = self._playbook.approval
        assert step is not None

        def decided() -> bool:
            return self._state.cancel_requested or outcome(step, self._state.votes) is not None

        opened = workflow.now()
        if step.sla_seconds:
            try:
                await workflow.wait_condition(decided, timeout=timedelta(seconds=step.sla_seconds))
            except TimeoutError:
                self._state.escalated = True
                await self._record(f"approval passed its SLA of {step.sla_seconds:g} s: escalated", step=step.name)
        try:
            remaining = (
                timedelta(seconds=step.expire_seconds) - (workflow.now() - opened) if step.expire_seconds else None
            )
            if remaining is not None and remaining <= timedelta(0):
                raise TimeoutError
            await workflow.wait_condition(decided, timeout=remaining)
            if self._state.cancel_requested:
                raise _Ended("cancelled", EXIT_CANCELLED, "cancelled while awaiting approval")
            result = outcome(step, self._state.votes) or "rejected"
        except TimeoutError:
            result = "approved" if step.on_expiry == "approve" else "rejected"
        if result != "approved":
            raise _Ended("rejected", EXIT_REJECTED, "approval_rejected")
        self._state.status = "running"
        await self._record("approved: the steps run now", step=step.name, status="running")

    async def _sla(self, seconds: float) -> None:
        await workflow.sleep(timedelta(seconds=seconds))
        if self._state.status in ACTIVE:
            await self._record(f"the run passed its SLA of {seconds:g} s", kind="sla", sla_breached=True)

    async def _step(self, data: RemediationInput, index: int, step: Any) -> StepResult:
        if step.kind == "wait":
            # A pause, not work: a cancel request ends it at once.
            try:
                await workflow.wait_condition(
                    lambda: self._state.cancel_requested, timeout=timedelta(seconds=step.seconds)
                )
                return StepResult(True, detail="the wait was cut short by a cancel request")
            except TimeoutError:
                return StepResult(True, detail=f"waited {step.seconds:g} s")
        result: StepResult = await workflow.execute_activity_method(
            RemediationActivities.remediation_step,
            StepInput(run_id=data.run_id, server_id=data.server_id, index=index, step=step.model_dump(mode="json")),
            start_to_close_timeout=timedelta(minutes=15),
            heartbeat_timeout=policies.HEARTBEAT,
            retry_policy=policies.DATABASE,
        )
        if not result.ok:
            return result
        if step.kind == "restart" and result.instance is not None:
            queue = result.instance.host_queue or None
            restarted: RestartResult = await workflow.execute_activity_method(
                SupervisionActivities.supervise_restart,
                RestartInput(instance=result.instance),
                task_queue=queue,
                start_to_close_timeout=policies.LAUNCH_TIMEOUT,
                heartbeat_timeout=policies.HEARTBEAT,
                retry_policy=policies.RUNTIME,
            )
            if restarted.gone or restarted.instance is None:
                return StepResult(
                    False, EXIT_STEP_FAILED, "step_failed:restart:not-serving", "the revision stopped serving"
                )
            return StepResult(True, detail=f"{result.detail}: new instance {restarted.instance.ref}")
        if step.kind == "redeploy_previous" and result.start:
            deployed: DeployOutcome = await workflow.execute_child_workflow(
                DeployWorkflowContract.run,
                DeployInput(
                    **{**data.deploy.__dict__, "deployment_id": result.deployment_id, "server_id": data.server_id}
                ),
                id=result.workflow_id,
                search_attributes=temporal.search_attributes(
                    "deploy", server_id=data.server_id, deployment_id=result.deployment_id
                ),
            )
            if deployed.status != "running":
                return failed(f"redeploy_previous:{deployed.status}", deployed.error or "the redeploy did not serve")
        return result

    @workflow.run
    async def run(self, data: RemediationInput) -> RemediationState:
        sla = asyncio.ensure_future(self._sla(self._playbook.sla_seconds)) if self._playbook.sla_seconds else None
        try:
            if self._playbook.approval is not None:
                await self._approval()
            for index, step in enumerate(self._playbook.steps):
                if self._state.cancel_requested:
                    raise _Ended("cancelled", EXIT_CANCELLED, f"cancelled before step {step.name!r}")
                self._state.current = step.name
                await self._record(f"{step.kind} step {step.name!r} started", step=step.name, current_step=step.name)
                try:
                    result = await self._step(data, index, step)
                except (ActivityError, ChildWorkflowError) as err:
                    result = failed(f"{step.kind}:error", failure_reason(err))
                entry = {
                    "step": step.name,
                    "kind": step.kind,
                    "status": "ok" if result.ok else "failed",
                    "exit_code": result.exit_code,
                    "reason": result.reason,
                    "detail": result.detail[:2000],
                }
                self._state.results.append(entry)
                await self._record(
                    f"{step.name}: {'ok' if result.ok else 'failed'}: {result.detail}",
                    step=step.name,
                    kind="step",
                    result=entry,
                )
                if not result.ok:
                    raise _Ended("failed", result.exit_code, result.reason)
            raise _Ended("succeeded", EXIT_OK, "")
        except _Ended as ended:
            self._state.status, self._state.exit_code, self._state.reason = ended.status, ended.exit_code, ended.reason
        finally:
            if sla is not None and not sla.done():
                sla.cancel()
        self._state.current = ""
        await workflow.wait_condition(workflow.all_handlers_finished)
        await self._record(
            f"run ended {self._state.status} (exit code {self._state.exit_code})"
            + (f": {self._state.reason}" if self._state.reason else ""),
            kind="end",
            status=self._state.status,
            exit_code=self._state.exit_code,
            reason=self._state.reason or None,
            finished=True,
        )
        return self._state
