"""PromotionWorkflow: take one digest into one stage of a track.

In order: wait for the stage's turn (one promotion at a time per stage; the one ahead wakes the next with
the `turn` signal), check the order (the digest has been active in the stage before) and wait out the
soak (a durable timer), verify (a child EvaluationRunWorkflow that certifies the digest), govern (a child
GovernanceRunWorkflow; votes go to it), wait for an open promotion window (a durable timer), ask the policy
engine, then deploy the digest to every server of the stage (child DeployWorkflows, pinned to the artifact)
and record it `active`. A digest that becomes active may start the next stage's promotion (auto-promotion).
A rollback promotion skips straight to the deployments. Cancelling the workflow (abort, from the API or the
Temporal UI) cancels what runs and ends it `aborted`. Business id `promotion-<id>`; its state is the
`state` query."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import TypedSearchAttributes
from temporalio.exceptions import (
    ActivityError,
    CancelledError,
    ChildWorkflowError,
    FailureError,
    WorkflowAlreadyStartedError,
)
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from activities.promotion import (
        Activated,
        ChildStart,
        FinishPromotion,
        GateResult,
        OrderResult,
        PromotionActivities,
        PromotionPlan,
        PromotionUpdate,
        StageDeployments,
    )
    from core import temporal
    from core.promotion import Window, next_open
    from workflows import policies
    from workflows.contracts.deploy import DeployOutcome, DeployWorkflowContract
    from workflows.contracts.evaluation import EvaluationInput, EvaluationProgress, EvaluationRunWorkflowContract
    from workflows.contracts.governance import GovernanceInput, GovernanceRunWorkflowContract, GovernanceState
    from workflows.contracts.promotion import PromotionInput, PromotionState
    from workflows.errors import failure_reason

# How often a queued promotion looks again whether its turn has come, should a wake-up be missed.
QUEUE_RECHECK = timedelta(seconds=30)
# `awaiting_approval` is recorded once the governance run's workflow has started, so an approval sent as
# soon as the promotion says it waits for one finds the run to vote on.
GOVERNANCE_STARTED_PATCH = "promotion-governance-started-first"


class Ended(Exception):
    def __init__(self, status: str, reason: str, notes: list[str] | None = None) -> None:
        super().__init__(reason)
        self.status, self.reason, self.notes = status, reason, notes or []


@workflow.defn(name="PromotionWorkflow")
class PromotionWorkflow:
    def __init__(self) -> None:
        self._state = PromotionState(promotion_id="")
        self._turn = False

    @workflow.query(name="state")
    def state(self) -> PromotionState:
        return self._state

    @workflow.signal(name="turn")
    def turn(self) -> None:
        self._turn = True

    async def _call(self, method: Any, arg: Any) -> Any:
        return await workflow.execute_activity_method(
            method, arg, start_to_close_timeout=policies.DB_TIMEOUT, retry_policy=policies.DATABASE
        )

    async def _record(
        self,
        status: str | None = None,
        step: str | None = None,
        reason: str | None = None,
        notes: list[str] | None = None,
    ) -> None:
        if status is not None:
            self._state.status = status
        if step is not None:
            self._state.step = step
        if reason is not None:
            self._state.reason = reason
        await self._call(
            PromotionActivities.record_promotion,
            PromotionUpdate(
                promotion_id=self._state.promotion_id, status=status, step=step, reason=reason, notes=notes
            ),
        )

    def _attributes(self, plan: PromotionPlan, kind: temporal.Kind, server_id: str = "") -> TypedSearchAttributes:
        return temporal.search_attributes(kind, server_id=server_id or None, stage=plan.stage, digest=plan.subject)

    async def _wait_turn(self) -> None:
        while True:
            # Cleared before asking: a wake-up that comes while the answer is on its way is not lost.
            self._turn = False
            if await self._call(PromotionActivities.stage_turn, self._state.promotion_id):
                return
            try:
                await workflow.wait_condition(lambda: self._turn, timeout=QUEUE_RECHECK)
            except TimeoutError:
                pass

    async def _order(self) -> None:
        while True:
            order: OrderResult = await self._call(PromotionActivities.check_promotion_order, self._state.promotion_id)
            if order.refusal:
                raise Ended("failed", order.refusal)
            if order.soak_left <= 0:
                return
            await self._record(step="soak", reason=f"soaking upstream: {order.soak_left:.0f} s to go")
            await workflow.sleep(timedelta(seconds=order.soak_left))

    async def _verify(self, data: PromotionInput, plan: PromotionPlan) -> None:
        await self._record(step="verification", reason="verifying the digest with an evaluation run")
        opened: ChildStart = await self._call(PromotionActivities.open_verification, plan.promotion_id)
        if opened.error:
            raise Ended("failed", f"verification: {opened.error}")
        progress: EvaluationProgress = await workflow.execute_child_workflow(
            EvaluationRunWorkflowContract.run,
            EvaluationInput(
                run_id=opened.record_id,
                server_id=opened.server_id,
                health_timeout_seconds=data.deploy.health_timeout_seconds,
                install_timeout_seconds=data.deploy.install_timeout_seconds,
                host_wait_seconds=data.deploy.host_wait_seconds,
            ),
            id=opened.workflow_id,
            search_attributes=self._attributes(plan, "evaluation", opened.server_id),
        )
        if progress.status != "passed":
            detail = f": {progress.error}" if progress.error else ""
            raise Ended("failed", f"verification {progress.status}{detail}")

    async def _govern(self, plan: PromotionPlan) -> None:
        opened: ChildStart = await self._call(PromotionActivities.open_promotion_governance, plan.promotion_id)
        if opened.error:
            raise Ended("failed", f"governance: {opened.error}")
        waiting = f"governance run {opened.record_id}"
        governance = GovernanceInput(run_id=opened.record_id, requester_id=opened.requester_id, steps=opened.steps)
        attributes = self._attributes(plan, "governance", opened.server_id)
        result: GovernanceState
        if workflow.patched(GOVERNANCE_STARTED_PATCH):
            handle = await workflow.start_child_workflow(
                GovernanceRunWorkflowContract.run, governance, id=opened.workflow_id, search_attributes=attributes
            )
            await self._record(status="awaiting_approval", step="governance", reason=waiting)
            result = await handle
        else:
            await self._record(status="awaiting_approval", step="governance", reason=waiting)
            result = await workflow.execute_child_workflow(
                GovernanceRunWorkflowContract.run, governance, id=opened.workflow_id, search_attributes=attributes
            )
        if result.status != "approved":
            raise Ended("rejected", f"governance {result.status}: {result.reason}")

    async def _window(self, plan: PromotionPlan) -> None:
        windows = [Window.model_validate(w) for w in plan.windows]
        while True:
            now = workflow.now()
            opens = next_open(windows, now)
            if opens is None:
                raise Ended("failed", "the stage's promotion windows never open")
            if opens <= now:
                return
            await self._record(step="window", reason=f"waiting for the promotion window at {opens.isoformat()}")
            await workflow.sleep(opens - now)

    async def _deploy(self, data: PromotionInput, plan: PromotionPlan) -> None:
        await self._record(
            step="deploy", reason=f"deploying {plan.subject} to stage {plan.stage!r}", notes=self._state.notes or None
        )
        opened: StageDeployments = await self._call(PromotionActivities.open_stage_deployments, plan.promotion_id)
        if opened.error:
            raise Ended("failed", opened.error)

        async def one(server_id: str, deployment_id: str, workflow_id: str) -> DeployOutcome:
            return await workflow.execute_child_workflow(
                DeployWorkflowContract.run,
                dataclasses.replace(data.deploy, deployment_id=deployment_id, server_id=server_id),
                id=workflow_id,
                search_attributes=temporal.search_attributes(
                    "deploy", server_id=server_id, deployment_id=deployment_id, stage=plan.stage, digest=plan.subject
                ),
            )

        started = [d for d in opened.deployments if d.start]
        for d in opened.deployments:
            self._state.deployments[d.server_id] = "deploying" if d.start else "running"
        outcomes = await asyncio.gather(
            *(one(d.server_id, d.deployment_id, d.workflow_id) for d in started), return_exceptions=True
        )
        failures: list[str] = []
        for d, outcome in zip(started, outcomes, strict=True):
            if isinstance(outcome, asyncio.CancelledError):
                raise outcome
            if isinstance(outcome, BaseException):
                reason = failure_reason(outcome) if isinstance(outcome, ChildWorkflowError) else str(outcome)
                self._state.deployments[d.server_id] = "failed"
                failures.append(f"server {d.server_id}: {reason}")
                continue
            self._state.deployments[d.server_id] = outcome.status
            if outcome.status != "running":
                failures.append(f"server {d.server_id}: {outcome.status} ({outcome.error or 'no reason given'})")
        if failures:
            raise Ended("failed", "deploying the stage failed: " + "; ".join(failures))

    async def _activate(self, data: PromotionInput) -> None:
        activated: Activated = await self._call(PromotionActivities.activate_promotion, self._state.promotion_id)
        self._state.status, self._state.step = "active", "done"
        await self._wake(activated.next_queued)
        for auto in activated.auto:
            # Each runs on its own: this promotion is done once it has started them.
            try:
                await workflow.start_child_workflow(
                    PromotionWorkflow.run,
                    PromotionInput(promotion_id=auto.record_id, deploy=data.deploy),
                    id=auto.workflow_id,
                    parent_close_policy=ParentClosePolicy.ABANDON,
                    search_attributes=temporal.search_attributes("promotion", stage=auto.stage, digest=auto.subject),
                )
            except WorkflowAlreadyStartedError:
                pass  # started by an earlier attempt

    async def _wake(self, workflow_id: str | None) -> None:
        if workflow_id:
            try:
                await workflow.get_external_workflow_handle(workflow_id).signal(PromotionWorkflow.turn)
            except FailureError:
                pass  # it ended or never started: it finds its turn itself when it looks again

    async def _end(self, status: str, reason: str, notes: list[str] | None = None) -> None:
        self._state.status, self._state.reason, self._state.notes = status, reason, notes or []
        following: str | None = await self._call(
            PromotionActivities.finish_promotion,
            FinishPromotion(promotion_id=self._state.promotion_id, status=status, reason=reason, notes=notes or []),
        )
        await self._wake(following)

    @workflow.run
    async def run(self, data: PromotionInput) -> PromotionState:
        self._state.promotion_id = data.promotion_id
        plan: PromotionPlan = await self._call(PromotionActivities.load_promotion, data.promotion_id)
        if plan.ended:
            self._state.status = plan.status
            return self._state
        try:
            await self._wait_turn()
            await self._record(status="in_progress", step="order")
            if plan.kind != "rollback":
                await self._order()
                if plan.has_verification:
                    await self._verify(data, plan)
                if plan.has_governance:
                    await self._govern(plan)
                await self._record(status="approved", step="window")
                await self._window(plan)
                gate: GateResult = await self._call(PromotionActivities.decide_promotion, plan.promotion_id)
                if not gate.allowed:
                    raise Ended("failed", gate.message, gate.notes)
                self._state.notes = gate.notes
            await self._deploy(data, plan)
            await self._activate(data)
        except Ended as ended:
            await self._end(ended.status, ended.reason, ended.notes)
        except asyncio.CancelledError:
            await self._end("aborted", "the promotion was aborted")
            raise
        except (ActivityError, ChildWorkflowError) as err:
            if isinstance(err.cause, CancelledError):
                await self._end("aborted", "the promotion was aborted")
                raise
            await self._end("failed", failure_reason(err))
        return self._state
