"""Cancelling platform workflows from the API, and telling an ended one from one not started yet (they are
started in workflows.contracts.starters)."""

from __future__ import annotations

from typing import Any

from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from core.errors import Unavailable


async def cancel_deploy(client: Client, workflow_id: str) -> bool:
    """Ask a deployment's workflow to cancel; False when no such workflow exists (it never started)."""
    return await cancel_workflow(client, workflow_id, "the deployment workflow")


async def cancel_workflow(client: Client, workflow_id: str, what: str = "the workflow") -> bool:
    """Ask a workflow to cancel; False when no such workflow exists."""
    try:
        await client.get_workflow_handle(workflow_id).cancel()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return False
        raise Unavailable(f"could not cancel {what}: {exc.message}") from None
    return True


async def has_ended(handle: WorkflowHandle[Any, Any], what: str = "the workflow") -> bool:
    """Whether the workflow is there and has closed. Temporal answers an Update or a signal with NOT_FOUND
    both when the workflow has ended and when it was never started; its description tells them apart."""
    try:
        description = await handle.describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return False
        raise Unavailable(f"could not reach {what}: {exc.message}") from None
    return description.status not in (None, WorkflowExecutionStatus.RUNNING)
