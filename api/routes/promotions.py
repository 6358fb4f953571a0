"""Promotions: tracks of stages, scheduling a digest into a stage (PromotionWorkflow), approving it,
aborting it, rejecting a digest, holding auto-promotion, rolling a stage back, and the history."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query, Response, status
from fastapi.responses import StreamingResponse
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from api.deps import CurrentUser, SessionDep, StateDep, TemporalDep
from api.schemas.common import GovernanceRunPublic, GovernanceVote, ListOf, error_responses
from api.schemas.promotions import (
    DigestRejection,
    DigestRejectionPublic,
    PromotionPublic,
    PromotionSchedule,
    TrackCreate,
    TrackPublic,
)
from api.sse import SSE_RESPONSES, event, follow, sse_response
from api.voting import VOTE_RESPONSES, cast_vote
from api.workflows import cancel_workflow
from core import promotion as rules
from core.errors import Conflict, InvalidInput, NotFound, Unavailable
from core.models import (
    Deployment,
    GovernanceDefinition,
    Promotion,
    PromotionRejection,
    PromotionTrack,
    Server,
    User,
)
from core.policy import subject_of
from records import promotions
from workflows.contracts.starters import start_promotion

router = APIRouter(prefix="/api/promotions", tags=["promotions"])
# A promotion's stream wakes on its notifications; it also looks this often in case one was lost.
RECHECK_SECONDS = 5.0


async def _track(session: AsyncSession, user: User, track_id: uuid.UUID) -> PromotionTrack:
    row = await session.get(PromotionTrack, track_id)
    if row is None or (user.role != "admin" and row.owner_id != user.id):
        raise NotFound(f"promotion track {track_id} not found")
    return row


async def _track_public(session: AsyncSession, row: PromotionTrack) -> TrackPublic:
    spec = rules.TrackSpec.model_validate(row.stages)
    history = rules.facts_of(await promotions.history(session, row.id))
    current = {}
    for stage in spec.stages:
        now = rules.current(stage.name, history)
        current[stage.name] = now.subject if now else None
    return TrackPublic(
        id=row.id,
        name=row.name,
        stages=row.stages["stages"],
        held=list(row.held or []),
        current=current,
        created_at=row.created_at,
    )


@router.post(
    "/tracks",
    status_code=status.HTTP_201_CREATED,
    response_model=TrackPublic,
    responses=error_responses(401, 404, 409, 422),
)
async def create_track(body: TrackCreate, user: CurrentUser, session: SessionDep) -> TrackPublic:
    """A track: ordered stages, each naming your servers, the certifications a digest must hold there, an
    optional verification, governance definition, soak time, auto-promotion and promotion windows."""
    spec = rules.TrackSpec.model_validate({"stages": [s.model_dump() for s in body.stages]})
    async with session.begin():
        for stage in spec.stages:
            for server_id in stage.servers:
                server = await session.get(Server, server_id)
                if server is None or server.owner_id != user.id:
                    raise NotFound(f"server {server_id} (stage {stage.name!r}) not found")
            if stage.governance_workflow_id is not None:
                definition = await session.get(GovernanceDefinition, stage.governance_workflow_id)
                if definition is None or definition.owner_id != user.id:
                    raise NotFound(f"governance definition {stage.governance_workflow_id} not found")
        row = PromotionTrack(id=uuid.uuid4(), owner_id=user.id, name=body.name, stages=spec.model_dump(mode="json"))
        session.add(row)
        try:
            await session.flush()
        except IntegrityError:
            raise Conflict(f"you already have a promotion track named {body.name!r}") from None
    await session.refresh(row)
    return await _track_public(session, row)


@router.get("/tracks", response_model=ListOf[TrackPublic], responses=error_responses(401))
async def list_tracks(user: CurrentUser, session: SessionDep) -> ListOf[TrackPublic]:
    stmt = select(PromotionTrack).order_by(PromotionTrack.created_at)
    if user.role != "admin":
        stmt = stmt.where(PromotionTrack.owner_id == user.id)
    rows = (await session.scalars(stmt)).all()
    data = [await _track_public(session, r) for r in rows]
    return ListOf[TrackPublic](count=len(data), data=data)


@router.get("/tracks/{track_id}", response_model=TrackPublic, responses=error_responses(401, 404, 422))
async def get_track(track_id: uuid.UUID, user: CurrentUser, session: SessionDep) -> TrackPublic:
    return await _track_public(session, await _track(session, user, track_id))


@router.delete(
    "/tracks/{track_id}", status_code=status.HTTP_204_NO_CONTENT, responses=error_responses(401, 404, 409, 422)
)
async def delete_track(track_id: uuid.UUID, user: CurrentUser, session: SessionDep) -> Response:
    """Delete a track and its history. 409 while one of its promotions is under way (abort it first);
    what the stages run keeps running."""
    async with session.begin():
        row = await _track(session, user, track_id)
        await session.refresh(row, with_for_update=True)
        open_ = await session.scalar(
            select(Promotion.id).where(Promotion.track_id == row.id, Promotion.status.in_(rules.OPEN)).limit(1)
        )
        if open_ is not None:
            raise Conflict(f"promotion {open_} of this track is under way: abort it first")
        await session.delete(row)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _stage_index(row: PromotionTrack, stage: str) -> tuple[rules.TrackSpec, int]:
    spec = rules.TrackSpec.model_validate(row.stages)
    index = spec.index(stage)
    if index is None:
        names = ", ".join(s.name for s in spec.stages)
        raise NotFound(f"track {row.name!r} has no stage {stage!r} (its stages: {names})")
    return spec, index


async def _set_hold(session: AsyncSession, user: User, track_id: uuid.UUID, stage: str, held: bool) -> TrackPublic:
    async with session.begin():
        row = await _track(session, user, track_id)
        await session.refresh(row, with_for_update=True)
        _stage_index(row, stage)
        names = set(row.held or [])
        row.held = sorted(names | {stage}) if held else sorted(names - {stage})
    await session.refresh(row)
    return await _track_public(session, row)


@router.post(
    "/tracks/{track_id}/stages/{stage}/hold", response_model=TrackPublic, responses=error_responses(401, 404, 422)
)
async def hold(track_id: uuid.UUID, stage: str, user: CurrentUser, session: SessionDep) -> TrackPublic:
    """Hold the stage's auto-promotion: nothing enters it automatically until released (manual promotions
    still may)."""
    return await _set_hold(session, user, track_id, stage, True)


@router.delete(
    "/tracks/{track_id}/stages/{stage}/hold", response_model=TrackPublic, responses=error_responses(401, 404, 422)
)
async def release(track_id: uuid.UUID, stage: str, user: CurrentUser, session: SessionDep) -> TrackPublic:
    """Release a hold: auto-promotion into the stage resumes with the next digest that becomes active upstream."""
    return await _set_hold(session, user, track_id, stage, False)


async def _start(session: AsyncSession, state: StateDep, client: TemporalDep, row: Promotion) -> PromotionPublic:
    public = PromotionPublic.model_validate(row)
    try:
        await start_promotion(
            client,
            state.settings,
            promotion_id=public.id,
            workflow_id=public.workflow_id,
            stage=public.stage,
            subject=public.subject,
        )
    except Unavailable as exc:
        # Nothing will run it: close the record with the reason rather than leave it queued for ever.
        async with session.begin():
            stuck = await promotions.load(session, public.id, lock=True)
            if stuck is not None and stuck.status == rules.Status.SCHEDULED:
                await promotions.finish(session, stuck, rules.Status.FAILED, exc.message)
        raise
    return public


@router.post(
    "/schedule",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=PromotionPublic,
    responses=error_responses(401, 404, 409, 422, 503),
)
async def schedule(
    body: PromotionSchedule, user: CurrentUser, session: SessionDep, state: StateDep, client: TemporalDep
) -> PromotionPublic:
    """Promote a digest into a stage: name the deployment whose artifact it is, or the digest as an earlier
    stage runs it. 409 when it may not enter the stage (out of order, rejected, already there); it waits for
    the stage's queue, soak and window, then runs verification, governance and the deployments."""
    if (body.deployment_id is None) == (body.subject is None):
        raise InvalidInput("give either deployment_id or subject")
    async with session.begin():
        track = await _track(session, user, body.track_id)
        spec, index = _stage_index(track, body.stage)
        history_rows = await promotions.history(session, track.id)
        if body.deployment_id is not None:
            deployment = await session.get(Deployment, body.deployment_id)
            server = await session.get(Server, deployment.server_id) if deployment else None
            if deployment is None or server is None or server.owner_id != track.owner_id:
                raise NotFound(f"deployment {body.deployment_id} not found")
            subject = subject_of(deployment.spec.get("source", {}), deployment.image_digest)
            if subject is None:
                raise Conflict(
                    f"revision {deployment.seq} of {server.name!r} has no immutable artifact to promote: pin an exact "
                    "package version or an image digest (a git build is bound to its image digest)"
                )
            origin: uuid.UUID | None = deployment.id
        else:
            assert body.subject is not None
            subject = body.subject
            earlier = [p for p in history_rows if p.subject == subject and p.origin_deployment_id]
            if not earlier:
                raise NotFound(f"{subject} has not been promoted on this track: name its deployment instead")
            origin = earlier[0].origin_deployment_id
        rejected = await promotions.rejection(session, track.id, subject)
        if rejected is not None:
            raise Conflict(f"{subject} was rejected on this track ({rejected.reason or 'no reason given'})")
        history = rules.facts_of(history_rows)
        checked = rules.check_order(spec, index, subject, history, datetime.now(UTC))
        if checked.refusal:
            raise Conflict(f"promotion:not-active:{spec.stages[index - 1].name}: {checked.refusal}")
        now = rules.current(body.stage, history)
        if now is not None and now.subject == subject:
            raise Conflict(f"{subject} is already active in stage {body.stage!r}")
        row = await promotions.open_promotion(
            session,
            track_id=track.id,
            stage=body.stage,
            index=index,
            subject=subject,
            origin=origin,
            kind="manual",
            requester_id=user.id,
            reason=f"asked for by {user.email}",
        )
    return await _start(session, state, client, row)


@router.post(
    "/tracks/{track_id}/stages/{stage}/rollback",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=PromotionPublic,
    responses=error_responses(401, 404, 409, 422, 503),
)
async def rollback(
    track_id: uuid.UUID, stage: str, user: CurrentUser, session: SessionDep, state: StateDep, client: TemporalDep
) -> PromotionPublic:
    """Put the stage back on the digest it ran before its current one: deployed straight away (no
    verification, governance or window), and the current promotion becomes `rolled_back`."""
    async with session.begin():
        track = await _track(session, user, track_id)
        _, index = _stage_index(track, stage)
        rows = await promotions.history(session, track.id)
        target = rules.rollback_target(stage, rules.facts_of(rows))
        if target is None:
            raise Conflict(f"stage {stage!r} has no earlier digest to roll back to")
        earlier = max(
            (p for p in rows if p.stage == stage and p.subject == target and p.activated_at),
            key=lambda p: p.activated_at or p.created_at,
        )
        row = await promotions.open_promotion(
            session,
            track_id=track.id,
            stage=stage,
            index=index,
            subject=target,
            origin=earlier.origin_deployment_id,
            kind="rollback",
            requester_id=user.id,
            reason=f"rollback asked for by {user.email}",
        )
    return await _start(session, state, client, row)


@router.post(
    "/tracks/{track_id}/rejections",
    status_code=status.HTTP_201_CREATED,
    response_model=DigestRejectionPublic,
    responses=error_responses(401, 404, 422, 503),
)
async def reject_digest(
    track_id: uuid.UUID, body: DigestRejection, user: CurrentUser, session: SessionDep, client: TemporalDep
) -> DigestRejectionPublic:
    """Reject a digest on the track: it is never promoted there again, automatically or not, and its open
    promotions are aborted."""
    async with session.begin():
        track = await _track(session, user, track_id)
        row, running = await promotions.reject(session, track.id, body.subject, body.reason, user.email)
        public = DigestRejectionPublic.model_validate(row)
    for workflow_id in running:
        await cancel_workflow(client, workflow_id, "the promotion workflow")
    return public


@router.get(
    "/tracks/{track_id}/rejections",
    response_model=ListOf[DigestRejectionPublic],
    responses=error_responses(401, 404, 422),
)
async def list_rejections(track_id: uuid.UUID, user: CurrentUser, session: SessionDep) -> ListOf[DigestRejectionPublic]:
    track = await _track(session, user, track_id)
    rows = (
        await session.scalars(
            select(PromotionRejection)
            .where(PromotionRejection.track_id == track.id)
            .order_by(PromotionRejection.created_at)
        )
    ).all()
    return ListOf[DigestRejectionPublic](count=len(rows), data=[DigestRejectionPublic.model_validate(r) for r in rows])


@router.get("/history", response_model=ListOf[PromotionPublic], responses=error_responses(401, 422))
async def history(
    user: CurrentUser,
    session: SessionDep,
    track_id: uuid.UUID | None = None,
    stage: Annotated[str | None, Query(max_length=32)] = None,
    subject: Annotated[str | None, Query(max_length=300)] = None,
    status_: Annotated[str | None, Query(alias="status", max_length=24)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> ListOf[PromotionPublic]:
    """Promotions, newest first, filtered by track, stage, digest and status."""
    stmt = select(Promotion).join(PromotionTrack, PromotionTrack.id == Promotion.track_id)
    if user.role != "admin":
        stmt = stmt.where(PromotionTrack.owner_id == user.id)
    if track_id is not None:
        stmt = stmt.where(Promotion.track_id == track_id)
    if stage is not None:
        stmt = stmt.where(Promotion.stage == stage)
    if subject is not None:
        stmt = stmt.where(Promotion.subject == subject)
    if status_ is not None:
        stmt = stmt.where(Promotion.status == status_)
    rows = (await session.scalars(stmt.order_by(Promotion.created_at.desc()).limit(limit))).all()
    return ListOf[PromotionPublic](count=len(rows), data=[PromotionPublic.model_validate(r) for r in rows])


async def _promotion(session: AsyncSession, user: User, promotion_id: uuid.UUID) -> Promotion:
    row = (
        await session.execute(
            select(Promotion, PromotionTrack.owner_id)
            .join(PromotionTrack, PromotionTrack.id == Promotion.track_id)
            .where(Promotion.id == promotion_id)
        )
    ).first()
    if row is None or (user.role != "admin" and row[1] != user.id):
        raise NotFound(f"promotion {promotion_id} not found")
    promotion: Promotion = row[0]
    return promotion


@router.get("/{promotion_id:uuid}", response_model=PromotionPublic, responses=error_responses(401, 404, 422))
async def get_promotion(promotion_id: uuid.UUID, user: CurrentUser, session: SessionDep) -> PromotionPublic:
    return PromotionPublic.model_validate(await _promotion(session, user, promotion_id))


@router.post(
    "/{promotion_id:uuid}/abort",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=PromotionPublic,
    responses=error_responses(401, 404, 409, 422, 503),
)
async def abort(
    promotion_id: uuid.UUID, user: CurrentUser, session: SessionDep, client: TemporalDep
) -> PromotionPublic:
    """Abort a promotion that has not ended: what it runs is cancelled (a stage deployment under way is
    cancelled and the previous revision keeps serving) and it ends `aborted`."""
    row = await _promotion(session, user, promotion_id)
    public = PromotionPublic.model_validate(row)
    if public.status in rules.ENDED:
        raise Conflict(f"the promotion has ended ({public.status})")
    await cancel_workflow(client, public.workflow_id, "the promotion workflow")
    return public


async def _governed(session: AsyncSession, promotion_id: uuid.UUID) -> uuid.UUID:
    """The promotion's governance run. Approvers the run names see it, like the run itself."""
    row = await session.get(Promotion, promotion_id)
    if row is None:
        raise NotFound(f"promotion {promotion_id} not found")
    if row.governance_run_id is None:
        raise Conflict(f"the promotion is {row.status} and awaits no approval")
    return row.governance_run_id


@router.post("/{promotion_id:uuid}/approve", response_model=GovernanceRunPublic, responses=VOTE_RESPONSES)
async def approve(
    promotion_id: uuid.UUID,
    user: CurrentUser,
    session: SessionDep,
    client: TemporalDep,
    body: GovernanceVote | None = None,
) -> GovernanceRunPublic:
    """Approve the promotion's open approval step (a vote on its governance run, same rules: 403 for a
    non-approver or the requester under four-eyes, 409 for a second vote or a closed step; all audited)."""
    run_id = await _governed(session, promotion_id)
    return await cast_vote(session, client, user, run_id, True, (body or GovernanceVote()).comment)


@router.post("/{promotion_id:uuid}/reject", response_model=GovernanceRunPublic, responses=VOTE_RESPONSES)
async def reject(
    promotion_id: uuid.UUID,
    user: CurrentUser,
    session: SessionDep,
    client: TemporalDep,
    body: GovernanceVote | None = None,
) -> GovernanceRunPublic:
    """Reject the promotion at its open approval step: it ends `rejected`."""
    run_id = await _governed(session, promotion_id)
    return await cast_vote(session, client, user, run_id, False, (body or GovernanceVote()).comment)


@router.get("/{promotion_id:uuid}/stream", response_class=StreamingResponse, responses=SSE_RESPONSES)
async def stream(promotion_id: uuid.UUID, user: CurrentUser, session: SessionDep, state: StateDep) -> StreamingResponse:
    """Server-sent events: a `promotion` event with the record each time its status or step changes, then
    `end` once it has ended."""
    row = await _promotion(session, user, promotion_id)
    key = row.id
    await session.close()

    hub = state.server_events
    assert hub is not None
    last: tuple[str, str | None] | None = None

    async def step() -> tuple[list[bytes], bool]:
        nonlocal last
        async with state.sessionmaker() as db:
            current = await db.get(Promotion, key)
        if current is None:
            return [event("end", {"status": "deleted"})], True
        public = PromotionPublic.model_validate(current)
        chunks = []
        if (public.status, public.step) != last:
            last = (public.status, public.step)
            chunks.append(event("promotion", json.loads(public.model_dump_json())))
        if public.status in rules.ENDED:
            return [*chunks, event("end", {"status": public.status})], True
        return chunks, False

    return sse_response(follow(hub, "promotion", str(key), step, RECHECK_SECONDS))
