"""Governance: reusable definitions of ordered steps, runs of them for an artifact and tier
(GovernanceRunWorkflow), votes as Temporal Updates, and the audit trail with refused attempts."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, status
from fastapi.responses import StreamingResponse
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio.service import RPCError

from api.deps import CurrentUser, SessionDep, StateDep, TemporalDep, load_server
from api.schemas.common import GovernanceAuditPublic, GovernanceRunPublic, GovernanceVote, ListOf, error_responses
from api.schemas.governance import GovernanceDefinitionCreate, GovernanceDefinitionPublic, GovernanceRunCreate
from api.sse import SSE_RESPONSES, event, follow, rows_after, sse_response
from api.voting import VOTE_RESPONSES, cast_vote, live_state, named_in, reload_run, run_public, visible_run
from core.errors import Conflict, NotFound, Unavailable
from core.governance import Definition, RunStatus
from core.models import Deployment, GovernanceAudit, GovernanceDefinition, GovernanceRun, Server, User
from core.policy import subject_of
from records import governance_runs
from workflows.contracts.starters import start_governance

router = APIRouter(prefix="/api/governance", tags=["governance"])
# A run's stream wakes on its notifications; it also looks this often in case one was lost.
RECHECK_SECONDS = 5.0


def _definition_public(row: GovernanceDefinition) -> GovernanceDefinitionPublic:
    return GovernanceDefinitionPublic(id=row.id, name=row.name, steps=row.steps["steps"], created_at=row.created_at)


@router.post(
    "/workflows",
    status_code=status.HTTP_201_CREATED,
    response_model=GovernanceDefinitionPublic,
    responses=error_responses(401, 409, 422),
)
async def create_definition(
    body: GovernanceDefinitionCreate, user: CurrentUser, session: SessionDep
) -> GovernanceDefinitionPublic:
    """A reusable governance definition: ordered `approval`, `check` and `wait` steps."""
    definition = Definition.model_validate({"steps": [s.model_dump() for s in body.steps]})
    row = GovernanceDefinition(
        id=uuid.uuid4(),
        owner_id=user.id,
        name=body.name,
        steps={"steps": [s.model_dump(mode="json") for s in definition.steps]},
    )
    try:
        async with session.begin():
            session.add(row)
    except IntegrityError:
        raise Conflict(f"you already have a governance definition named {body.name!r}") from None
    await session.refresh(row)
    return _definition_public(row)


@router.get("/workflows", response_model=ListOf[GovernanceDefinitionPublic], responses=error_responses(401))
async def list_definitions(user: CurrentUser, session: SessionDep) -> ListOf[GovernanceDefinitionPublic]:
    """Your governance definitions (administrators: everyone's)."""
    stmt = select(GovernanceDefinition).order_by(GovernanceDefinition.created_at)
    if user.role != "admin":
        stmt = stmt.where(GovernanceDefinition.owner_id == user.id)
    rows = (await session.scalars(stmt)).all()
    return ListOf[GovernanceDefinitionPublic](count=len(rows), data=[_definition_public(r) for r in rows])


async def _own_definition(session: AsyncSession, user: User, definition_id: uuid.UUID) -> GovernanceDefinition:
    row = await session.get(GovernanceDefinition, definition_id)
    if row is None or (user.role != "admin" and row.owner_id != user.id):
        raise NotFound(f"governance definition {definition_id} not found")
    return row


@router.get(
    "/workflows/{definition_id}", response_model=GovernanceDefinitionPublic, responses=error_responses(401, 404, 422)
)
async def get_definition(
    definition_id: uuid.UUID, user: CurrentUser, session: SessionDep
) -> GovernanceDefinitionPublic:
    return _definition_public(await _own_definition(session, user, definition_id))


@router.post(
    "/workflows/{definition_id}/runs",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=GovernanceRunPublic,
    responses=error_responses(401, 404, 409, 422, 503),
)
async def start_run(
    definition_id: uuid.UUID,
    body: GovernanceRunCreate,
    user: CurrentUser,
    session: SessionDep,
    state: StateDep,
    client: TemporalDep,
) -> GovernanceRunPublic:
    """Govern an artifact (the serving revision's, or a named deployment's) for a tier: the definition's
    steps run in order in a GovernanceRunWorkflow. You are its requester."""
    async with session.begin():
        definition = await _own_definition(session, user, definition_id)
        server = await load_server(session, user, body.server_id)
        deployment_id = body.deployment_id or server.active_deployment_id
        deployment = await session.get(Deployment, deployment_id) if deployment_id else None
        if deployment is None or deployment.server_id != server.id:
            raise Conflict("no revision to govern: deploy the server, or name one of its deployments")
        subject = subject_of(deployment.spec.get("source", {}), deployment.image_digest)
        if subject is None:
            raise Conflict(
                f"revision {deployment.seq} has no immutable artifact to govern: pin an exact package version "
                "or an image digest"
            )
        run = await governance_runs.open_run(
            session, definition, server_id=server.id, subject=subject, tier=body.tier, requester_id=user.id
        )
        run_id = run.id
    try:
        await start_governance(
            client,
            state.settings,
            run_id=run_id,
            server_id=server.id,
            requester_id=user.id,
            steps=definition.steps["steps"],
            workflow_id=run.workflow_id,
        )
    except RPCError as exc:
        await session.rollback()
        async with session.begin():
            await governance_runs.cancel(session, run_id, f"the workflow could not be started: {exc.message}")
        raise Unavailable(f"could not start the governance workflow: {exc.message}") from None
    return await run_public(session, await reload_run(session, run_id), live=None)


@router.get(
    "/workflows/{definition_id}/runs",
    response_model=ListOf[GovernanceRunPublic],
    responses=error_responses(401, 404, 422),
)
async def list_runs(definition_id: uuid.UUID, user: CurrentUser, session: SessionDep) -> ListOf[GovernanceRunPublic]:
    definition = await _own_definition(session, user, definition_id)
    rows = (
        await session.scalars(
            select(GovernanceRun)
            .where(GovernanceRun.definition_id == definition.id)
            .order_by(GovernanceRun.created_at.desc())
            .limit(200)
        )
    ).all()
    data = [await run_public(session, r, None) for r in rows]
    return ListOf[GovernanceRunPublic](count=len(data), data=data)


@router.get("/runs", response_model=ListOf[GovernanceRunPublic], responses=error_responses(401))
async def my_runs(user: CurrentUser, session: SessionDep) -> ListOf[GovernanceRunPublic]:
    """Runs still under way that you may act on (you are named in an approval step), or that you own."""
    rows = (
        await session.execute(
            select(GovernanceRun, Server.owner_id)
            .join(Server, Server.id == GovernanceRun.server_id)
            .where(GovernanceRun.status == RunStatus.RUNNING)
            .order_by(GovernanceRun.created_at.desc())
            .limit(500)
        )
    ).all()
    mine = [r for r, owner in rows if user.role == "admin" or owner == user.id or named_in(r, user)]
    data = [await run_public(session, r, None) for r in mine]
    return ListOf[GovernanceRunPublic](count=len(data), data=data)


@router.get("/runs/{run_id}", response_model=GovernanceRunPublic, responses=error_responses(401, 404, 422))
async def get_run(
    run_id: uuid.UUID, user: CurrentUser, session: SessionDep, client: TemporalDep
) -> GovernanceRunPublic:
    """A run: its status and current step, the workflow's live state (steps, votes, escalations) while it
    runs, and the audit trail, refused attempts included."""
    run = await visible_run(session, user, run_id)
    return await run_public(session, run, await live_state(client, run))


@router.post("/runs/{run_id}/approve", response_model=GovernanceRunPublic, responses=VOTE_RESPONSES)
async def approve(
    run_id: uuid.UUID, user: CurrentUser, session: SessionDep, client: TemporalDep, body: GovernanceVote | None = None
) -> GovernanceRunPublic:
    """Approve the open approval step. 403 when you are not one of its approvers or are the requester of a
    four-eyes step, 409 when you already voted or no approval step is open; refusals are audited."""
    return await cast_vote(session, client, user, run_id, True, (body or GovernanceVote()).comment)


@router.post("/runs/{run_id}/reject", response_model=GovernanceRunPublic, responses=VOTE_RESPONSES)
async def reject(
    run_id: uuid.UUID, user: CurrentUser, session: SessionDep, client: TemporalDep, body: GovernanceVote | None = None
) -> GovernanceRunPublic:
    """Reject the open approval step (one approver's reject rejects the run). Same rules as approve."""
    return await cast_vote(session, client, user, run_id, False, (body or GovernanceVote()).comment)


@router.get("/runs/{run_id}/stream", response_class=StreamingResponse, responses=SSE_RESPONSES)
async def stream_run(run_id: uuid.UUID, user: CurrentUser, session: SessionDep, state: StateDep) -> StreamingResponse:
    """Server-sent events: an `audit` event per entry of the run's audit trail as it is written, then
    `end` with the final status."""
    run = await visible_run(session, user, run_id)
    key = run.id
    await session.close()
    hub = state.server_events
    assert hub is not None
    last = 0

    async def step() -> tuple[list[bytes], bool]:
        nonlocal last
        async with state.sessionmaker() as db:
            rows = await rows_after(db, GovernanceAudit, key, last)
            current = await db.get(GovernanceRun, key)
        chunks = []
        for row in rows:
            last = row.id
            chunks.append(event("audit", GovernanceAuditPublic.model_validate(row).model_dump(mode="json"), row.id))
        if current is None or current.status != RunStatus.RUNNING:
            return [*chunks, event("end", {"status": current.status if current else "deleted"})], True
        return chunks, False

    return sse_response(follow(hub, "governance", str(key), step, RECHECK_SECONDS))
