"""Sending runtime steps to the host that holds the instance, from workflow code.

A process-runtime instance (its process, logs and package environment) lives on the host whose worker
launched it, so every later step on it must run there. Each worker polls the shared task queue and a
queue of its own host (`<shared>-host-<WORKER_HOST_ID>`); the steps that need a host are sent to its
queue. A host whose workers are gone would hold such a step forever, so each one waits a bounded
time to be picked up: a deployment then fails, and a retirement goes on without that host and says so.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.exceptions import TimeoutError as TemporalTimeout

with workflow.unsafe.imports_passed_through():
    from activities.records import InstanceHosts, RecordActivities, ServerRef
    from activities.runtime import RetireInput, RetireResult, RuntimeActivities
    from workflows import policies

# The workflow.patched() id of every change that sends runtime steps to host queues.
PATCH = "host-placement"


@dataclass
class Retired:
    stopped_deployment_ids: list[str] = field(default_factory=list)
    # One readable line per host that could not be reached: what was left there.
    warnings: list[str] = field(default_factory=list)


def host_name(queue: str) -> str:
    """The WORKER_HOST_ID in a host queue's name, for messages."""
    shared = workflow.info().task_queue
    return queue.removeprefix(f"{shared}-host-") if queue != shared else "any worker"


def unreachable(err: ActivityError) -> bool:
    """Whether a host-queue call failed because no worker of that host took it up (or kept it) in time,
    rather than because the host tried and reported a failure."""
    cause = err.cause
    return isinstance(cause, TemporalTimeout) and not isinstance(cause.cause, ApplicationError)


async def retire_on_hosts(
    server_id: str, *, keep_deployment_id: str | None, also: str | None, wait: timedelta
) -> Retired:
    """Retire the server's instances on every host that may still hold one, at once.

    The hosts come from the deployments' instance records (each host marks its records retired once it
    holds nothing of them, so a gone host is not waited for again and again); `also` adds one more,
    the deploying revision's own host. A host that does not answer within `wait` is left out with a
    warning rather than failing the whole stop: its workers are gone, and what they held is unreachable
    until they come back, when the next stop or deploy of the server retires it there.
    """
    hosts: InstanceHosts = await workflow.execute_activity_method(
        RecordActivities.instance_hosts,
        ServerRef(server_id=server_id),
        start_to_close_timeout=policies.DB_TIMEOUT,
        retry_policy=policies.DATABASE,
    )
    shared = workflow.info().task_queue
    # Records from before hosts had queues name none: the shared queue stands in, as it did then.
    queues = sorted({queue or shared for queue in hosts.host_queues} | ({also} if also else set()))

    async def retire(queue: str) -> RetireResult:
        return await workflow.execute_activity_method(
            RuntimeActivities.retire_instances,
            RetireInput(server_id=server_id, keep_deployment_id=keep_deployment_id, remove=True),
            task_queue=queue,
            schedule_to_start_timeout=wait,
            schedule_to_close_timeout=wait + policies.RETIRE_TIMEOUT,
            start_to_close_timeout=policies.RETIRE_TIMEOUT,
            heartbeat_timeout=policies.HEARTBEAT,
            retry_policy=policies.CLEANUP,
        )

    results = await asyncio.gather(*(retire(queue) for queue in queues), return_exceptions=True)
    retired = Retired()
    failure: BaseException | None = None
    for queue, result in zip(queues, results, strict=True):
        if isinstance(result, RetireResult):
            retired.stopped_deployment_ids.extend(result.stopped_deployment_ids)
        elif isinstance(result, ActivityError) and unreachable(result):
            message = (
                f"host {host_name(queue)} did not answer within {wait.total_seconds():.0f}s; "
                "instances of this server there were not stopped"
            )
            workflow.logger.warning("retiring %s: %s", server_id, message)
            retired.warnings.append(message)
        else:
            failure = failure or result
    if failure is not None:
        # Every host has had its go first: one failing host must not keep the others' instances running.
        raise failure
    retired.stopped_deployment_ids = sorted(set(retired.stopped_deployment_ids))
    return retired
