"""Activities of GovernanceRunWorkflow: the audit trail and run status, and `check` steps (asked of the
policy engine). Each audit record is keyed by the workflow's event, so a retried attempt writes it once."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity

from core.models import Certification, GovernanceRun
from core.policy import CertificationFact, Facts, Requirement, decide
from records import governance_runs


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
        async with self.sessionmaker() as session, session.begin():
            await governance_runs.record(
                session,
                uuid.UUID(event.run_id),
                key=event.key,
                action=event.action,
                step=event.step,
                actor=event.actor,
                comment=event.comment,
                status=event.status,
                current_step=event.current_step,
                reason=event.reason,
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
