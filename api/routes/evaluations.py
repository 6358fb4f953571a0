"""Evaluations: a server's tests, runs of them against a revision (EvaluationRunWorkflow), their results,
a scoreboard across the caller's servers and a ranking of servers by score."""

from __future__ import annotations

import uuid
from typing import Literal

from fastapi import APIRouter, Header, Query, Response, status
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from api.deploying import check_idempotency_key
from api.deps import CurrentUser, SessionDep, StateDep, TemporalDep, load_server
from api.evaluating import (
    artifact_deployment,
    new_run,
    ranked,
    refuse_under_remediation,
    replayed_run,
    start_run,
    visible,
    visible_artifact,
    visible_run,
    with_results,
)
from api.schemas.common import ListOf, error_responses
from api.schemas.evaluations import (
    ArtifactEvaluationCreate,
    CertificationPublic,
    CertifyRequest,
    EvalRunCreate,
    EvalRunPublic,
    EvalRunResults,
    EvalScoreboardRow,
    EvalSummaryRow,
    EvalTestCreate,
    EvalTestPublic,
    PolicyDecisionPublic,
)
from api.workflows import cancel_workflow
from core.errors import Conflict, NotFound
from core.models import Certification, Deployment, EvalRun, EvalTest, PolicyDecision, Server
from records import evaluation_runs
from records.evaluation_runs import FINISHED, Status, open_run

router = APIRouter(prefix="/api", tags=["evaluations"])
MAX_TESTS = 200
RunStatus = Literal["pending", "running", "passed", "failed", "error", "cancelled"]


@router.get(
    "/servers/{server_id}/eval/tests", response_model=ListOf[EvalTestPublic], responses=error_responses(401, 404, 422)
)
async def list_tests(server_id: uuid.UUID, user: CurrentUser, session: SessionDep) -> ListOf[EvalTestPublic]:
    """The server's evaluation tests, oldest first."""
    server = await load_server(session, user, server_id)
    rows = (
        await session.scalars(select(EvalTest).where(EvalTest.server_id == server.id).order_by(EvalTest.created_at))
    ).all()
    return ListOf[EvalTestPublic](count=len(rows), data=[EvalTestPublic.model_validate(r) for r in rows])


@router.post(
    "/servers/{server_id}/eval/tests",
    status_code=status.HTTP_201_CREATED,
    response_model=EvalTestPublic,
    responses=error_responses(401, 404, 409, 422),
)
async def create_test(
    server_id: uuid.UUID, body: EvalTestCreate, user: CurrentUser, session: SessionDep
) -> EvalTestPublic:
    """A new test: call `tool` with `arguments` and score the answer against `expectation` (kinds: exact,
    contains, regex, json_subset, json_schema, similarity)."""
    try:
        async with session.begin():
            server = await load_server(session, user, server_id, lock=True)
            count = await session.scalar(select(func.count()).where(EvalTest.server_id == server.id))
            if (count or 0) >= MAX_TESTS:
                raise Conflict(f"a server may have at most {MAX_TESTS} evaluation tests; delete one first")
            row = EvalTest(
                id=uuid.uuid4(),
                server_id=server.id,
                name=body.name,
                tool=body.tool,
                arguments=body.arguments,
                expectation=body.expectation.model_dump(mode="json", by_alias=True),
                expect_error=body.expect_error,
                timeout_seconds=body.timeout_seconds,
                created_by=user.id,
            )
            session.add(row)
    except IntegrityError:
        raise Conflict(f"this server already has a test named {body.name!r}") from None
    await session.refresh(row)
    return EvalTestPublic.model_validate(row)


@router.delete(
    "/servers/{server_id}/eval/tests/{test_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(401, 404, 422),
)
async def delete_test(server_id: uuid.UUID, test_id: uuid.UUID, user: CurrentUser, session: SessionDep) -> Response:
    """Delete a test. Runs that evaluated it keep their results."""
    async with session.begin():
        server = await load_server(session, user, server_id, lock=True)
        row = await session.scalar(select(EvalTest).where(EvalTest.id == test_id, EvalTest.server_id == server.id))
        if row is None:
            raise NotFound(f"test {test_id} not found on this server")
        await session.delete(row)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/servers/{server_id}/eval/run",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=EvalRunPublic,
    responses=error_responses(401, 404, 409, 422, 503),
)
async def run_tests(
    server_id: uuid.UUID,
    user: CurrentUser,
    session: SessionDep,
    state: StateDep,
    client: TemporalDep,
    response: Response,
    body: EvalRunCreate | None = None,
    idempotency_key: str | None = Header(default=None, max_length=200),
) -> EvalRunPublic:
    """Run the server's tests (or the named ones) against the serving revision, or against a named
    deployment, which is launched beside the serving one for the run. Answers at once; follow the run at
    `GET /api/evaluations/{id}`. The same `Idempotency-Key` again returns the same run."""
    check_idempotency_key(idempotency_key)
    body = body or EvalRunCreate()
    try:
        async with session.begin():
            server = await load_server(session, user, server_id, lock=True)
            run = await replayed_run(session, server.id, idempotency_key)
            if run is None:
                await refuse_under_remediation(session, server.id)
                run = await new_run(session, server, user, body, idempotency_key)
            else:
                response.headers["Idempotent-Replayed"] = "true"
    except IntegrityError:
        # The same key from a concurrent request won: that request's run is this one's.
        run = await replayed_run(session, server_id, idempotency_key)
        if run is None:
            raise
        response.headers["Idempotent-Replayed"] = "true"
    await session.refresh(run)
    await start_run(session, state, client, run)
    return EvalRunPublic.model_validate(run)


@router.get(
    "/servers/{server_id}/eval/runs", response_model=ListOf[EvalRunPublic], responses=error_responses(401, 404, 422)
)
async def list_runs(
    server_id: uuid.UUID, user: CurrentUser, session: SessionDep, limit: int = Query(default=50, ge=1, le=500)
) -> ListOf[EvalRunPublic]:
    """The server's evaluation runs, newest first."""
    server = await load_server(session, user, server_id)
    rows = (
        await session.scalars(
            select(EvalRun).where(EvalRun.server_id == server.id).order_by(EvalRun.created_at.desc()).limit(limit)
        )
    ).all()
    return ListOf[EvalRunPublic](count=len(rows), data=[EvalRunPublic.model_validate(r) for r in rows])


@router.get(
    "/servers/{server_id}/eval/results", response_model=EvalRunResults, responses=error_responses(401, 404, 422)
)
async def latest_results(
    server_id: uuid.UUID,
    user: CurrentUser,
    session: SessionDep,
    run_id: uuid.UUID | None = Query(default=None, description="Unset: the newest run"),
) -> EvalRunResults:
    """A run's results per test (passed, score, latency, an excerpt of the answer): the newest run's, or
    the named one's."""
    server = await load_server(session, user, server_id)
    stmt = select(EvalRun).where(EvalRun.server_id == server.id)
    stmt = stmt.where(EvalRun.id == run_id) if run_id else stmt.order_by(EvalRun.created_at.desc()).limit(1)
    run = await session.scalar(stmt)
    if run is None:
        raise NotFound(f"evaluation run {run_id} not found" if run_id else "this server has no evaluation runs yet")
    return await with_results(session, run)


@router.get("/evaluations", response_model=ListOf[EvalScoreboardRow], responses=error_responses(401, 422))
async def scoreboard(
    user: CurrentUser,
    session: SessionDep,
    run_status: RunStatus | None = Query(default=None, alias="status", description="Only runs with this status"),
    limit: int = Query(default=100, ge=1, le=1000),
) -> ListOf[EvalScoreboardRow]:
    """Evaluation runs across the servers the caller can see, newest first."""
    stmt = visible(select(EvalRun, Server.name).join(Server, Server.id == EvalRun.server_id), user)
    if run_status:
        stmt = stmt.where(EvalRun.status == run_status)
    rows = (await session.execute(stmt.order_by(EvalRun.created_at.desc()).limit(limit))).all()
    data = [EvalScoreboardRow(**EvalRunPublic.model_validate(run).model_dump(), server_name=name) for run, name in rows]
    return ListOf[EvalScoreboardRow](count=len(data), data=data)


@router.get("/evaluations/summary", response_model=ListOf[EvalSummaryRow], responses=error_responses(401))
async def summary(user: CurrentUser, session: SessionDep) -> ListOf[EvalSummaryRow]:
    """The caller's servers ranked by the mean score of their finished evaluation runs (best first)."""
    finished = EvalRun.status.in_(("passed", "failed"))
    stats = (
        visible(
            select(
                EvalRun.server_id,
                Server.name,
                func.count().label("runs"),
                func.avg(EvalRun.score).label("average"),
            ).join(Server, Server.id == EvalRun.server_id),
            user,
        )
        .where(finished, EvalRun.score.is_not(None))
        .group_by(EvalRun.server_id, Server.name)
    )
    rows = (await session.execute(ranked(stats))).all()
    data: list[EvalSummaryRow] = []
    for rank, (server_id, name, runs, average) in enumerate(rows, start=1):
        latest = await session.scalar(
            select(EvalRun)
            .where(EvalRun.server_id == server_id, finished)
            .order_by(EvalRun.finished_at.desc())
            .limit(1)
        )
        assert latest is not None
        data.append(
            EvalSummaryRow(
                rank=rank,
                server_id=server_id,
                server_name=name,
                runs=runs,
                average_score=round(float(average), 4),
                latest_score=latest.score,
                latest_status=latest.status,
                latest_run_id=latest.id,
                latest_at=latest.finished_at or latest.created_at,
            )
        )
    return ListOf[EvalSummaryRow](count=len(data), data=data)


@router.get("/evaluations/{run_id}", response_model=EvalRunResults, responses=error_responses(401, 404, 422))
async def get_run(run_id: uuid.UUID, user: CurrentUser, session: SessionDep) -> EvalRunResults:
    """One evaluation run with its results so far."""
    return await with_results(session, await visible_run(session, user, run_id))


@router.post(
    "/evaluations/{run_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=EvalRunPublic,
    responses=error_responses(401, 404, 409, 422, 503),
)
async def cancel_run(run_id: uuid.UUID, user: CurrentUser, session: SessionDep, client: TemporalDep) -> EvalRunPublic:
    """Cancel a run under way: the test being called stops, a launched candidate is removed and the run ends
    `cancelled` with the results it had."""
    run = await visible_run(session, user, run_id)
    if run.status in FINISHED:
        raise Conflict(f"evaluation run {run_id} has already ended ({run.status})")
    if not await cancel_workflow(client, run.workflow_id, "the evaluation workflow"):
        # Recorded but never started: nothing runs, so the record ends here.
        run_key = run.id
        await session.rollback()
        async with session.begin():
            await evaluation_runs.end_unstarted(session, run_key, Status.CANCELLED)
        await session.refresh(run)
    return EvalRunPublic.model_validate(run)


@router.post(
    "/evaluations/{run_id}/retry",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=EvalRunPublic,
    responses=error_responses(401, 404, 409, 422, 503),
)
async def retry_run(
    run_id: uuid.UUID, user: CurrentUser, session: SessionDep, state: StateDep, client: TemporalDep
) -> EvalRunPublic:
    """Run an ended evaluation again: the same tests (as that run had them) against the same revision, and
    the same certification asked for. A new run; the first keeps its results."""
    async with session.begin():
        earlier = await visible_run(session, user, run_id)
        if earlier.status not in FINISHED:
            raise Conflict(f"evaluation run {run_id} is still {earlier.status}: retry it once it has ended")
        server = await load_server(session, user, earlier.server_id, lock=True)
        deployment = await session.get(Deployment, earlier.deployment_id) if earlier.deployment_id else None
        if deployment is None:
            raise Conflict("the revision that run evaluated no longer exists")
        run = await open_run(
            session, server, deployment, user.id, user.email, earlier.tests.get("tests", []), earlier.certify, None
        )
    await session.refresh(run)
    await start_run(session, state, client, run)
    return EvalRunPublic.model_validate(run)


@router.get(
    "/servers/{server_id}/certifications",
    response_model=ListOf[CertificationPublic],
    responses=error_responses(401, 404, 422),
)
async def list_certifications(
    server_id: uuid.UUID, user: CurrentUser, session: SessionDep
) -> ListOf[CertificationPublic]:
    """Every certification of the server's artifacts, newest first."""
    server = await load_server(session, user, server_id)
    rows = (
        await session.scalars(
            select(Certification).where(Certification.server_id == server.id).order_by(Certification.created_at.desc())
        )
    ).all()
    return ListOf[CertificationPublic](count=len(rows), data=[CertificationPublic.model_validate(r) for r in rows])


@router.get(
    "/artifacts/{artifact_id}/evaluations",
    response_model=ListOf[CertificationPublic],
    responses=error_responses(401, 404, 422),
)
async def artifact_certifications(
    artifact_id: uuid.UUID, user: CurrentUser, session: SessionDep
) -> ListOf[CertificationPublic]:
    """The certifications of a build artifact (bound to its image digest), newest first."""
    artifact, server = await visible_artifact(session, user, artifact_id)
    deployment = await artifact_deployment(session, artifact)
    subjects = {d for d in (artifact.manifest_digest, deployment.image_digest if deployment else None) if d}
    stmt = select(Certification).where(Certification.server_id == server.id)
    stmt = stmt.where(
        (Certification.artifact_id == artifact.id) | Certification.subject.in_(subjects)
        if subjects
        else Certification.artifact_id == artifact.id
    )
    rows = (await session.scalars(stmt.order_by(Certification.created_at.desc()))).all()
    return ListOf[CertificationPublic](count=len(rows), data=[CertificationPublic.model_validate(r) for r in rows])


@router.post(
    "/artifacts/{artifact_id}/evaluations",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=EvalRunPublic,
    responses=error_responses(401, 404, 409, 422, 503),
)
async def certify_artifact(
    artifact_id: uuid.UUID,
    body: ArtifactEvaluationCreate,
    user: CurrentUser,
    session: SessionDep,
    state: StateDep,
    client: TemporalDep,
) -> EvalRunPublic:
    """Evaluate a build artifact and certify it (`tier`, `requirement`, `valid_days`) when every test
    passes. It runs on the newest deployment of the artifact: the serving one, or launched beside it."""
    async with session.begin():
        artifact, server = await visible_artifact(session, user, artifact_id)
        server = await load_server(session, user, server.id, lock=True)
        deployment = await artifact_deployment(session, artifact)
        if deployment is None:
            raise Conflict(f"no deployment has run artifact {artifact_id} yet: deploy it first (it may be blocked)")
        run_body = EvalRunCreate(
            deployment_id=deployment.id,
            tests=body.tests,
            certify=CertifyRequest(tier=body.tier, requirement=body.requirement, valid_days=body.valid_days),
        )
        run = await new_run(session, server, user, run_body, None)
    await session.refresh(run)
    await start_run(session, state, client, run)
    return EvalRunPublic.model_validate(run)


@router.get(
    "/servers/{server_id}/policy-decisions",
    response_model=ListOf[PolicyDecisionPublic],
    responses=error_responses(401, 404, 422),
)
async def list_policy_decisions(
    server_id: uuid.UUID, user: CurrentUser, session: SessionDep, limit: int = Query(default=50, ge=1, le=500)
) -> ListOf[PolicyDecisionPublic]:
    """What the policy engine decided before each launch of the server, newest first, with its notes."""
    server = await load_server(session, user, server_id)
    rows = (
        await session.scalars(
            select(PolicyDecision)
            .where(PolicyDecision.server_id == server.id)
            .order_by(PolicyDecision.id.desc())
            .limit(limit)
        )
    ).all()
    return ListOf[PolicyDecisionPublic](count=len(rows), data=[PolicyDecisionPublic.model_validate(r) for r in rows])
