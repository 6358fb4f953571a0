"""PruneHistoryWorkflow: its input and outcome."""

from __future__ import annotations

from dataclasses import dataclass, field

from temporalio import workflow


@dataclass
class PruneRun:
    log_retention_days: float = 30.0
    event_retention_days: float = 90.0
    # Rows deleted per transaction.
    batch_size: int = 5000


@dataclass
class PruneOutcome:
    # Rows deleted, by table (server_logs, usage_metrics).
    deleted: dict[str, int] = field(default_factory=dict)


@workflow.defn(name="PruneHistoryWorkflow")
class PruneHistoryWorkflowContract:
    """workflows.prune_history.PruneHistoryWorkflow, as callers see it: started by the installation's
    schedule `prune-history`."""

    @workflow.run
    async def run(self, data: PruneRun) -> PruneOutcome:
        raise NotImplementedError("a contract: the worker runs PruneHistoryWorkflow")
