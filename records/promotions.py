"""Promotions: opened, moved along and closed in one place, by the API (a manual promotion, a rollback)
and the worker (an automatic promotion, each step of PromotionWorkflow). Every change is announced on the
servers channel (`kind: promotion`), which is what a promotion's event stream waits on."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, and_, or_, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from core.db import SERVERS_CHANNEL, notify
from core.errors import Conflict
from core.models import Promotion, PromotionRejection
from core.promotion import ENDED, OPEN, Status, may_move, promotion_workflow_id
from records import governance_runs


async def announce(session: AsyncSession, promotion_id: uuid.UUID | str) -> None:
    """Tell every API replica the promotion changed (sent when the transaction commits)."""
    await notify(session, SERVERS_CHANNEL, {"kind": "promotion", "id": str(promotion_id)})


def _open_one(track_id: uuid.UUID, stage: str, subject: str) -> Select[Promotion]:
    return select(Promotion).where(
        Promotion.track_id == track_id,
        Promotion.stage == stage,
        Promotion.subject == subject,
        Promotion.status.in_(OPEN),
    )


async def open_promotion(
    session: AsyncSession,
    *,
    track_id: uuid.UUID,
    stage: str,
    index: int,
    subject: str,
    origin: uuid.UUID | None,
    kind: str,
    requester_id: uuid.UUID | None,
    reason: str,
) -> Promotion:
    """A new `scheduled` promotion of the digest into the stage, or the open one that already takes it
    there (one open promotion per digest and stage). A savepoint: the caller's transaction goes on."""
    found = await session.scalar(_open_one(track_id, stage, subject))
    if found is not None:
        return found
    promotion_id = uuid.uuid4()
    row = Promotion(
        id=promotion_id,
        track_id=track_id,
        stage=stage,
        stage_index=index,
        subject=subject,
        kind=kind,
        status=Status.SCHEDULED,
        step="queued",
        origin_deployment_id=origin,
        requester_id=requester_id,
        workflow_id=promotion_workflow_id(promotion_id),
        deployments={},
        notes=[],
        reason=reason,
    )
    try:
        async with session.begin_nested():
            session.add(row)
    except IntegrityError:
        # The same digest was asked into the same stage at the same moment: that promotion is this one.
        found = await session.scalar(_open_one(track_id, stage, subject))
        if found is None:
            raise Conflict("another promotion of this digest into this stage was being made: ask again") from None
        return found
    await announce(session, promotion_id)
    return row


async def load(session: AsyncSession, promotion_id: uuid.UUID | str, *, lock: bool = False) -> Promotion | None:
    key = promotion_id if isinstance(promotion_id, uuid.UUID) else uuid.UUID(promotion_id)
    return await session.get(Promotion, key, with_for_update=lock)


async def history(session: AsyncSession, track_id: uuid.UUID) -> list[Promotion]:
    """Every promotion of the track, newest first (what the order, soak and rollback rules read)."""
    query = select(Promotion).where(Promotion.track_id == track_id).order_by(Promotion.created_at.desc())
    return list((await session.scalars(query)).all())


async def rejected_subjects(session: AsyncSession, track_id: uuid.UUID) -> set[str]:
    query = select(PromotionRejection.subject).where(PromotionRejection.track_id == track_id)
    return set((await session.scalars(query)).all())


async def rejection(session: AsyncSession, track_id: uuid.UUID, subject: str) -> PromotionRejection | None:
    query = select(PromotionRejection).where(
        PromotionRejection.track_id == track_id, PromotionRejection.subject == subject
    )
    return await session.scalar(query)


def _others_open_in_stage(row: Promotion) -> Any:
    return and_(
        Promotion.track_id == row.track_id,
        Promotion.stage == row.stage,
        Promotion.status.in_(OPEN),
        Promotion.id != row.id,
    )


async def first_in_line(session: AsyncSession, row: Promotion) -> bool:
    """Whether the promotion is the stage's oldest open one: one promotion at a time per stage."""
    older = or_(
        Promotion.created_at < row.created_at,
        and_(Promotion.created_at == row.created_at, Promotion.id < row.id),
    )
    ahead = await session.scalar(select(Promotion.id).where(_others_open_in_stage(row), older).limit(1))
    return ahead is None


async def next_queued(session: AsyncSession, row: Promotion) -> str | None:
    """The workflow id of the stage's next open promotion after this one, to wake."""
    query = select(Promotion.workflow_id).where(_others_open_in_stage(row))
    return await session.scalar(query.order_by(Promotion.created_at, Promotion.id).limit(1))


async def move(
    session: AsyncSession,
    row: Promotion,
    status: str | None = None,
    *,
    step: str | None = None,
    reason: str | None = None,
    notes: list[str] | None = None,
) -> bool:
    """Move an open promotion along (status forward only, step, reason, notes). False, and nothing
    written, when it has ended or the status would go backwards."""
    if row.status in ENDED or (status is not None and not may_move(row.status, status)):
        return False
    if status is not None:
        row.status = Status(status)
        if status == Status.IN_PROGRESS and row.started_at is None:
            row.started_at = datetime.now(UTC)
    if step is not None:
        row.step = step
    if reason is not None:
        row.reason = reason[:2000]
    if notes is not None:
        row.notes = notes
    await announce(session, row.id)
    return True


async def activate(session: AsyncSession, row: Promotion) -> None:
    """The stage runs the promotion's digest: it is `active`; the stage's active one before it becomes
    `superseded`, or `rolled_back` when this promotion is a rollback."""
    if row.status in ENDED:
        return
    now = datetime.now(UTC)
    previous = (
        await session.scalars(
            select(Promotion)
            .where(
                Promotion.track_id == row.track_id,
                Promotion.stage == row.stage,
                Promotion.status == Status.ACTIVE,
                Promotion.id != row.id,
            )
            .with_for_update()
        )
    ).all()
    for earlier in previous:
        earlier.status = Status.ROLLED_BACK if row.kind == "rollback" else Status.SUPERSEDED
        earlier.finished_at = now
        await announce(session, earlier.id)
    row.status, row.step, row.activated_at, row.finished_at = Status.ACTIVE, "done", now, now
    row.reason = f"{row.subject} is active in stage {row.stage!r}"
    await announce(session, row.id)


async def finish(
    session: AsyncSession, row: Promotion, status: str, reason: str, notes: list[str] | None = None
) -> None:
    """End an open promotion (rejected, failed, aborted) and the governance run it was waiting on."""
    if row.status in ENDED:
        return
    ended = Status(status)
    if ended not in (Status.REJECTED, Status.FAILED, Status.ABORTED):
        raise ValueError(f"a promotion does not end {ended}")
    row.status, row.reason, row.finished_at = ended, reason[:2000], datetime.now(UTC)
    if notes:
        row.notes = notes
    if row.governance_run_id is not None:
        await governance_runs.cancel(session, row.governance_run_id, f"the promotion was {ended}")
    await announce(session, row.id)


async def reject(
    session: AsyncSession, track_id: uuid.UUID, subject: str, reason: str, by: str
) -> tuple[PromotionRejection, list[str]]:
    """Reject the digest on the track for good (a second rejection keeps the first); the workflow ids of
    its open promotions, which the caller cancels."""
    await session.execute(
        insert(PromotionRejection)
        .values(track_id=track_id, subject=subject, reason=reason, rejected_by=by)
        .on_conflict_do_nothing(constraint="uq_promotion_rejections_subject")
    )
    row = await rejection(session, track_id, subject)
    assert row is not None
    running = await session.scalars(
        select(Promotion.workflow_id).where(
            Promotion.track_id == track_id, Promotion.subject == subject, Promotion.status.in_(OPEN)
        )
    )
    return row, list(running.all())
