"""The policy activity: gather the facts about a deployment's artifact, ask the policy engine
(core.policy) and persist the decision. One decision per deployment: a retried attempt returns it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.exceptions import ApplicationError

from core.models import Certification, Deployment, PolicyDecision, Server, ServerLog
from core.policy import CertificationFact, Decision, Facts, Requirement, decide, explain, subject_of


@dataclass
class PolicyOutcome:
    allowed: bool
    backend: str
    notes: list[str] = field(default_factory=list)
    message: str = ""
    # False when nothing was required: the deployment records no policy step then.
    gated: bool = True


def _outcome(decision: Decision) -> PolicyOutcome:
    return PolicyOutcome(
        allowed=decision.allowed,
        backend=decision.backend,
        notes=list(decision.notes),
        message=explain(decision),
        gated=decision.notes != ["policy:no-requirements"],
    )


class PolicyActivities:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self.sessionmaker = sessionmaker

    @activity.defn(name="decide_policy")
    async def decide_policy(self, deployment_id: str) -> PolicyOutcome:
        key = f"deploy:{deployment_id}"
        async with self.sessionmaker() as session, session.begin():
            earlier = await session.scalar(select(PolicyDecision).where(PolicyDecision.decision_key == key))
            if earlier is not None:
                return _outcome(Decision(earlier.allowed, earlier.backend, list(earlier.notes)))
            deployment = await session.get(Deployment, uuid.UUID(deployment_id))
            if deployment is None:
                raise ApplicationError("deployment no longer exists", type="gone", non_retryable=True)
            server = await session.get(Server, deployment.server_id)
            assert server is not None
            required = [Requirement(r["tier"], r["requirement"]) for r in server.required_certifications or []]
            subject = subject_of(deployment.spec.get("source", {}), deployment.image_digest)
            certifications = (
                (
                    await session.scalars(
                        # The artifact is immutable: what the owner certified of it on any of their
                        # servers (a promotion's earlier stage, say) holds here too.
                        select(Certification).where(
                            Certification.subject == subject,
                            Certification.server_id.in_(select(Server.id).where(Server.owner_id == server.owner_id)),
                        )
                    )
                ).all()
                if subject and required
                else []
            )
            facts = Facts(
                subject=subject,
                required=required,
                certifications=[
                    CertificationFact(c.tier, c.requirement, c.status, c.created_at, c.valid_until)
                    for c in certifications
                ],
                runtime=deployment.runtime or "process",
                now=datetime.now(UTC),
            )
            decision = decide(facts)
            recorded: dict[str, Any] = {
                "subject": subject,
                "required": [r.key for r in required],
                "certifications": [
                    {
                        "id": str(c.id),
                        "tier": c.tier,
                        "requirement": c.requirement,
                        "status": c.status,
                        "valid_until": c.valid_until.isoformat() if c.valid_until else None,
                    }
                    for c in certifications
                ],
                "runtime": facts.runtime,
                "at": facts.now.isoformat(),
            }
            await session.execute(
                insert(PolicyDecision)
                .values(
                    server_id=server.id,
                    deployment_id=deployment.id,
                    decision_key=key,
                    subject=subject,
                    allowed=decision.allowed,
                    backend=decision.backend,
                    notes=decision.notes,
                    facts=recorded,
                )
                .on_conflict_do_nothing(index_elements=["decision_key"])
            )
            if required:
                session.add(
                    ServerLog(
                        server_id=server.id,
                        deployment_id=deployment.id,
                        message=f"policy for revision {deployment.seq}: {explain(decision)}",
                        level="info" if decision.allowed else "warning",
                    )
                )
        return _outcome(decision)

    def all(self) -> list[Any]:
        return [self.decide_policy]
