"""Opening a deployment: the one path every way of deploying takes (the deployments route, webhooks,
rollback). A record is written first, in the caller's transaction with the server row locked; the
workflow is started after the commit, at most once per deployment."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession
from temporalio.client import Client

from api.deps import AppState
from core.errors import InvalidInput
from core.models import Deployment, Server
from records.deployments import IN_PROGRESS, RESERVED_KEY_PREFIXES, Opened, open_deployment
from records.deployments import current_spec as spec_for
from workflows.contracts.starters import start_deploy

__all__ = ["IN_PROGRESS", "Opened", "check_idempotency_key", "current_spec", "launch", "open_deployment"]


def check_idempotency_key(key: str | None) -> None:
    if key and key.startswith(RESERVED_KEY_PREFIXES):
        raise InvalidInput(f"Idempotency-Key must not start with {' or '.join(map(repr, RESERVED_KEY_PREFIXES))}")


def current_spec(
    server: Server, state: AppState, *, source: dict[str, Any] | None = None
) -> tuple[dict[str, Any], str]:
    """What deploying the server now means (see records.deployments.current_spec)."""
    return spec_for(server, state.settings.container_runtime, source=source)


async def launch(session: AsyncSession, state: AppState, client: Client, deployment: Deployment) -> None:
    """Start the workflow of a committed deployment record. A deployment its workflow has already taken
    up (or finished) starts nothing: asking again never runs it twice."""
    if deployment.status != "pending":
        return
    try:
        await start_deploy(
            client,
            state.settings,
            server_id=deployment.server_id,
            deployment_id=deployment.id,
            workflow_id=deployment.workflow_id,
        )
    except Exception as exc:
        # Nothing will run it: close the record with the reason instead of leaving it pending forever.
        async with session.begin():
            row = await session.get(Deployment, deployment.id, with_for_update=True)
            if row is not None and row.status == "pending":
                row.status = "failed"
                row.error = f"the deployment workflow could not be started: {getattr(exc, 'message', exc)}"
        raise
