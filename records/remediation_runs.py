"""Opening a remediation run and telling listeners it changed: shared by the API (a run started by hand)
and the worker (runs the supervisor or the attestation start)."""

from __future__ import annotations

import uuid

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from core.db import SERVERS_CHANNEL, notify
from core.models import RemediationPlaybook, RemediationRun, Server
from core.remediation import Playbook, RunStatus


async def notify_run(session: AsyncSession, run_id: uuid.UUID | str, server_id: uuid.UUID | str) -> None:
    await notify(session, SERVERS_CHANNEL, {"kind": "remediation", "id": str(server_id), "run": str(run_id)})


async def open_run(
    session: AsyncSession, playbook: RemediationPlaybook, server: Server, trigger: str, requester: uuid.UUID | None
) -> RemediationRun | None:
    """A new run of the playbook for the server, or None when one is already active (savepoint, so the
    caller's transaction goes on)."""
    definition = Playbook.model_validate(playbook.definition)
    run_id = uuid.uuid4()
    run = RemediationRun(
        id=run_id,
        playbook_id=playbook.id,
        server_id=server.id,
        trigger=trigger,
        status=RunStatus.AWAITING_APPROVAL if definition.approval else RunStatus.RUNNING,
        requester_id=requester,
        version=1,
        workflow_id=f"remediation-{run_id}",
        definition=playbook.definition,
        results=[],
        cancel_requested=False,
        sla_breached=False,
    )
    try:
        async with session.begin_nested():
            session.add(run)
    except IntegrityError:
        return None
    await notify_run(session, run.id, server.id)
    return run
