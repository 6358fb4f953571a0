"""Temporal schedules in tests and scripts: whether one is there, and running its action now."""

from __future__ import annotations

from temporalio.client import ScheduleActionExecutionStartWorkflow, ScheduleDescription, ScheduleHandle
from temporalio.service import RPCError, RPCStatusCode

from tests.support.stack import wait_for


async def described(handle: ScheduleHandle) -> ScheduleDescription | None:
    """The schedule, or None when there is none."""
    try:
        return await handle.describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return None
        raise


async def removed(handle: ScheduleHandle) -> None:
    """Delete the schedule if it is there."""
    try:
        await handle.delete()
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise


async def run_now(handle: ScheduleHandle, timeout: float = 60) -> str:
    """Start the schedule's action now (its overlap policy applies); returns the id of the workflow it started."""

    async def started_ids() -> list[str]:
        recent = (await handle.describe()).info.recent_actions
        return [r.action.workflow_id for r in recent if isinstance(r.action, ScheduleActionExecutionStartWorkflow)]

    before = set(await started_ids())
    await handle.trigger()

    async def started() -> str | None:
        return next((wid for wid in await started_ids() if wid not in before), None)

    workflow_id: str = await wait_for(started, "the triggered run to start", timeout)
    return workflow_id
