"""Governance runs: opened, recorded and ended in one place, by the API (a run asked for by hand, a
refused vote) and the worker (a promotion's governance step, each event of GovernanceRunWorkflow). Every
change is announced on the servers channel (`kind: governance`), which a run's event stream waits on."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from core.db import SERVERS_CHANNEL, notify
from core.governance import RunStatus
from core.models import GovernanceAudit, GovernanceDefinition, GovernanceRun, ServerLog


async def announce(session: AsyncSession, run_id: uuid.UUID | str) -> None:
    """Tell every API replica the run or its audit trail changed (sent when the transaction commits)."""
    await notify(session, SERVERS_CHANNEL, {"kind": "governance", "id": str(run_id)})


def workflow_id(run_id: uuid.UUID) -> str:
    return f"governance-{run_id}"


async def open_run(
    session: AsyncSession,
    definition: GovernanceDefinition,
    *,
    server_id: uuid.UUID,
    subject: str,
    tier: str,
    requester_id: uuid.UUID | None,
) -> GovernanceRun:
    """A new `running` run of the definition's steps (a snapshot: later edits of the definition do not
    change it) for the artifact `subject` at `tier`."""
    run_id = uuid.uuid4()
    run = GovernanceRun(
        id=run_id,
        definition_id=definition.id,
        server_id=server_id,
        subject=subject,
        tier=tier,
        requester_id=requester_id,
        workflow_id=workflow_id(run_id),
        steps=definition.steps,
        status=RunStatus.RUNNING,
    )
    session.add(run)
    await announce(session, run_id)
    return run


async def end(session: AsyncSession, run_id: uuid.UUID, status: RunStatus, reason: str) -> None:
    """End the run if it is still running (a run that has ended keeps its outcome)."""
    await session.execute(
        update(GovernanceRun)
        .where(GovernanceRun.id == run_id, GovernanceRun.status == RunStatus.RUNNING)
        .values(status=status, reason=reason, finished_at=datetime.now(UTC))
    )
    await announce(session, run_id)


async def cancel(session: AsyncSession, run_id: uuid.UUID, reason: str) -> None:
    await end(session, run_id, RunStatus.CANCELLED, reason)


async def refused(session: AsyncSession, run_id: uuid.UUID, step: str | None, actor: str, comment: str) -> None:
    """A vote the run did not take: never in the workflow's history, kept in the audit trail."""
    session.add(
        GovernanceAudit(run_id=run_id, step=step, actor=actor, action="refused", accepted=False, comment=comment)
    )
    await announce(session, run_id)


async def record(
    session: AsyncSession,
    run_id: uuid.UUID,
    *,
    key: str,
    action: str,
    step: str | None = None,
    actor: str | None = None,
    comment: str = "",
    status: str | None = None,
    current_step: str | None = None,
    reason: str | None = None,
) -> bool:
    """An event of the run's workflow, in its audit trail once (`key` is unique per event of the run), and
    the change it makes to the run's record. False when an earlier attempt recorded it."""
    inserted = await session.execute(
        insert(GovernanceAudit)
        .values(
            run_id=run_id,
            event_key=f"{run_id}:{key}",
            step=step,
            actor=actor,
            action=action,
            accepted=True,
            comment=comment,
        )
        .on_conflict_do_nothing(index_elements=["event_key"])
        .returning(GovernanceAudit.id)
    )
    if inserted.first() is None:
        return False
    values: dict[str, Any] = {}
    if current_step is not None:
        values["current_step"] = current_step
    if status is not None:
        values["status"] = RunStatus(status)
        values["reason"] = reason
        if status != RunStatus.RUNNING:
            values["finished_at"] = datetime.now(UTC)
    if values:
        await session.execute(update(GovernanceRun).where(GovernanceRun.id == run_id).values(**values))
    if action in ("escalated", "expired", "run_ended"):
        run = await session.get(GovernanceRun, run_id)
        if run is not None:
            session.add(
                ServerLog(
                    server_id=run.server_id,
                    message=f"governance run {run.id} ({run.subject}, {run.tier}): {comment}",
                    level="warning" if action != "run_ended" else "info",
                )
            )
    await announce(session, run_id)
    return True
