"""ReconcileWorkflow: one pass of a host's reconciler (see activities/reconcile.py).

Each worker keeps a Temporal schedule `reconcile-<host queue>` that starts this every
RECONCILE_INTERVAL_SECONDS (a run still going skips the next), so the passes, what each set right and
any that failed are in the Temporal UI. The records pass runs on the shared queue; the instance pass
on the host's own queue, where its instances are: a host that is gone is skipped after a bounded wait.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.reconcile import ReconcileActivities, ReconcileInput, ReconcileReport
    from workflows import policies
    from workflows.contracts.reconcile import ReconcileOutcome, ReconcileRun
    from workflows.errors import failure_reason

PASS_TIMEOUT = timedelta(minutes=5)
PASS_RETRY = RetryPolicy(initial_interval=timedelta(seconds=2), maximum_attempts=3)


@workflow.defn(name="ReconcileWorkflow")
class ReconcileWorkflow:
    @workflow.run
    async def run(self, data: ReconcileRun) -> ReconcileOutcome:
        outcome = ReconcileOutcome()
        arg = ReconcileInput(grace_seconds=data.grace_seconds)
        # Records first: a deployment set to failed here has its instance removed by the pass after.
        try:
            records: ReconcileReport = await workflow.execute_activity_method(
                ReconcileActivities.reconcile_records,
                arg,
                start_to_close_timeout=PASS_TIMEOUT,
                heartbeat_timeout=policies.HEARTBEAT,
                retry_policy=PASS_RETRY,
            )
            outcome.actions.extend(records.actions)
        except ActivityError as err:
            outcome.warnings.append(f"records: {failure_reason(err)}")
        try:
            instances: ReconcileReport = await workflow.execute_activity_method(
                ReconcileActivities.reconcile_instances,
                arg,
                task_queue=data.host_queue,
                schedule_to_start_timeout=timedelta(seconds=60),
                start_to_close_timeout=PASS_TIMEOUT,
                heartbeat_timeout=policies.HEARTBEAT,
                retry_policy=PASS_RETRY,
            )
            outcome.actions.extend(instances.actions)
        except ActivityError as err:
            outcome.warnings.append(f"instances: {failure_reason(err)}")
        for line in outcome.actions:
            workflow.logger.info("reconciled: %s", line)
        return outcome
