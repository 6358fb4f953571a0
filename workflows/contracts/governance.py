"""GovernanceRunWorkflow: its input, the `vote` Update's argument and the `state` query (also its result)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from temporalio import workflow

from core.governance import Vote


@dataclass
class GovernanceInput:
    run_id: str
    requester_id: str
    steps: list[dict[str, Any]]


@dataclass
class VoteInput:
    user_id: str
    email: str
    roles: list[str]
    approve: bool
    comment: str = ""


@dataclass
class StepState:
    name: str
    kind: str
    status: str = "waiting"  # waiting | open | approved | rejected | passed | failed | done
    votes: list[Vote] = field(default_factory=list)
    escalated: bool = False
    note: str = ""


@dataclass
class GovernanceState:
    run_id: str
    status: str = "running"  # running | approved | rejected
    current: int = 0
    steps: list[StepState] = field(default_factory=list)
    reason: str = ""


@workflow.defn(name="GovernanceRunWorkflow")
class GovernanceRunWorkflowContract:
    """workflows.governance.GovernanceRunWorkflow, as callers see it. Business id `governance-<run>`.
    A refused vote fails the Update with an ApplicationError whose type says why (core.governance)."""

    @workflow.run
    async def run(self, data: GovernanceInput) -> GovernanceState:
        raise NotImplementedError("a contract: the worker runs GovernanceRunWorkflow")

    @workflow.query(name="state")
    def state(self) -> GovernanceState:
        raise NotImplementedError

    @workflow.update(name="vote")
    async def vote(self, data: VoteInput) -> GovernanceState:
        raise NotImplementedError
