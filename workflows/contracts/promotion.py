"""PromotionWorkflow: its input, the `state` query (also its result) and the `turn` signal."""

from __future__ import annotations

from dataclasses import dataclass, field

from temporalio import workflow

from workflows.contracts.deploy import DeployInput


@dataclass
class PromotionInput:
    promotion_id: str
    # What each stage deployment is started with (its ids are filled in per server).
    deploy: DeployInput = field(default_factory=lambda: DeployInput(deployment_id="", server_id=""))


@dataclass
class PromotionState:
    promotion_id: str
    status: str = "scheduled"
    step: str = "queued"
    reason: str = ""
    notes: list[str] = field(default_factory=list)
    deployments: dict[str, str] = field(default_factory=dict)  # server id -> deployment status


@workflow.defn(name="PromotionWorkflow")
class PromotionWorkflowContract:
    """workflows.promotion.PromotionWorkflow, as callers see it. Business id `promotion-<id>`; cancelling
    it aborts the promotion."""

    @workflow.run
    async def run(self, data: PromotionInput) -> PromotionState:
        raise NotImplementedError("a contract: the worker runs PromotionWorkflow")

    @workflow.query(name="state")
    def state(self) -> PromotionState:
        raise NotImplementedError

    @workflow.signal(name="turn")
    def turn(self) -> None:
        """The promotion ahead in the stage's queue is done: look whether this one's turn has come."""
        raise NotImplementedError
