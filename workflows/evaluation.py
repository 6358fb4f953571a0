"""EvaluationRunWorkflow: run a server's evaluation tests against one revision and record the results.

The revision serving is called where it runs (its host's queue). Any other revision is a candidate: it
is placed on a host, prepared and launched beside the serving one, health-checked, called directly
(never through the gateway, so no client sees it) and removed afterwards, whatever happened, cancellation
included. Results are written per test by the activity; history carries only counts. Business id
`eval-<run id>`; its progress is the `progress` query."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.evaluation import (
        EvalFinish,
        EvalRelease,
        EvalSummary,
        EvalTarget,
        EvalTestsInput,
        EvaluationActivities,
    )
    from activities.health import HealthActivities, HealthInput
    from activities.records import InstanceRecord
    from activities.runtime import HostClaim, RuntimeActivities
    from workflows import policies
    from workflows.contracts.evaluation import EvaluationInput, EvaluationProgress
    from workflows.errors import failure_reason


@workflow.defn(name="EvaluationRunWorkflow")
class EvaluationRunWorkflow:
    def __init__(self) -> None:
        self._progress = EvaluationProgress(run_id="", step="target")

    @workflow.query(name="progress")
    def progress(self) -> EvaluationProgress:
        return self._progress

    async def _finish(self, data: EvaluationInput, *, error: str = "", cancelled: bool = False) -> str:
        status: str = await workflow.execute_activity_method(
            EvaluationActivities.finish_evaluation,
            EvalFinish(run_id=data.run_id, error=error, cancelled=cancelled),
            start_to_close_timeout=policies.DB_TIMEOUT,
            retry_policy=policies.DATABASE,
        )
        self._progress.step = "finished"
        self._progress.status = status
        self._progress.error = error
        return status

    async def _launch(self, data: EvaluationInput, deployment_id: str) -> InstanceRecord:
        wait = timedelta(seconds=data.host_wait_seconds)
        claim: HostClaim = await workflow.execute_activity_method(
            RuntimeActivities.claim_host,
            deployment_id,
            start_to_close_timeout=policies.CLAIM_TIMEOUT,
            retry_policy=policies.RUNTIME,
        )
        self._progress.step = "launch"
        await workflow.execute_activity_method(
            RuntimeActivities.prepare_source,
            deployment_id,
            start_to_close_timeout=timedelta(seconds=data.install_timeout_seconds),
            heartbeat_timeout=policies.HEARTBEAT,
            retry_policy=policies.RUNTIME,
            task_queue=claim.host_queue,
            schedule_to_start_timeout=wait,
        )
        instance: InstanceRecord = await workflow.execute_activity_method(
            RuntimeActivities.launch_instance,
            deployment_id,
            start_to_close_timeout=policies.LAUNCH_TIMEOUT,
            heartbeat_timeout=policies.HEARTBEAT,
            retry_policy=policies.RUNTIME,
            task_queue=claim.host_queue,
            schedule_to_start_timeout=wait,
        )
        return instance

    async def _release(self, data: EvaluationInput, instance: InstanceRecord) -> None:
        self._progress.step = "release"
        await workflow.execute_activity_method(
            EvaluationActivities.release_candidate,
            EvalRelease(run_id=data.run_id, instance=instance),
            start_to_close_timeout=policies.LAUNCH_TIMEOUT,
            heartbeat_timeout=policies.HEARTBEAT,
            retry_policy=policies.CLEANUP,
            task_queue=instance.host_queue or None,
            schedule_to_start_timeout=timedelta(seconds=data.host_wait_seconds) if instance.host_queue else None,
        )

    @workflow.run
    async def run(self, data: EvaluationInput) -> EvaluationProgress:
        self._progress.run_id = data.run_id
        target: EvalTarget = await workflow.execute_activity_method(
            EvaluationActivities.evaluation_target,
            data.run_id,
            start_to_close_timeout=policies.DB_TIMEOUT,
            retry_policy=policies.DATABASE,
        )
        if target.ended:
            self._progress.step, self._progress.status = "finished", target.ended
            return self._progress
        if target.error:
            await self._finish(data, error=target.error)
            return self._progress
        self._progress.candidate = target.candidate
        launched: InstanceRecord | None = None
        try:
            instance = target.instance
            if instance is None:
                launched = instance = await self._launch(data, target.deployment_id)
                self._progress.step = "health_check"
                await workflow.execute_activity_method(
                    HealthActivities.check_health,
                    HealthInput(instance=instance, timeout_seconds=data.health_timeout_seconds, store=True),
                    start_to_close_timeout=timedelta(seconds=data.health_timeout_seconds + 30),
                    heartbeat_timeout=policies.HEARTBEAT,
                    retry_policy=policies.HEALTH,
                    task_queue=instance.host_queue or None,
                    schedule_to_start_timeout=timedelta(seconds=data.host_wait_seconds)
                    if instance.host_queue
                    else None,
                )
            self._progress.step = "tests"
            summary: EvalSummary = await workflow.execute_activity_method(
                EvaluationActivities.run_evaluation_tests,
                EvalTestsInput(run_id=data.run_id, instance=instance),
                start_to_close_timeout=timedelta(seconds=data.run_timeout_seconds),
                heartbeat_timeout=policies.HEARTBEAT,
                retry_policy=policies.HEALTH,
                task_queue=instance.host_queue or None,
                schedule_to_start_timeout=timedelta(seconds=data.host_wait_seconds) if instance.host_queue else None,
            )
            workflow.logger.info("evaluated %d tests, %d passed", summary.total, summary.passed)
        except ActivityError as err:
            if launched is not None:
                await self._release(data, launched)
            await self._finish(data, error=failure_reason(err))
            return self._progress
        except asyncio.CancelledError:
            # Cancelled (API or Temporal UI): clean up what the run launched and say so, then end cancelled.
            if launched is not None:
                await self._release(data, launched)
            await self._finish(data, cancelled=True)
            raise
        if launched is not None:
            await self._release(data, launched)
        await self._finish(data)
        return self._progress
