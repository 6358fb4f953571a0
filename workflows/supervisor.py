"""SupervisorWorkflow: watch one serving revision and keep it up.

Started by DeployWorkflow once a revision is `running` (business id `supervise-<deployment>`), it probes
the instance at the MCP level every interval, on the instance's host. A crashed or unhealthy instance is
replaced after an exponential backoff (a durable timer); `unhealthy`, `restart`, `recovered` and
`degraded` events are recorded, and the server turns `degraded` after `failure_threshold` failures
within `window_seconds` (and back to `running` once a window passes without one). It ends when the
revision stops serving: the server was stopped, deleted or redeployed. Its state is the `state` query;
it continues as new every `ROUNDS_PER_RUN` probes so its history stays short."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.records import InstanceRecord
    from activities.remediation import RemediationActivities, TriggerInput
    from activities.supervision import (
        ProbeInput,
        ProbeResult,
        RestartInput,
        RestartResult,
        SupervisionActivities,
        SupervisionEvent,
    )
    from workflows import policies
    from workflows.contracts.supervisor import SupervisorState
    from workflows.errors import failure_reason

ROUNDS_PER_RUN = 200
# A probe that cannot be placed on the instance's host within this long counts as a failed probe.
PROBE_PLACEMENT = timedelta(seconds=60)
PROBE_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=2)


@dataclass
class SupervisorInput:
    server_id: str
    deployment_id: str
    instance: InstanceRecord
    interval_seconds: float = 15.0
    failure_threshold: int = 3
    window_seconds: float = 300.0
    backoff_initial_seconds: float = 1.0
    backoff_max_seconds: float = 60.0
    # Carried over continue-as-new.
    failures: list[float] = field(default_factory=list)  # times (epoch seconds) of recent failures
    consecutive: int = 0
    restarts: int = 0
    events: int = 0
    degraded: bool = False


@workflow.defn(name="SupervisorWorkflow")
class SupervisorWorkflow:
    def __init__(self) -> None:
        self._state = SupervisorState(
            deployment_id="", status="healthy", restarts=0, recent_failures=0, last_probe="", instance_ref=""
        )

    @workflow.query(name="state")
    def state(self) -> SupervisorState:
        return self._state

    async def _record(self, data: SupervisorInput, event: str, message: str, **extra: object) -> None:
        data.events += 1
        await workflow.execute_activity_method(
            SupervisionActivities.record_supervision,
            SupervisionEvent(
                server_id=data.server_id,
                deployment_id=data.deployment_id,
                event=event,
                message=message,
                key=f"{data.deployment_id}:{data.events}",
                **extra,  # type: ignore[arg-type]
            ),
            start_to_close_timeout=policies.DB_TIMEOUT,
            retry_policy=policies.DATABASE,
        )

    def _queue(self, data: SupervisorInput) -> str | None:
        return data.instance.host_queue or None

    async def _probe(self, data: SupervisorInput) -> ProbeResult:
        try:
            result: ProbeResult = await workflow.execute_activity_method(
                SupervisionActivities.supervise_probe,
                ProbeInput(instance=data.instance),
                task_queue=self._queue(data),
                schedule_to_start_timeout=PROBE_PLACEMENT if self._queue(data) else None,
                start_to_close_timeout=timedelta(seconds=30),
                heartbeat_timeout=policies.HEARTBEAT,
                retry_policy=PROBE_RETRY,
            )
            return result
        except ActivityError as err:
            return ProbeResult(state="unhealthy", detail=f"the probe failed: {failure_reason(err)}")

    async def _trigger_remediation(self, data: SupervisorInput, detail: str) -> None:
        """The playbooks bound to the server start (one active run each); supervision goes on regardless."""
        try:
            await workflow.execute_activity_method(
                RemediationActivities.remediation_trigger,
                TriggerInput(server_id=data.server_id, trigger="degraded", detail=detail),
                start_to_close_timeout=policies.DB_TIMEOUT,
                retry_policy=policies.DATABASE,
            )
        except ActivityError as err:
            await self._record(data, "unhealthy", f"could not start remediation: {failure_reason(err)}")

    @workflow.run
    async def run(self, data: SupervisorInput) -> SupervisorState:
        self._state.deployment_id = data.deployment_id
        self._state.restarts = data.restarts
        self._state.instance_ref = data.instance.ref
        for _ in range(ROUNDS_PER_RUN):
            probe = await self._probe(data)
            now = workflow.now().timestamp()
            data.failures = [t for t in data.failures if now - t < data.window_seconds]
            self._state.last_probe = f"{probe.state}: {probe.detail}" if probe.detail else probe.state
            if probe.state == "gone":
                self._state.status = "ended"
                return self._state
            if probe.state == "healthy":
                if data.consecutive:
                    await self._record(
                        data, "recovered", f"the server answers MCP again after {data.consecutive} failure(s)"
                    )
                data.consecutive = 0
                if data.degraded and not data.failures:
                    data.degraded = False
                    await self._record(
                        data, "recovered", "no failure within the window: the server is running again", degraded=False
                    )
                self._state.status = "degraded" if data.degraded else "healthy"
                self._state.recent_failures = len(data.failures)
                await workflow.sleep(timedelta(seconds=data.interval_seconds))
                continue

            data.failures.append(now)
            data.consecutive += 1
            self._state.recent_failures = len(data.failures)
            self._state.status = "unhealthy"
            await self._record(data, "unhealthy", f"{probe.state}: {probe.detail}", failures=len(data.failures))
            if len(data.failures) >= data.failure_threshold and not data.degraded:
                data.degraded = True
                await self._record(
                    data,
                    "degraded",
                    f"{len(data.failures)} failures within {data.window_seconds:g} s: the server is degraded",
                    failures=len(data.failures),
                    degraded=True,
                )
                if workflow.patched("remediation-trigger"):
                    await self._trigger_remediation(data, f"{len(data.failures)} failures: {probe.state}")
            backoff = min(data.backoff_max_seconds, data.backoff_initial_seconds * 2 ** (data.consecutive - 1))
            self._state.status = "restarting"
            await workflow.sleep(timedelta(seconds=backoff))
            try:
                restarted: RestartResult = await workflow.execute_activity_method(
                    SupervisionActivities.supervise_restart,
                    RestartInput(instance=data.instance),
                    task_queue=self._queue(data),
                    schedule_to_start_timeout=PROBE_PLACEMENT if self._queue(data) else None,
                    start_to_close_timeout=policies.LAUNCH_TIMEOUT,
                    heartbeat_timeout=policies.HEARTBEAT,
                    retry_policy=policies.RUNTIME,
                )
            except ActivityError as err:
                await self._record(
                    data, "unhealthy", f"restart failed: {failure_reason(err)}", attempt=data.consecutive
                )
                continue
            if restarted.gone or restarted.instance is None:
                self._state.status = "ended"
                return self._state
            data.instance = restarted.instance
            data.restarts += 1
            self._state.restarts = data.restarts
            self._state.instance_ref = data.instance.ref
            await self._record(
                data,
                "restart",
                f"restarted the instance (restart {data.restarts}, after {backoff:g} s)",
                attempt=data.consecutive,
                backoff_seconds=backoff,
            )
            self._state.status = "degraded" if data.degraded else "healthy"
        workflow.continue_as_new(data)
