"""Cancelling platform workflows from the API (they are started in workflows.contracts.starters)."""

from __future__ import annotations

from temporalio.client import Client
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
