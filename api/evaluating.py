"""Evaluation runs as the API opens, starts and shows them: the revision a run evaluates, a replayed
`Idempotency-Key`, the remediation gate, starting the workflow (a run Temporal cannot take ends `error`),
and which runs, results and artifacts the caller may see. Used by the evaluation routes."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio.client import Client

from api.deps import AppState
from api.schemas.evaluations import EvalResultPublic, EvalRunCreate, EvalRunPublic, EvalRunResults
from core.errors import Conflict, InvalidInput, NotFound
from core.models import (
    BuildArtifactRun,
    Deployment,
    EvalResult,
    EvalRun,
    EvalTest,
    RemediationRun,
    Server,
    User,
)
from core.remediation import ACTIVE as REMEDIATION_ACTIVE
from records import evaluation_runs
from records.deployments import IN_PROGRESS
from records.evaluation_runs import Status, open_run, snapshot
from workflows.contracts.starters import start_evaluation


def visible(stmt: Any, user: User) -> Any:
    return stmt if user.role == "admin" else stmt.where(Server.owner_id == user.id)


async def target_deployment(session: AsyncSession, server: Server, deployment_id: uuid.UUID | None) -> Deployment:
    if deployment_id is None:
        if server.active_deployment_id is None:
            raise Conflict("no revision of this server serves: deploy it, or name a deployment to evaluate")
        deployment = await session.get(Deployment, server.active_deployment_id)
    else:
        deployment = await session.scalar(
            select(Deployment).where(Deployment.id == deployment_id, Deployment.server_id == server.id)
        )
        if deployment is None:
            raise NotFound(f"deployment {deployment_id} not found on this server")
    assert deployment is not None
    if deployment.status in IN_PROGRESS and deployment.id != server.active_deployment_id:
        raise Conflict(f"revision {deployment.seq} is still being deployed: evaluate it once it has ended")
    if deployment.spec.get("source", {}).get("type") == "git" and not deployment.spec.get("built"):
        raise Conflict(f"revision {deployment.seq} was never built: there is nothing to evaluate")
    return deployment


async def replayed_run(session: AsyncSession, server_id: uuid.UUID, key: str | None) -> EvalRun | None:
    if not key:
        return None
    found: EvalRun | None = await session.scalar(
        select(EvalRun).where(EvalRun.server_id == server_id, EvalRun.idempotency_key == key)
    )
    return found


async def new_run(session: AsyncSession, server: Server, user: User, body: EvalRunCreate, key: str | None) -> EvalRun:
    deployment = await target_deployment(session, server, body.deployment_id)
    tests = list(
        (
            await session.scalars(select(EvalTest).where(EvalTest.server_id == server.id).order_by(EvalTest.created_at))
        ).all()
    )
    if body.tests is not None:
        unknown = sorted(set(body.tests) - {t.name for t in tests})
        if unknown:
            raise InvalidInput(f"no such test on this server: {', '.join(unknown)}")
        tests = [t for t in tests if t.name in set(body.tests)]
    if not tests:
        raise Conflict("this server has no evaluation tests: add some at POST .../eval/tests")
    certify = body.certify.model_dump() if body.certify else None
    return await open_run(session, server, deployment, user.id, user.email, snapshot(tests), certify, key)


async def start_run(session: AsyncSession, state: AppState, client: Client, run: EvalRun) -> None:
    """Start a committed run's workflow; when Temporal cannot take it, the run ends `error` saying so."""
    if run.status != Status.PENDING:
        return
    try:
        await start_evaluation(client, state.settings, server_id=run.server_id, run_id=run.id)
    except Exception as exc:
        run_id = run.id
        await session.rollback()  # reading the run back began a transaction
        async with session.begin():
            why = f"the evaluation workflow could not be started: {getattr(exc, 'message', exc)}"
            await evaluation_runs.end_unstarted(session, run_id, Status.ERROR, why)
        raise


async def refuse_under_remediation(session: AsyncSession, server_id: uuid.UUID) -> None:
    """An evaluation is not scheduled on a server a remediation run is working on (its result would
    judge a revision in the middle of being repaired)."""
    active = await session.scalar(
        select(RemediationRun.id).where(
            RemediationRun.server_id == server_id, RemediationRun.status.in_(REMEDIATION_ACTIVE)
        )
    )
    if active is not None:
        raise Conflict(
            f"policy_hook:remediation_gate: remediation run {active} is active on this server; wait for it to "
            "end or cancel it"
        )


async def with_results(session: AsyncSession, run: EvalRun) -> EvalRunResults:
    results = (
        await session.scalars(select(EvalResult).where(EvalResult.run_id == run.id).order_by(EvalResult.id))
    ).all()
    return EvalRunResults(
        run=EvalRunPublic.model_validate(run), results=[EvalResultPublic.model_validate(r) for r in results]
    )


def ranked(stats: Any) -> Any:
    subquery = stats.subquery()
    return select(subquery).order_by(subquery.c.average.desc(), subquery.c.name)


async def visible_run(session: AsyncSession, user: User, run_id: uuid.UUID) -> EvalRun:
    run = await session.scalar(
        visible(select(EvalRun).join(Server, Server.id == EvalRun.server_id), user).where(EvalRun.id == run_id)
    )
    if run is None:
        raise NotFound(f"evaluation run {run_id} not found")
    return run


async def visible_artifact(
    session: AsyncSession, user: User, artifact_id: uuid.UUID
) -> tuple[BuildArtifactRun, Server]:
    row = (
        await session.execute(
            visible(select(BuildArtifactRun, Server).join(Server, Server.id == BuildArtifactRun.server_id), user).where(
                BuildArtifactRun.id == artifact_id
            )
        )
    ).first()
    if row is None:
        raise NotFound(f"artifact {artifact_id} not found")
    return row[0], row[1]


async def artifact_deployment(session: AsyncSession, artifact: BuildArtifactRun) -> Deployment | None:
    found: Deployment | None = await session.scalar(
        select(Deployment)
        .where(Deployment.artifact_id == artifact.id, Deployment.image_digest.is_not(None))
        .order_by(Deployment.seq.desc())
        .limit(1)
    )
    return found
