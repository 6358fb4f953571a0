"""StopServerWorkflow and DeleteServerWorkflow: take a server off the gateway and stop its instances."""

from __future__ import annotations

from dataclasses import dataclass

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.records import RecordActivities, ServerRef
    from activities.runtime import RetireInput, RuntimeActivities
    from workflows import policies


@dataclass
class ServerInput:
    server_id: str


@dataclass
class ServerOutcome:
    server_id: str
    status: str
    stopped_instances: int = 0


async def _take_down(server_id: str) -> int:
    # Route first, so no request is sent to an instance that is going away.
    await workflow.execute_activity_method(
        RecordActivities.deactivate_server,
        ServerRef(server_id=server_id),
        start_to_close_timeout=policies.DB_TIMEOUT,
        retry_policy=policies.DATABASE,
    )
    retired = await workflow.execute_activity_method(
        RuntimeActivities.retire_instances,
        RetireInput(server_id=server_id, keep_deployment_id=None, remove=True),
        start_to_close_timeout=policies.RETIRE_TIMEOUT,
        heartbeat_timeout=policies.HEARTBEAT,
        retry_policy=policies.CLEANUP,
    )
    return len(retired.stopped_deployment_ids)


@workflow.defn(name="StopServerWorkflow")
class StopServerWorkflow:
    @workflow.run
    async def run(self, data: ServerInput) -> ServerOutcome:
        stopped = await _take_down(data.server_id)
        await workflow.execute_activity_method(
            RecordActivities.mark_server_stopped,
            ServerRef(server_id=data.server_id),
            start_to_close_timeout=policies.DB_TIMEOUT,
            retry_policy=policies.DATABASE,
        )
        return ServerOutcome(server_id=data.server_id, status="stopped", stopped_instances=stopped)


@workflow.defn(name="DeleteServerWorkflow")
class DeleteServerWorkflow:
    @workflow.run
    async def run(self, data: ServerInput) -> ServerOutcome:
        stopped = await _take_down(data.server_id)
        await workflow.execute_activity_method(
            RecordActivities.delete_server_records,
            ServerRef(server_id=data.server_id),
            start_to_close_timeout=policies.DB_TIMEOUT,
            retry_policy=policies.DATABASE,
        )
        return ServerOutcome(server_id=data.server_id, status="deleted", stopped_instances=stopped)
