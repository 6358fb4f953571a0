"""Remediation: playbooks (ordered steps, an optional approval and an SLA), their bindings to servers,
runs of them (RemediationWorkflow) started by hand or by the supervisor and the attestation, votes as
Temporal Updates, cancellation, the run's artifacts and a live stream. Every change of a run names the
version it saw (`If-Match`); a stale one is 409."""

from __future__ import annotations

import json
import re
import uuid
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Header, Query, Response, status
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio.client import WorkflowUpdateFailedError, WorkflowUpdateRPCTimeoutOrCancelledError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from api.deps import CurrentUser, SessionDep, StateDep, TemporalDep, load_server, load_visible_run
from api.schemas.common import ListOf, error_responses
from api.schemas.remediation import (
    PlaybookCreate,
    PlaybookPublic,
    RemediationArtifactPublic,
    RemediationRunCreate,
    RemediationRunPublic,
    RemediationVoteBody,
)
from api.sse import KEEPALIVE_SECONDS, SSE_RESPONSES, event, follow, rows_after, sse_response
from api.voting import REFUSAL_STATUS, Accepted
from core.errors import Conflict, InvalidInput, NotFound, Unavailable
from core.models import RemediationArtifact, RemediationBinding, RemediationPlaybook, RemediationRun, Server, User
from core.remediation import ACTIVE, Playbook, RunStatus
from records.remediation_runs import notify_run, open_run
from workflows.contracts.remediation import RemediationVote, RemediationWorkflowContract
from workflows.contracts.starters import start_remediation

router = APIRouter(prefix="/api/trust/remediation", tags=["remediation"])
VOTE_TIMEOUT_SECONDS = 10.0
CHANGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {"model": None, "description": "Queued: no worker has taken the vote yet"},
    **error_responses(401, 403, 404, 409, 422, 503),
}
VERSION = re.compile(r'^\s*(?:W/)?"?(\d{1,9})"?\s*$')


def _playbook_public(row: RemediationPlaybook, servers: list[uuid.UUID]) -> PlaybookPublic:
    definition = row.definition
    return PlaybookPublic(
        id=row.id,
        name=row.name,
        steps=definition["steps"],
        approval=definition.get("approval"),
        sla_seconds=definition.get("sla_seconds"),
        servers=servers,
        created_at=row.created_at,
    )


async def _own_playbook(session: AsyncSession, user: User, playbook_id: uuid.UUID) -> RemediationPlaybook:
    row = await session.get(RemediationPlaybook, playbook_id)
    if row is None or (row.owner_id != user.id and user.role != "admin"):
        raise NotFound(f"playbook {playbook_id} not found")
    return row


async def _bound(session: AsyncSession, playbook_id: uuid.UUID) -> list[uuid.UUID]:
    rows = await session.scalars(
        select(RemediationBinding.server_id).where(RemediationBinding.playbook_id == playbook_id)
    )
    return list(rows.all())


@router.post(
    "/playbooks",
    status_code=status.HTTP_201_CREATED,
    response_model=PlaybookPublic,
    responses=error_responses(401, 409, 422),
)
async def create_playbook(body: PlaybookCreate, user: CurrentUser, session: SessionDep) -> PlaybookPublic:
    """A playbook: steps run in order for a server that went wrong, optionally after an approval."""
    try:
        definition = Playbook.model_validate(body.model_dump(exclude={"name"}))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidInput(f"playbook {where}: {first['msg']}") from None
    row = RemediationPlaybook(
        owner_id=user.id, name=body.name.strip(), definition=definition.model_dump(mode="json", exclude_none=True)
    )
    try:
        async with session.begin():
            session.add(row)
    except IntegrityError:
        raise Conflict(f"you already have a playbook named {body.name.strip()!r}") from None
    return _playbook_public(row, [])


@router.get("/playbooks", response_model=ListOf[PlaybookPublic], responses=error_responses(401))
async def list_playbooks(user: CurrentUser, session: SessionDep) -> ListOf[PlaybookPublic]:
    query = select(RemediationPlaybook).order_by(RemediationPlaybook.name)
    if user.role != "admin":
        query = query.where(RemediationPlaybook.owner_id == user.id)
    rows = (await session.scalars(query)).all()
    data = [_playbook_public(r, await _bound(session, r.id)) for r in rows]
    return ListOf[PlaybookPublic](count=len(data), data=data)


@router.get("/playbooks/{playbook_id}", response_model=PlaybookPublic, responses=error_responses(401, 404, 422))
async def get_playbook(playbook_id: uuid.UUID, user: CurrentUser, session: SessionDep) -> PlaybookPublic:
    row = await _own_playbook(session, user, playbook_id)
    return _playbook_public(row, await _bound(session, row.id))


@router.delete(
    "/playbooks/{playbook_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(401, 404, 409, 422),
)
async def delete_playbook(playbook_id: uuid.UUID, user: CurrentUser, session: SessionDep) -> Response:
    """Delete a playbook and its runs' records; 409 while one of its runs is active."""
    async with session.begin():
        row = await _own_playbook(session, user, playbook_id)
        active = await session.scalar(
            select(RemediationRun.id).where(RemediationRun.playbook_id == row.id, RemediationRun.status.in_(ACTIVE))
        )
        if active is not None:
            raise Conflict(f"run {active} of this playbook is active: cancel it first")
        await session.delete(row)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.put(
    "/playbooks/{playbook_id}/servers/{server_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(401, 404, 422),
)
async def bind(playbook_id: uuid.UUID, server_id: uuid.UUID, user: CurrentUser, session: SessionDep) -> Response:
    """Bind the playbook to one of your servers: it runs when the server turns degraded or its guest
    does not attest (one active run per server and playbook)."""
    async with session.begin():
        row = await _own_playbook(session, user, playbook_id)
        server = await load_server(session, user, server_id)
        if await session.get(RemediationBinding, (server.id, row.id)) is None:
            session.add(RemediationBinding(server_id=server.id, playbook_id=row.id))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.delete(
    "/playbooks/{playbook_id}/servers/{server_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(401, 404, 422),
)
async def unbind(playbook_id: uuid.UUID, server_id: uuid.UUID, user: CurrentUser, session: SessionDep) -> Response:
    async with session.begin():
        row = await _own_playbook(session, user, playbook_id)
        server = await load_server(session, user, server_id)
        binding = await session.get(RemediationBinding, (server.id, row.id))
        if binding is None:
            raise NotFound("the playbook is not bound to this server")
        await session.delete(binding)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/playbooks/{playbook_id}/runs",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=RemediationRunPublic,
    responses=error_responses(401, 404, 409, 422, 503),
)
async def start_run(
    playbook_id: uuid.UUID,
    body: RemediationRunCreate,
    user: CurrentUser,
    session: SessionDep,
    state: StateDep,
    client: TemporalDep,
    response: Response,
) -> RemediationRunPublic:
    """Run the playbook for one of your servers now; you are its requester (four-eyes applies to you).
    409 when a run of this playbook for that server is already active."""
    async with session.begin():
        row = await _own_playbook(session, user, playbook_id)
        server = await load_server(session, user, body.server_id)
        run = await open_run(session, row, server, "manual", user.id)
        if run is None:
            raise Conflict("a run of this playbook for this server is already active")
        run_id, workflow_id, definition = run.id, run.workflow_id, run.definition
    try:
        await start_remediation(
            client,
            state.settings,
            run_id=str(run_id),
            server_id=str(server.id),
            requester_id=str(user.id),
            definition=definition,
            workflow_id=workflow_id,
        )
    except RPCError as exc:
        async with session.begin():
            await session.execute(
                update(RemediationRun)
                .where(RemediationRun.id == run_id)
                .values(status="cancelled", reason=f"the workflow could not be started: {exc.message}", exit_code=30)
            )
        raise Unavailable(f"could not start the remediation workflow: {exc.message}") from None
    fresh = await session.get(RemediationRun, run_id, populate_existing=True)
    assert fresh is not None
    response.headers["ETag"] = f'"{fresh.version}"'
    return RemediationRunPublic.model_validate(fresh)


def _named_in(run: RemediationRun, user: User) -> bool:
    approval = (run.definition or {}).get("approval")
    if not approval:
        return False
    roles = set(approval.get("roles", [])) | set(approval.get("escalate_roles", []))
    users = {u.lower() for u in [*approval.get("users", []), *approval.get("escalate_users", [])]}
    return user.email.lower() in users or bool(roles & set(user.roles or []))


async def _visible_run(session: AsyncSession, user: User, run_id: uuid.UUID) -> RemediationRun:
    """Seen by its server's owner, administrators and the approvers its playbook names; 404 to others."""
    run: RemediationRun = await load_visible_run(session, user, RemediationRun, run_id, "remediation run", _named_in)
    return run


@router.get("/runs", response_model=ListOf[RemediationRunPublic], responses=error_responses(401, 422))
async def list_runs(
    user: CurrentUser,
    session: SessionDep,
    server_id: uuid.UUID | None = Query(default=None),
    active: bool = Query(default=False, description="Only runs awaiting approval or running"),
    limit: int = Query(default=100, ge=1, le=500),
) -> ListOf[RemediationRunPublic]:
    """Runs of your servers' playbooks (administrators: all), newest first."""
    query = select(RemediationRun).join(Server, Server.id == RemediationRun.server_id)
    if user.role != "admin":
        query = query.where(Server.owner_id == user.id)
    if server_id is not None:
        query = query.where(RemediationRun.server_id == server_id)
    if active:
        query = query.where(RemediationRun.status.in_(ACTIVE))
    rows = (await session.scalars(query.order_by(RemediationRun.created_at.desc()).limit(limit))).all()
    return ListOf[RemediationRunPublic](count=len(rows), data=[RemediationRunPublic.model_validate(r) for r in rows])


@router.get("/runs/{run_id}", response_model=RemediationRunPublic, responses=error_responses(401, 404, 422))
async def get_run(
    run_id: uuid.UUID, user: CurrentUser, session: SessionDep, response: Response
) -> RemediationRunPublic:
    """The run; its `ETag` is its version."""
    run = await _visible_run(session, user, run_id)
    response.headers["ETag"] = f'"{run.version}"'
    return RemediationRunPublic.model_validate(run)


@router.get(
    "/runs/{run_id}/artifacts",
    response_model=ListOf[RemediationArtifactPublic],
    responses=error_responses(401, 404, 422),
)
async def run_artifacts(run_id: uuid.UUID, user: CurrentUser, session: SessionDep) -> ListOf[RemediationArtifactPublic]:
    """What the run's steps left, oldest first: log lines, HTTP answers, votes and refused attempts."""
    run = await _visible_run(session, user, run_id)
    rows = (
        await session.scalars(
            select(RemediationArtifact).where(RemediationArtifact.run_id == run.id).order_by(RemediationArtifact.id)
        )
    ).all()
    return ListOf[RemediationArtifactPublic](
        count=len(rows), data=[RemediationArtifactPublic.model_validate(r) for r in rows]
    )


def _version(if_match: str) -> int:
    found = VERSION.match(if_match)
    if found is None:
        raise InvalidInput('If-Match must be the run\'s version as its ETag gives it, e.g. "3"')
    return int(found.group(1))


def _check_version(run: RemediationRun, if_match: str) -> None:
    if run.version != _version(if_match):
        raise Conflict(f"the run changed (version {run.version}, you sent {if_match.strip()}): read it again")


async def _refused(session: AsyncSession, run: RemediationRun, user: User, what: str, error: Exception) -> None:
    """A refused change is never in the workflow's history; the run's artifacts keep it."""
    run_id, email = run.id, user.email  # read before the rollback expires them
    await session.rollback()
    async with session.begin():
        session.add(
            RemediationArtifact(
                run_id=run_id,
                key=f"{run_id}:refused:{uuid.uuid4()}",
                kind="refused",
                content=f"{what} by {email} refused: {error}",
            )
        )


async def _vote(
    session: AsyncSession, client: Any, user: User, run_id: uuid.UUID, approve: bool, comment: str, if_match: str
) -> RemediationRunPublic:
    run = await _visible_run(session, user, run_id)
    action = "approve" if approve else "reject"
    refused: Exception | None = None
    try:
        _check_version(run, if_match)
        if run.status != RunStatus.AWAITING_APPROVAL:
            raise Conflict(f"the run is not awaiting an approval ({run.status})")
    except Conflict as exc:
        refused = exc
    if refused is None:
        vote = RemediationVote(str(user.id), user.email, list(user.roles or []), approve, comment)
        try:
            await client.get_workflow_handle(run.workflow_id).execute_update(
                RemediationWorkflowContract.vote, vote, rpc_timeout=timedelta(seconds=VOTE_TIMEOUT_SECONDS)
            )
        except WorkflowUpdateFailedError as exc:
            cause = exc.cause
            kind = cause.type if isinstance(cause, ApplicationError) else None
            message = str(cause.message if isinstance(cause, ApplicationError) else exc)
            refused = REFUSAL_STATUS.get(kind or "", Conflict)(message)
        except WorkflowUpdateRPCTimeoutOrCancelledError:
            raise Accepted(f"your {action} is queued: no worker has taken it yet") from None
        except RPCError as exc:
            # NOT_FOUND: the workflow has ended, or (its record still waiting) it never started; either way
            # the run takes no vote.
            if exc.status == RPCStatusCode.NOT_FOUND:
                refused = Conflict("the remediation run has ended")
            else:
                raise Unavailable(f"could not reach the remediation workflow: {exc.message}") from None
    if refused is not None:
        await _refused(session, run, user, action, refused)
        raise refused
    fresh = await session.get(RemediationRun, run.id, populate_existing=True)
    assert fresh is not None
    return RemediationRunPublic.model_validate(fresh)


@router.post("/runs/{run_id}/approve", response_model=RemediationRunPublic, responses=CHANGE_RESPONSES)
async def approve(
    run_id: uuid.UUID,
    user: CurrentUser,
    session: SessionDep,
    client: TemporalDep,
    body: RemediationVoteBody | None = None,
    if_match: str = Header(alias="If-Match", max_length=40, description="The run's version (its ETag)"),
) -> RemediationRunPublic:
    """Approve the run's approval step (governance rules: named approvers, four-eyes, one vote each)."""
    return await _vote(session, client, user, run_id, True, body.comment if body else "", if_match)


@router.post("/runs/{run_id}/reject", response_model=RemediationRunPublic, responses=CHANGE_RESPONSES)
async def reject(
    run_id: uuid.UUID,
    user: CurrentUser,
    session: SessionDep,
    client: TemporalDep,
    body: RemediationVoteBody | None = None,
    if_match: str = Header(alias="If-Match", max_length=40, description="The run's version (its ETag)"),
) -> RemediationRunPublic:
    """Reject the run: it ends `rejected` (exit code 20) without running a step."""
    return await _vote(session, client, user, run_id, False, body.comment if body else "", if_match)


@router.post(
    "/runs/{run_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=RemediationRunPublic,
    responses=error_responses(401, 404, 409, 422, 503),
)
async def cancel(
    run_id: uuid.UUID,
    user: CurrentUser,
    session: SessionDep,
    client: TemporalDep,
    if_match: str = Header(alias="If-Match", max_length=40, description="The run's version (its ETag)"),
) -> RemediationRunPublic:
    """Ask the run to stop: it ends `cancelled` (exit code 30) after the step under way, which it records.
    Only the server's owner (or an administrator) may."""
    run = await _visible_run(session, user, run_id)
    owner = await session.scalar(select(Server.owner_id).where(Server.id == run.server_id))
    if user.role != "admin" and owner != user.id:
        raise NotFound(f"remediation run {run_id} not found")
    expected = _version(if_match)
    server_id, workflow_id = run.server_id, run.workflow_id  # read before the rollback expires them
    await session.rollback()
    async with session.begin():
        changed = await session.execute(
            update(RemediationRun)
            .where(
                RemediationRun.id == run_id,
                RemediationRun.version == expected,
                RemediationRun.status.in_(ACTIVE),
            )
            .values(cancel_requested=True, version=RemediationRun.version + 1)
            .returning(RemediationRun.id)
        )
        if changed.first() is None:
            now = await session.get(RemediationRun, run_id, populate_existing=True)
            assert now is not None
            if now.status not in ACTIVE:
                raise Conflict(f"the run has ended ({now.status})")
            raise Conflict(f"the run changed (version {now.version}, you sent {if_match.strip()}): read it again")
        await notify_run(session, run_id, server_id)
    try:
        await client.get_workflow_handle(workflow_id).signal(RemediationWorkflowContract.cancel)
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise Unavailable(f"could not reach the remediation workflow: {exc.message}") from None
    fresh = await session.get(RemediationRun, run_id, populate_existing=True)
    assert fresh is not None
    return RemediationRunPublic.model_validate(fresh)


@router.get("/runs/{run_id}/stream", response_class=StreamingResponse, responses=SSE_RESPONSES)
async def stream_run(run_id: uuid.UUID, user: CurrentUser, session: SessionDep, state: StateDep) -> StreamingResponse:
    """`run` events (the run, on every change) and `artifact` events (each new artifact), from Postgres
    notifications; `end` once the run has ended."""
    run = await _visible_run(session, user, run_id)
    server_id = str(run.server_id)
    await session.close()
    hub = state.server_events
    assert hub is not None

    seen_version, last_artifact = 0, 0

    async def step() -> tuple[list[bytes], bool]:
        nonlocal seen_version, last_artifact
        async with state.sessionmaker() as reading:
            current = await reading.get(RemediationRun, run_id)
            fresh = await rows_after(reading, RemediationArtifact, run_id, last_artifact)
        if current is None:
            return [event("end", {"reason": "the run is gone"})], True
        chunks = []
        for artifact in fresh:
            last_artifact = artifact.id
            body = RemediationArtifactPublic.model_validate(artifact).model_dump(mode="json")
            chunks.append(event("artifact", body, artifact.id))
        if current.version != seen_version:
            seen_version = current.version
            chunks.append(event("run", json.loads(RemediationRunPublic.model_validate(current).model_dump_json())))
        if current.status not in ACTIVE:
            return [*chunks, event("end", {"status": current.status, "exit_code": current.exit_code})], True
        return chunks, False

    return sse_response(follow(hub, "remediation", server_id, step, KEEPALIVE_SECONDS))
