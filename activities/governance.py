"""Activities of GovernanceRunWorkflow: the audit trail and run status, and `check` steps (asked of the
policy engine). Each audit record is keyed by the workflow's event, so a retried attempt writes it once."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity

from core.models import Certification, GovernanceAudit, GovernanceRun, ServerLog
from core.policy import CertificationFact, Facts, Requirement, decide


@dataclass
class GovernanceEvent:
    run_id: str
    key: str  # unique per event of the run
    action: str
    step: str | None = None
    actor: str | None = None
    comment: str = ""
    # Set to change the run's record too.
    status: str | None = None
    current_step: str | None = None
    reason: str | None = None


@dataclass
class CheckInput:
    run_id: str
    tier: str
    requirement: str


@dataclass
class CheckResult:
    passed: bool
    note: str


class GovernanceActivities:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self.sessionmaker = sessionmaker

    @activity.defn(name="record_governance")
    async def record_governance(self, event: GovernanceEvent) -> None:
        run_id = uuid.UUID(event.run_id)
        async with self.sessionmaker() as session, session.begin():
            inserted = await session.execute(
                insert(GovernanceAudit)
                .values(
                    run_id=run_id,
                    event_key=f"{event.run_id}:{event.key}",
                    step=event.step,
                    actor=event.actor,
                    action=event.action,
                    accepted=True,
                    comment=event.comment,
                )
                .on_conflict_do_nothing(index_elements=["event_key"])
                .returning(GovernanceAudit.id)
            )
            if inserted.first() is None:
                return  # recorded by an earlier attempt
            values: dict[str, Any] = {}
            if event.current_step is not None:
                values["current_step"] = event.current_step
            if event.status is not None:
                values["status"] = event.status
                values["reason"] = event.reason
                if event.status != "running":
                    values["finished_at"] = datetime.now(UTC)
            if values:
                await session.execute(update(GovernanceRun).where(GovernanceRun.id == run_id).values(**values))
            if event.action in ("escalated", "expired", "run_ended"):
                run = await session.get(GovernanceRun, run_id)
                if run is not None:
                    session.add(
                        ServerLog(
                            server_id=run.server_id,
                            message=f"governance run {run.id} ({run.subject}, {run.tier}): {event.comment}",
                            level="warning" if event.action != "run_ended" else "info",
                        )
                    )

    @activity.defn(name="governance_check")
    async def governance_check(self, data: CheckInput) -> CheckResult:
        async with self.sessionmaker() as session:
            run = await session.get(GovernanceRun, uuid.UUID(data.run_id))
            if run is None:
                return CheckResult(False, "the governance run no longer exists")
            certifications = (
                await session.scalars(
                    select(Certification).where(
                        Certification.server_id == run.server_id, Certification.subject == run.subject
                    )
                )
            ).all()
        decision = decide(
            Facts(
                subject=run.subject,
                required=[Requirement(data.tier, data.requirement)],
                certifications=[
                    CertificationFact(c.tier, c.requirement, c.status, c.created_at, c.valid_until)
                    for c in certifications
                ],
                runtime="",
                now=datetime.now(UTC),
            )
        )
        return CheckResult(decision.allowed, ", ".join(decision.notes))

    def all(self) -> list[Any]:
        return [self.record_governance, self.governance_check]
