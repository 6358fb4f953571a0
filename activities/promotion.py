"""Activities of PromotionWorkflow: the promotion's record, its turn in the stage's queue, the order and
soak check, the verification run, the governance run, the policy decision, one pinned deployment per stage
server, and what follows activation (superseding, auto-promotion). Each is idempotent: keyed by the
promotion, or by looking at its record first."""

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

from core import promotion as rules
from core.errors import DomainError
from core.governance import RunStatus
from core.models import (
    Certification,
    Deployment,
    EvalTest,
    GovernanceDefinition,
    GovernanceRun,
    PolicyDecision,
    Promotion,
    PromotionTrack,
    RemediationRun,
    Server,
    ServerLog,
    User,
)
from core.policy import CertificationFact, Decision, Facts, Requirement, decide, explain, subject_of
from core.remediation import ACTIVE as REMEDIATION_ACTIVE
from records import governance_runs, promotions
from records.deployments import current_spec, open_deployment
from records.evaluation_runs import open_run, snapshot
from records.servers import Status as ServerStatus


@dataclass
class PromotionPlan:
    promotion_id: str
    track_id: str
    stage: str
    stage_index: int
    subject: str
    kind: str
    status: str
    ended: bool
    windows: list[dict[str, Any]] = field(default_factory=list)
    has_verification: bool = False
    has_governance: bool = False


@dataclass
class PromotionUpdate:
    promotion_id: str
    status: str | None = None
    step: str | None = None
    reason: str | None = None
    notes: list[str] | None = None


@dataclass
class OrderResult:
    refusal: str | None = None
    soak_left: float = 0.0


@dataclass
class ChildStart:
    """A child workflow to run: its id, and what it needs."""

    workflow_id: str
    record_id: str = ""
    server_id: str = ""
    stage: str = ""
    subject: str = ""
    requester_id: str = ""
    steps: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""


@dataclass
class GateResult:
    allowed: bool
    notes: list[str]
    message: str


@dataclass
class StageDeployment:
    server_id: str
    deployment_id: str
    workflow_id: str
    start: bool  # False: the server already runs this digest, nothing to deploy


@dataclass
class StageDeployments:
    deployments: list[StageDeployment] = field(default_factory=list)
    error: str = ""


@dataclass
class Activated:
    next_queued: str | None = None  # the workflow id of the stage's next promotion, to wake it
    auto: list[ChildStart] = field(default_factory=list)  # promotions of the next stage to start


@dataclass
class FinishPromotion:
    promotion_id: str
    status: str
    reason: str
    notes: list[str] = field(default_factory=list)


def _gone() -> ApplicationError:
    return ApplicationError("the promotion no longer exists", type="gone", non_retryable=True)


class PromotionActivities:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], container_runtime: str = "auto") -> None:
        self.sessionmaker = sessionmaker
        self.container_runtime = container_runtime

    async def _load(self, session: AsyncSession, promotion_id: str, *, lock: bool = False) -> Promotion:
        row = await promotions.load(session, promotion_id, lock=lock)
        if row is None:
            raise _gone()
        return row

    async def _track(self, session: AsyncSession, row: Promotion) -> tuple[PromotionTrack, rules.TrackSpec]:
        track = await session.get(PromotionTrack, row.track_id)
        if track is None:
            raise _gone()
        return track, rules.TrackSpec.model_validate(track.stages)

    @activity.defn(name="load_promotion")
    async def load_promotion(self, promotion_id: str) -> PromotionPlan:
        async with self.sessionmaker() as session:
            row = await self._load(session, promotion_id)
            _, spec = await self._track(session, row)
        stage = spec.stages[row.stage_index]
        return PromotionPlan(
            promotion_id=promotion_id,
            track_id=str(row.track_id),
            stage=row.stage,
            stage_index=row.stage_index,
            subject=row.subject,
            kind=row.kind,
            status=row.status,
            ended=row.status in rules.ENDED,
            windows=[w.model_dump() for w in stage.windows],
            has_verification=stage.verification is not None,
            has_governance=stage.governance_workflow_id is not None,
        )

    @activity.defn(name="record_promotion")
    async def record_promotion(self, data: PromotionUpdate) -> None:
        async with self.sessionmaker() as session, session.begin():
            row = await self._load(session, data.promotion_id, lock=True)
            await promotions.move(session, row, data.status, step=data.step, reason=data.reason, notes=data.notes)

    @activity.defn(name="stage_turn")
    async def stage_turn(self, promotion_id: str) -> bool:
        """Whether this promotion is the stage's oldest open one: one promotion at a time per stage."""
        async with self.sessionmaker() as session:
            row = await self._load(session, promotion_id)
            return await promotions.first_in_line(session, row)

    @activity.defn(name="check_promotion_order")
    async def check_promotion_order(self, promotion_id: str) -> OrderResult:
        async with self.sessionmaker() as session:
            row = await self._load(session, promotion_id)
            _, spec = await self._track(session, row)
            rejected = await promotions.rejection(session, row.track_id, row.subject)
            if rejected is not None:
                return OrderResult(
                    refusal=f"{row.subject} was rejected on this track: {rejected.reason or 'no reason'}"
                )
            history = rules.facts_of(await promotions.history(session, row.track_id))
        checked = rules.check_order(spec, row.stage_index, row.subject, history, datetime.now(UTC))
        return OrderResult(refusal=checked.refusal, soak_left=checked.soak_left)

    @activity.defn(name="open_verification")
    async def open_verification(self, promotion_id: str) -> ChildStart:
        """The evaluation run that certifies the digest for this stage (made once per promotion)."""
        async with self.sessionmaker() as session, session.begin():
            row = await self._load(session, promotion_id, lock=True)
            _, spec = await self._track(session, row)
            verification = spec.stages[row.stage_index].verification
            assert verification is not None
            if row.evaluation_run_id is not None:
                return ChildStart(workflow_id=f"eval-{row.evaluation_run_id}", record_id=str(row.evaluation_run_id))
            origin = await session.get(Deployment, row.origin_deployment_id) if row.origin_deployment_id else None
            server = await session.get(Server, origin.server_id) if origin else None
            if origin is None or server is None:
                return ChildStart(workflow_id="", error="the promoted deployment no longer exists")
            tests = list(
                (
                    await session.scalars(
                        select(EvalTest).where(EvalTest.server_id == server.id).order_by(EvalTest.created_at)
                    )
                ).all()
            )
            if not tests:
                return ChildStart(
                    workflow_id="", error=f"server {server.name!r} has no evaluation tests to verify the digest with"
                )
            requester = await session.get(User, row.requester_id) if row.requester_id else None
            certify = verification.model_dump()
            try:
                run = await open_run(
                    session,
                    server,
                    origin,
                    row.requester_id,
                    requester.email if requester else "the platform",
                    snapshot(tests),
                    certify,
                    f"promotion:{row.id}",
                )
            except DomainError as exc:
                return ChildStart(workflow_id="", error=str(exc))
            row.evaluation_run_id = run.id
            return ChildStart(workflow_id=run.workflow_id, record_id=str(run.id), server_id=str(server.id))

    @activity.defn(name="open_promotion_governance")
    async def open_promotion_governance(self, promotion_id: str) -> ChildStart:
        """The governance run the stage asks for (made once per promotion)."""
        async with self.sessionmaker() as session, session.begin():
            row = await self._load(session, promotion_id, lock=True)
            track, spec = await self._track(session, row)
            stage = spec.stages[row.stage_index]
            if row.governance_run_id is not None:
                run = await session.get(GovernanceRun, row.governance_run_id)
                assert run is not None
            else:
                definition = await session.get(GovernanceDefinition, stage.governance_workflow_id)
                if definition is None or definition.owner_id != track.owner_id:
                    return ChildStart(workflow_id="", error="the stage's governance definition no longer exists")
                run = await governance_runs.open_run(
                    session,
                    definition,
                    server_id=stage.servers[0],
                    subject=row.subject,
                    tier=stage.governance_tier or stage.name,
                    requester_id=row.requester_id,
                )
                row.governance_run_id = run.id
            return ChildStart(
                workflow_id=run.workflow_id,
                record_id=str(run.id),
                server_id=str(run.server_id),
                requester_id=str(row.requester_id or ""),
                steps=list(run.steps.get("steps", [])),
            )

    @activity.defn(name="decide_promotion")
    async def decide_promotion(self, promotion_id: str) -> GateResult:
        """The policy engine on the promotion, right before it deploys: the stage's certifications, the
        order, and its governance run; the decision is persisted once per promotion."""
        key = f"promotion:{promotion_id}"
        async with self.sessionmaker() as session, session.begin():
            earlier = await session.scalar(select(PolicyDecision).where(PolicyDecision.decision_key == key))
            if earlier is not None:
                decided = Decision(earlier.allowed, earlier.backend, list(earlier.notes))
                return GateResult(decided.allowed, list(decided.notes), explain(decided))
            row = await self._load(session, promotion_id)
            track, spec = await self._track(session, row)
            stage = spec.stages[row.stage_index]
            required = [Requirement(r.tier, r.requirement) for r in stage.required_certifications]
            if stage.verification is not None:
                required.append(Requirement(stage.verification.tier, stage.verification.requirement))
            owned = select(Server.id).where(Server.owner_id == track.owner_id)
            certifications = (
                await session.scalars(
                    select(Certification).where(
                        Certification.subject == row.subject, Certification.server_id.in_(owned)
                    )
                )
            ).all()
            history = rules.facts_of(await promotions.history(session, row.track_id))
            upstream = spec.stages[row.stage_index - 1].name if row.stage_index > 0 and row.kind != "rollback" else None
            active = (
                upstream is None or rules.upstream_activation(spec, row.stage_index, row.subject, history) is not None
            )
            pending: list[str] = []
            if stage.governance_workflow_id is not None and row.kind != "rollback":
                governed = await session.get(GovernanceRun, row.governance_run_id) if row.governance_run_id else None
                if governed is None or governed.status != RunStatus.APPROVED:
                    pending.append(stage.governance_tier or stage.name)
            remediating = await session.scalar(
                select(RemediationRun.id).where(
                    RemediationRun.server_id.in_(stage.servers), RemediationRun.status.in_(REMEDIATION_ACTIVE)
                )
            )
            now = datetime.now(UTC)
            decision = decide(
                Facts(
                    subject=row.subject,
                    required=required,
                    certifications=[
                        CertificationFact(c.tier, c.requirement, c.status, c.created_at, c.valid_until)
                        for c in certifications
                    ],
                    runtime="promotion",
                    now=now,
                    upstream_stage=upstream,
                    upstream_active=active,
                    governance_pending=pending,
                    under_remediation=remediating is not None,
                )
            )
            await session.execute(
                insert(PolicyDecision)
                .values(
                    server_id=stage.servers[0],
                    deployment_id=None,
                    decision_key=key,
                    subject=row.subject,
                    allowed=decision.allowed,
                    backend=decision.backend,
                    notes=decision.notes,
                    facts={
                        "promotion_id": promotion_id,
                        "stage": stage.name,
                        "required": [r.key for r in required],
                        "certifications": [str(c.id) for c in certifications],
                        "upstream": upstream,
                        "governance_pending": pending,
                        "at": now.isoformat(),
                    },
                )
                .on_conflict_do_nothing(index_elements=["decision_key"])
            )
        return GateResult(decision.allowed, list(decision.notes), explain(decision))

    @activity.defn(name="open_stage_deployments")
    async def open_stage_deployments(self, promotion_id: str) -> StageDeployments:
        """One deployment per stage server, pinned to the promoted artifact (made once per promotion and
        server). A server that already runs the digest gets none."""
        async with self.sessionmaker() as session, session.begin():
            row = await self._load(session, promotion_id, lock=True)
            _, spec = await self._track(session, row)
            origin = await session.get(Deployment, row.origin_deployment_id) if row.origin_deployment_id else None
            if origin is None:
                return StageDeployments(error="the promoted deployment no longer exists")
            made = dict(row.deployments or {})
            out: list[StageDeployment] = []
            for server_id in spec.stages[row.stage_index].servers:
                server = await session.get(Server, server_id, with_for_update=True)
                if server is None:
                    return StageDeployments(error=f"server {server_id} of stage {row.stage!r} no longer exists")
                if str(server_id) in made:
                    deployment = await session.get(Deployment, uuid.UUID(made[str(server_id)]))
                    assert deployment is not None
                    mine = deployment.idempotency_key == f"promotion:{row.id}"
                    out.append(StageDeployment(str(server_id), str(deployment.id), deployment.workflow_id, mine))
                    continue
                active = (
                    await session.get(Deployment, server.active_deployment_id) if server.active_deployment_id else None
                )
                if (
                    active is not None
                    and server.status == ServerStatus.RUNNING
                    and subject_of(active.spec.get("source", {}), active.image_digest) == row.subject
                ):
                    made[str(server_id)] = str(active.id)
                    out.append(StageDeployment(str(server_id), str(active.id), active.workflow_id, start=False))
                    continue
                try:
                    source = rules.pinned_source(
                        server.name, server.source, origin.spec.get("source", {}), origin.revision, origin.artifact_id
                    )
                    spec_, runtime = current_spec(server, self.container_runtime, source=source)
                except DomainError as exc:
                    return StageDeployments(error=str(exc))
                if source.get("type") == "git":
                    spec_["artifact_id"] = str(origin.artifact_id)
                opened = await open_deployment(
                    session,
                    server,
                    spec=spec_,
                    runtime=runtime,
                    idempotency_key=f"promotion:{row.id}",
                    created_by=row.requester_id,
                )
                await session.flush()
                deployment = opened.deployment
                made[str(server_id)] = str(deployment.id)
                session.add(
                    ServerLog(
                        server_id=server.id,
                        deployment_id=deployment.id,
                        message=f"revision {deployment.seq}: promotion of {row.subject} into stage {row.stage!r}",
                    )
                )
                out.append(StageDeployment(str(server_id), str(deployment.id), deployment.workflow_id, start=True))
            row.deployments = made
        return StageDeployments(deployments=out)

    @activity.defn(name="activate_promotion")
    async def activate_promotion(self, promotion_id: str) -> Activated:
        """The stage runs the digest: this promotion is `active`, the one before it `superseded` (or
        `rolled_back` when this is a rollback), and the next stage promotes it if it does so automatically."""
        async with self.sessionmaker() as session, session.begin():
            row = await self._load(session, promotion_id, lock=True)
            track, spec = await self._track(session, row)
            await promotions.activate(session, row)
            out = Activated(next_queued=await promotions.next_queued(session, row))
            index = row.stage_index + 1
            rejected = await promotions.rejected_subjects(session, row.track_id)
            history = rules.facts_of(await promotions.history(session, row.track_id))
            if row.kind != "rollback" and rules.auto_candidate(
                spec, index, row.subject, history, rejected=rejected, held=set(track.held or [])
            ):
                await promotions.open_promotion(
                    session,
                    track_id=row.track_id,
                    stage=spec.stages[index].name,
                    index=index,
                    subject=row.subject,
                    origin=row.origin_deployment_id,
                    kind="auto",
                    requester_id=row.requester_id,
                    reason=f"promoted automatically: active in stage {row.stage!r}",
                )
            # Whatever this (or an earlier attempt of this activity) scheduled is started by the workflow.
            automatic = (
                await session.scalars(
                    select(Promotion).where(
                        Promotion.track_id == row.track_id,
                        Promotion.stage_index == index,
                        Promotion.subject == row.subject,
                        Promotion.kind == "auto",
                        Promotion.status == rules.Status.SCHEDULED,
                    )
                )
            ).all()
            out.auto = [
                ChildStart(workflow_id=p.workflow_id, record_id=str(p.id), stage=p.stage, subject=p.subject)
                for p in automatic
            ]
        return out

    @activity.defn(name="finish_promotion")
    async def finish_promotion(self, data: FinishPromotion) -> str | None:
        """End the promotion (rejected, failed, aborted); the stage's next promotion, to wake."""
        async with self.sessionmaker() as session, session.begin():
            row = await self._load(session, data.promotion_id, lock=True)
            await promotions.finish(session, row, data.status, data.reason, data.notes)
            return await promotions.next_queued(session, row)

    def all(self) -> list[Any]:
        return [
            self.load_promotion,
            self.record_promotion,
            self.stage_turn,
            self.check_promotion_order,
            self.open_verification,
            self.open_promotion_governance,
            self.decide_promotion,
            self.open_stage_deployments,
            self.activate_promotion,
            self.finish_promotion,
        ]
