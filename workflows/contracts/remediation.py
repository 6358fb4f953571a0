"""RemediationWorkflow: its input, the `vote` Update's argument, the `state` query (also its result) and
the `cancel` signal."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from temporalio import workflow

from core.governance import Vote
from workflows.contracts.deploy import DeployInput
from workflows.contracts.governance import VoteInput


@dataclass
class RemediationInput:
    run_id: str
    server_id: str
    requester_id: str
    definition: dict[str, Any]
    deploy: DeployInput = field(default_factory=lambda: DeployInput(deployment_id="", server_id=""))


# A vote on a run's approval is cast as on a governance step.
RemediationVote = VoteInput


@dataclass
class RemediationState:
    run_id: str
    status: str = "running"  # awaiting_approval | running | succeeded | failed | rejected | cancelled
    current: str = ""
    votes: list[Vote] = field(default_factory=list)
    escalated: bool = False
    cancel_requested: bool = False
    results: list[dict[str, Any]] = field(default_factory=list)
    exit_code: int | None = None
    reason: str = ""


@workflow.defn(name="RemediationWorkflow")
class RemediationWorkflowContract:
    """workflows.remediation.RemediationWorkflow, as callers see it. Business id `remediation-<run>`.
    A refused vote fails the Update with an ApplicationError whose type says why (core.governance)."""

    @workflow.run
    async def run(self, data: RemediationInput) -> RemediationState:
        raise NotImplementedError("a contract: the worker runs RemediationWorkflow")

    @workflow.query(name="state")
    def state(self) -> RemediationState:
        raise NotImplementedError

    @workflow.update(name="vote")
    async def vote(self, data: RemediationVote) -> RemediationState:
        raise NotImplementedError

    @workflow.signal(name="cancel")
    def cancel(self) -> None:
        """Stop the run after the step under way."""
        raise NotImplementedError
