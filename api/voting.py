"""Governance runs as the API shows and steers them: who may see a run, its public form with the live
state of its workflow, and votes (Temporal Updates; refused ones kept in the audit trail). Shared by the
governance routes and the promotion routes, whose approvals are governance votes."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio.client import WorkflowUpdateFailedError, WorkflowUpdateRPCTimeoutOrCancelledError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from api.deps import load_visible_run
from api.schemas.common import GovernanceAuditPublic, GovernanceRunPublic, error_responses
from api.workflows import has_ended
from core.errors import Conflict, DomainError, Forbidden, Unavailable
from core.governance import RunStatus
from core.models import GovernanceAudit, GovernanceRun, User
from records import governance_runs
from workflows.contracts.governance import GovernanceRunWorkflowContract, GovernanceState, VoteInput

VOTE_TIMEOUT_SECONDS = 10.0


REFUSAL_STATUS = {"not_approver": Forbidden, "four_eyes": Forbidden, "duplicate": Conflict, "closed": Conflict}


class Accepted(DomainError):
    """Not an error: the vote is queued (no worker answers yet) and will be applied when one does."""

    status_code = 202
    code = "queued"


async def reload_run(session: AsyncSession, run_id: uuid.UUID) -> GovernanceRun:
    row = await session.get(GovernanceRun, run_id, populate_existing=True)
    assert row is not None
    return row


def named_in(run: GovernanceRun, user: User) -> bool:
    """Whether the person may act on some approval step of the run (by email or role)."""
    roles = set(user.roles or [])
    for step in run.steps.get("steps", []):
        if step.get("kind") != "approval":
            continue
        emails = {e.lower() for e in [*step.get("users", []), *step.get("escalate_users", [])]}
        if user.email.lower() in emails or roles & {*step.get("roles", []), *step.get("escalate_roles", [])}:
            return True
    return False


async def visible_run(session: AsyncSession, user: User, run_id: uuid.UUID) -> GovernanceRun:
    """A run is seen by its server's owner, administrators, and the people its approval steps name;
    to anyone else it does not exist."""
    run: GovernanceRun = await load_visible_run(session, user, GovernanceRun, run_id, "governance run", named_in)
    return run


async def run_public(session: AsyncSession, run: GovernanceRun, live: dict[str, Any] | None) -> GovernanceRunPublic:
    audit = (
        await session.scalars(
            select(GovernanceAudit).where(GovernanceAudit.run_id == run.id).order_by(GovernanceAudit.id)
        )
    ).all()
    return GovernanceRunPublic(
        id=run.id,
        definition_id=run.definition_id,
        server_id=run.server_id,
        subject=run.subject,
        tier=run.tier,
        requester_id=run.requester_id,
        workflow_id=run.workflow_id,
        status=run.status,
        current_step=run.current_step,
        reason=run.reason,
        created_at=run.created_at,
        finished_at=run.finished_at,
        live=live,
        audit=[GovernanceAuditPublic.model_validate(a) for a in audit],
    )


async def live_state(client: Any, run: GovernanceRun) -> dict[str, Any] | None:
    if run.status != RunStatus.RUNNING:
        return None
    try:
        state = await asyncio.wait_for(
            client.get_workflow_handle(run.workflow_id).query(GovernanceRunWorkflowContract.state), timeout=3
        )
    except Exception:  # noqa: BLE001 - the record answers when the workflow cannot (no worker right now)
        return None
    return dataclasses.asdict(state) if isinstance(state, GovernanceState) else None


async def cast_vote(
    session: AsyncSession, client: Any, user: User, run_id: uuid.UUID, approve: bool, comment: str
) -> GovernanceRunPublic:
    run = await visible_run(session, user, run_id)
    action = "approve" if approve else "reject"
    refused: DomainError | None = None
    if run.status != RunStatus.RUNNING:
        refused = Conflict(f"the governance run has ended ({run.status})")
    else:
        vote = VoteInput(user_id=str(user.id), email=user.email, roles=list(user.roles or []), approve=approve,
                         comment=comment)  # fmt: skip
        handle = client.get_workflow_handle(run.workflow_id)
        try:
            await handle.execute_update(
                GovernanceRunWorkflowContract.vote, vote, rpc_timeout=timedelta(seconds=VOTE_TIMEOUT_SECONDS)
            )
        except WorkflowUpdateFailedError as exc:
            cause = exc.cause
            kind = cause.type if isinstance(cause, ApplicationError) else None
            message = str(cause.message if isinstance(cause, ApplicationError) else exc)
            refused = REFUSAL_STATUS.get(kind or "", Conflict)(message)
        except WorkflowUpdateRPCTimeoutOrCancelledError:
            raise Accepted(
                f"your {action} is queued: no worker has taken it yet; it is applied when one does"
            ) from None
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise Unavailable(f"could not reach the governance workflow: {exc.message}") from None
            if await has_ended(handle, "the governance workflow"):
                refused = Conflict("the governance run has ended")
            else:
                # Its record is `running` but its workflow is not there: it is being started.
                refused = Conflict("the governance run is starting and cannot take votes yet; vote again in a moment")
    if refused is not None:
        # Never in the workflow's history: the audit trail keeps it.
        run_key, step, email = run.id, run.current_step, user.email
        await session.rollback()  # the reads above began a transaction
        async with session.begin():
            await governance_runs.refused(
                session, run_key, step, email, f"{action}: {refused}" + (f" (comment: {comment})" if comment else "")
            )
        raise refused
    fresh = await reload_run(session, run.id)
    return await run_public(session, fresh, await live_state(client, fresh))


VOTE_RESPONSES = {
    202: {"model": None, "description": "Queued: no worker has taken the vote yet"},
    **error_responses(401, 403, 404, 409, 422, 503),
}
