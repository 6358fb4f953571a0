"""StopServerWorkflow and DeleteServerWorkflow: their input and outcome."""

from __future__ import annotations

from dataclasses import dataclass, field

from temporalio import workflow


@dataclass
class ServerInput:
    server_id: str
    host_wait_seconds: float = 120.0


@dataclass
class ServerOutcome:
    server_id: str
    status: str
    stopped_instances: int = 0
    # Hosts that could not be reached, and what that left behind there.
    warnings: list[str] = field(default_factory=list)


@workflow.defn(name="StopServerWorkflow")
class StopServerWorkflowContract:
    """workflows.server_lifecycle.StopServerWorkflow, as callers see it. Business id `stop-<server>`."""

    @workflow.run
    async def run(self, data: ServerInput) -> ServerOutcome:
        raise NotImplementedError("a contract: the worker runs StopServerWorkflow")


@workflow.defn(name="DeleteServerWorkflow")
class DeleteServerWorkflowContract:
    """workflows.server_lifecycle.DeleteServerWorkflow, as callers see it. Business id `delete-<server>`."""

    @workflow.run
    async def run(self, data: ServerInput) -> ServerOutcome:
        raise NotImplementedError("a contract: the worker runs DeleteServerWorkflow")
