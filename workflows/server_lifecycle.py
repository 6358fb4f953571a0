"""StopServerWorkflow and DeleteServerWorkflow: take a server off the gateway and stop its instances."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.records import RecordActivities, ServerNote, ServerRef
    from workflows import placement, policies
    from workflows.contracts.server_lifecycle import ServerInput, ServerOutcome


async def _take_down(data: ServerInput) -> placement.Retired:
    # Route first, so no request is sent to an instance that is going away.
    await workflow.execute_activity_method(
        RecordActivities.deactivate_server,
        ServerRef(server_id=data.server_id),
        start_to_close_timeout=policies.DB_TIMEOUT,
        retry_policy=policies.DATABASE,
    )
    # Retired change (see workflows.deploy): a gone host is given up on after the wait; the server is
    # still taken off the gateway and stopped everywhere else, and the warning says what may still run there.
    workflow.deprecate_patch(placement.PATCH)
    return await placement.retire_on_hosts(
        data.server_id, keep_deployment_id=None, also=None, wait=timedelta(seconds=data.host_wait_seconds)
    )


@workflow.defn(name="StopServerWorkflow")
class StopServerWorkflow:
    @workflow.run
    async def run(self, data: ServerInput) -> ServerOutcome:
        retired = await _take_down(data)
        for warning in retired.warnings:
            await workflow.execute_activity_method(
                RecordActivities.note_server,
                ServerNote(server_id=data.server_id, message=f"stop: {warning}"),
                start_to_close_timeout=policies.DB_TIMEOUT,
                retry_policy=policies.DATABASE,
            )
        await workflow.execute_activity_method(
            RecordActivities.mark_server_stopped,
            ServerRef(server_id=data.server_id),
            start_to_close_timeout=policies.DB_TIMEOUT,
            retry_policy=policies.DATABASE,
        )
        return ServerOutcome(
            server_id=data.server_id,
            status="stopped",
            stopped_instances=len(retired.stopped_deployment_ids),
            warnings=retired.warnings,
        )


@workflow.defn(name="DeleteServerWorkflow")
class DeleteServerWorkflow:
    @workflow.run
    async def run(self, data: ServerInput) -> ServerOutcome:
        # With the records gone nothing points at what an unreachable host still holds: the warnings in
        # the outcome (and the worker's log) are all that is left of it.
        retired = await _take_down(data)
        await workflow.execute_activity_method(
            RecordActivities.delete_server_records,
            ServerRef(server_id=data.server_id),
            start_to_close_timeout=policies.DB_TIMEOUT,
            retry_policy=policies.DATABASE,
        )
        return ServerOutcome(
            server_id=data.server_id,
            status="deleted",
            stopped_instances=len(retired.stopped_deployment_ids),
            warnings=retired.warnings,
        )
