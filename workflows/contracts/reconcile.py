"""ReconcileWorkflow: its input and outcome."""

from __future__ import annotations

from dataclasses import dataclass, field

from temporalio import workflow


@dataclass
class ReconcileRun:
    host_queue: str
    grace_seconds: float = 120.0


@dataclass
class ReconcileOutcome:
    actions: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@workflow.defn(name="ReconcileWorkflow")
class ReconcileWorkflowContract:
    """workflows.reconcile.ReconcileWorkflow, as callers see it: started by each worker's schedule
    `reconcile-<host queue>`."""

    @workflow.run
    async def run(self, data: ReconcileRun) -> ReconcileOutcome:
        raise NotImplementedError("a contract: the worker runs ReconcileWorkflow")
