"""PruneHistoryWorkflow: delete server log lines and telemetry events past their retention.

One Temporal schedule for the installation, `prune-history`, kept by the workers, starts this every
PRUNE_HISTORY_INTERVAL_SECONDS (a run still going skips the next), so every run and how many rows it
deleted are in the Temporal UI.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.prune_history import PruneActivities, PruneInput, PruneReport
    from workflows import policies
    from workflows.contracts.prune_history import PruneOutcome, PruneRun

# Generous: the first run on a large installation may have a long backlog (a retry goes on from there).
PRUNE_TIMEOUT = timedelta(minutes=30)


@workflow.defn(name="PruneHistoryWorkflow")
class PruneHistoryWorkflow:
    @workflow.run
    async def run(self, data: PruneRun) -> PruneOutcome:
        # The cutoffs are fixed once, here: every attempt of the activity works to the same ones.
        now = workflow.now()
        report: PruneReport = await workflow.execute_activity_method(
            PruneActivities.prune_history,
            PruneInput(
                log_cutoff=now - timedelta(days=data.log_retention_days),
                event_cutoff=now - timedelta(days=data.event_retention_days),
                batch_size=data.batch_size,
            ),
            start_to_close_timeout=PRUNE_TIMEOUT,
            heartbeat_timeout=policies.HEARTBEAT,
            retry_policy=policies.DATABASE,
        )
        workflow.logger.info("pruned history: %s", report.deleted)
        return PruneOutcome(deleted=report.deleted)
