"""GovernanceRunWorkflow: take one artifact + tier through a definition's steps, in order.

Approvals and rejections are the `vote` Update. Its validator refuses a voter who is not an approver of
the open step, the requester under four-eyes, a second vote by the same person, and any vote when no
approval step is open, so a refused attempt never enters history (the API records it in the audit log).
An approval step's SLA and expiry are durable timers: at the SLA the step is escalated (its escalation
approvers may vote from then on, and the escalation is recorded); at the expiry it ends as configured.
`check` steps ask the policy engine; `wait` steps sleep. The run's state is the `state` query.
Business id `governance-<run>`."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.governance import CheckInput, CheckResult, GovernanceActivities, GovernanceEvent
    from core.governance import ApprovalStep, CheckStep, Definition, Vote, Voter, WaitStep, outcome, refusal
    from workflows import policies
    from workflows.contracts.governance import GovernanceInput, GovernanceState, StepState, VoteInput


@workflow.defn(name="GovernanceRunWorkflow")
class GovernanceRunWorkflow:
    @workflow.init
    def __init__(self, data: GovernanceInput) -> None:
        # Parsed before anything else runs: a vote may arrive with the run's very first task.
        self._definition = Definition.model_validate({"steps": data.steps})
        self._requester = data.requester_id
        self._state = GovernanceState(
            run_id=data.run_id, steps=[StepState(name=s.name, kind=s.kind) for s in self._definition.steps]
        )
        self._state.steps[0].status = "open"
        self._events = 0

    @workflow.query(name="state")
    def state(self) -> GovernanceState:
        return self._state

    async def _record(self, action: str, comment: str, step: str | None = None, **extra: Any) -> None:
        self._events += 1
        await workflow.execute_activity_method(
            GovernanceActivities.record_governance,
            GovernanceEvent(
                run_id=self._state.run_id,
                key=f"{self._events}:{action}",
                action=action,
                step=step,
                comment=comment,
                **extra,
            ),
            start_to_close_timeout=policies.DB_TIMEOUT,
            retry_policy=policies.DATABASE,
        )

    def _open_approval(self) -> tuple[ApprovalStep, StepState]:
        if self._state.status != "running":
            raise ApplicationError("the governance run has ended", type="closed", non_retryable=True)
        index = self._state.current
        step = self._definition.steps[index] if index < len(self._definition.steps) else None
        state = self._state.steps[index] if index < len(self._state.steps) else None
        if not isinstance(step, ApprovalStep) or state is None or state.status != "open":
            raise ApplicationError("no approval step is open on this run", type="closed", non_retryable=True)
        return step, state

    @workflow.update(name="vote")
    async def vote(self, data: VoteInput) -> GovernanceState:
        step, state = self._open_approval()
        ballot = Vote(user_id=data.user_id, email=data.email, approve=data.approve, comment=data.comment)
        state.votes.append(ballot)
        await self._record("approve" if data.approve else "reject", data.comment, step=step.name, actor=data.email)
        return self._state

    @vote.validator
    def validate_vote(self, data: VoteInput) -> None:
        step, state = self._open_approval()
        refused = refusal(
            step,
            Voter(user_id=data.user_id, email=data.email, roles=data.roles),
            requester_id=self._requester,
            votes=state.votes,
            escalated=state.escalated,
        )
        if refused is not None:
            raise ApplicationError(refused.message, type=refused.code, non_retryable=True)

    async def _approval(self, step: ApprovalStep, state: StepState) -> str:
        opened = workflow.now()

        def decided() -> bool:
            return outcome(step, state.votes) is not None

        deadline = timedelta(seconds=step.expire_seconds) if step.expire_seconds else None
        if step.sla_seconds:
            try:
                await workflow.wait_condition(decided, timeout=timedelta(seconds=step.sla_seconds))
            except TimeoutError:
                state.escalated = True
                added = [*(f"role {r}" for r in step.escalate_roles), *step.escalate_users]
                await self._record(
                    "escalated",
                    f"step {step.name!r} passed its SLA of {step.sla_seconds:g} s"
                    + (f"; approvers added: {', '.join(added)}" if added else ""),
                    step=step.name,
                )
        try:
            remaining = deadline - (workflow.now() - opened) if deadline else None
            if remaining is not None and remaining <= timedelta(0):
                raise TimeoutError
            await workflow.wait_condition(decided, timeout=remaining)
        except TimeoutError:
            result = "approved" if step.on_expiry == "approve" else "rejected"
            state.note = f"expired after {step.expire_seconds:g} s: {result}"
            await self._record("expired", f"step {step.name!r} {state.note}", step=step.name)
            return result
        return outcome(step, state.votes) or "rejected"

    @workflow.run
    async def run(self, data: GovernanceInput) -> GovernanceState:
        for index, step in enumerate(self._definition.steps):
            self._state.current = index
            state = self._state.steps[index]
            # Open before the record is written: votes are taken from the moment the step begins.
            state.status = "open"
            await self._record(
                "step_started", f"{step.kind} step {step.name!r}", step=step.name, current_step=step.name
            )
            if isinstance(step, ApprovalStep):
                result = await self._approval(step, state)
                state.status = result
                passed = result == "approved"
            elif isinstance(step, CheckStep):
                checked: CheckResult = await workflow.execute_activity_method(
                    GovernanceActivities.governance_check,
                    CheckInput(run_id=data.run_id, tier=step.tier, requirement=step.requirement),
                    start_to_close_timeout=policies.DB_TIMEOUT,
                    retry_policy=policies.DATABASE,
                )
                state.status, state.note = ("passed" if checked.passed else "failed"), checked.note
                passed = checked.passed
                await self._record("check", f"{step.name!r}: {checked.note}", step=step.name)
            else:
                assert isinstance(step, WaitStep)
                await workflow.sleep(timedelta(seconds=step.seconds))
                state.status = "done"
                passed = True
            if not passed:
                self._state.status = "rejected"
                self._state.reason = f"step {step.name!r} {state.status}" + (f" ({state.note})" if state.note else "")
                break
        else:
            self._state.status = "approved"
            self._state.reason = "every step passed"
        self._state.current = len(self._definition.steps)
        # Votes still being recorded finish first; none can be accepted any more.
        await workflow.wait_condition(workflow.all_handlers_finished)
        await self._record(
            "run_ended",
            f"{self._state.status}: {self._state.reason}",
            status=self._state.status,
            reason=self._state.reason,
        )
        return self._state
