"""SupervisorWorkflow: its `state` query (also its result).

Only DeployWorkflow starts it (a child, `supervise-<deployment>`), and its input carries the instance
record of the activities, so the input stays in workflows/supervisor.py: the contract is for reading."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from temporalio import workflow


@dataclass
class SupervisorState:
    deployment_id: str
    status: str  # healthy | unhealthy | restarting | degraded | ended
    restarts: int
    recent_failures: int
    last_probe: str
    instance_ref: str


@workflow.defn(name="SupervisorWorkflow")
class SupervisorWorkflowContract:
    """workflows.supervisor.SupervisorWorkflow, as callers see it."""

    @workflow.run
    async def run(self, data: Any) -> SupervisorState:
        raise NotImplementedError("a contract: the worker runs SupervisorWorkflow")

    @workflow.query(name="state")
    def state(self) -> SupervisorState:
        raise NotImplementedError
