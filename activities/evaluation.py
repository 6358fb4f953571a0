"""Activities of EvaluationRunWorkflow: find the revision to evaluate, call its tools, record the results.

The tests of a run are read from the run's record (copied there when the run was asked for), never from
workflow history, and each result is written as soon as its call ends, once per (run, test): a retried
attempt after a lost worker carries on with the tests not yet recorded."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anyio
from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.common import as_application_error, heartbeating
from activities.mcpclient import platform_mcp_client
from activities.runtime import from_record
from core.evaluation import Answer, Score, answer_from_result, evaluate, excerpt, parse_expectation
from core.failures import RuntimeFailure
from core.models import Deployment, EvalResult, EvalRun, Server
from records import evaluation_runs
from records.deployments import InstanceRecord, instance_of
from records.evaluation_runs import FINISHED, Status
from records.servers import SERVING
from runtimes.base import Executor


@dataclass
class EvalTarget:
    deployment_id: str = ""
    # The serving revision's instance; None when the revision must be launched for the run (a candidate).
    instance: InstanceRecord | None = None
    candidate: bool = False
    # Set when there is nothing to run: the run already ended, or its revision cannot be evaluated.
    ended: str = ""
    error: str = ""


@dataclass
class EvalTestsInput:
    run_id: str
    instance: InstanceRecord


@dataclass
class EvalSummary:
    total: int
    passed: int
    score: float | None


@dataclass
class EvalFinish:
    run_id: str
    error: str = ""
    cancelled: bool = False


@dataclass
class EvalRelease:
    run_id: str
    instance: InstanceRecord


def _instance(deployment: Deployment) -> InstanceRecord | None:
    instance = instance_of(deployment)
    return instance if instance is not None and instance.url else None


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, or the exception itself."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


async def call_and_score(url: str, test: dict[str, Any]) -> tuple[Score, Answer | None, float | None]:
    """Call one test's tool on the instance at `url` and score the answer. Never raises for the server's
    behaviour: a timeout, a refused connection or a protocol error is a failed test saying so."""
    expectation = parse_expectation(test["expectation"])
    timeout = float(test["timeout_seconds"])
    started = time.monotonic()
    try:
        # The handshake gets its own allowance: the test's timeout bounds the call itself.
        with anyio.fail_after(timeout + 15):
            async with platform_mcp_client(url) as client:
                result = await client.call_tool(test["tool"], test["arguments"], read_timeout_seconds=timeout)
                latency = (time.monotonic() - started) * 1000
    except Exception as exc:  # noqa: BLE001 - whatever the server did, it is this test's result
        causes = _leaves(exc)
        if any(isinstance(c, TimeoutError) or "timed out" in str(c).lower() for c in causes):
            return Score(False, 0.0, f"no answer within {timeout:g} s"), None, None
        message = "; ".join(str(c) or type(c).__name__ for c in causes)
        return Score(False, 0.0, f"the call failed: {message[:300]}"), None, None
    answer = answer_from_result(result.model_dump(mode="json", by_alias=True, exclude_none=True))
    return evaluate(expectation, answer, expect_error=bool(test.get("expect_error"))), answer, round(latency, 2)


class EvaluationActivities:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], executors: Mapping[str, Executor]) -> None:
        self.sessionmaker = sessionmaker
        self.executors = executors

    @activity.defn(name="evaluation_target")
    async def evaluation_target(self, run_id: str) -> EvalTarget:
        """Mark the run `running` and say which instance to call: the serving one, or none (launch the
        revision as a candidate)."""
        async with self.sessionmaker() as session, session.begin():
            run = await session.get(EvalRun, uuid.UUID(run_id), with_for_update=True)
            if run is None:
                return EvalTarget(ended="deleted")
            if run.status in FINISHED:
                return EvalTarget(ended=run.status)
            deployment = await session.get(Deployment, run.deployment_id) if run.deployment_id else None
            server = await session.get(Server, run.server_id)
            if deployment is None or server is None:
                return EvalTarget(error="the revision to evaluate no longer exists")
            if run.status == Status.PENDING:
                run.status = Status.RUNNING
                run.started_at = datetime.now(UTC)
            serving = (
                server.active_deployment_id == deployment.id and server.status in SERVING and _instance(deployment)
            )
            if serving:
                return EvalTarget(deployment_id=str(deployment.id), instance=_instance(deployment))
            if deployment.spec.get("source", {}).get("type") == "git" and not deployment.spec.get("built"):
                return EvalTarget(error=f"revision {deployment.seq} was never built: there is nothing to launch")
            run.candidate = True
            return EvalTarget(deployment_id=str(deployment.id), candidate=True)

    @activity.defn(name="run_evaluation_tests")
    async def run_evaluation_tests(self, data: EvalTestsInput) -> EvalSummary:
        run_id = uuid.UUID(data.run_id)
        async with self.sessionmaker() as session:
            run = await session.get(EvalRun, run_id)
            if run is None:
                raise ApplicationError("the evaluation run no longer exists", type="gone", non_retryable=True)
            tests: list[dict[str, Any]] = run.tests.get("tests", [])
            done = set((await session.scalars(select(EvalResult.test_id).where(EvalResult.run_id == run_id))).all())
        for index, test in enumerate(tests):
            if uuid.UUID(test["id"]) in done:
                continue
            activity.heartbeat(f"test {index + 1} of {len(tests)}: {test['name']}")
            scored, answer, latency = await heartbeating(
                call_and_score(data.instance.url, test), f"test {index + 1} of {len(tests)}: {test['name']}"
            )
            async with self.sessionmaker() as session, session.begin():
                await session.execute(
                    insert(EvalResult)
                    .values(
                        run_id=run_id,
                        test_id=uuid.UUID(test["id"]),
                        test_name=test["name"],
                        tool=test["tool"],
                        passed=scored.passed,
                        score=scored.score,
                        latency_ms=latency,
                        detail=scored.detail,
                        excerpt=excerpt(answer) if answer else "",
                    )
                    .on_conflict_do_nothing(constraint="uq_eval_results_run_test")
                )
        return await self._summary(run_id)

    async def _summary(self, run_id: uuid.UUID) -> EvalSummary:
        async with self.sessionmaker() as session:
            total, passed, mean = (
                await session.execute(
                    select(
                        func.count(),
                        func.count().filter(EvalResult.passed.is_(True)),
                        func.avg(EvalResult.score),
                    ).where(EvalResult.run_id == run_id)
                )
            ).one()
        return EvalSummary(total=total, passed=passed, score=round(float(mean), 4) if mean is not None else None)

    @activity.defn(name="finish_evaluation")
    async def finish_evaluation(self, data: EvalFinish) -> str:
        """Close the run: `passed` when every test passed, `failed` otherwise, `error` when it could not
        run, `cancelled`. Closing twice changes nothing."""
        run_id = uuid.UUID(data.run_id)
        summary = await self._summary(run_id)
        async with self.sessionmaker() as session, session.begin():
            run = await session.get(EvalRun, run_id, with_for_update=True)
            if run is None:
                return "deleted"
            if run.status in FINISHED:
                return run.status
            expected = len(run.tests.get("tests", []))
            status = evaluation_runs.outcome(data.cancelled, data.error, expected, summary.total, summary.passed)
            await evaluation_runs.finish(
                session, run, status, total=summary.total, passed=summary.passed, score=summary.score, error=data.error
            )
            return status

    @activity.defn(name="release_candidate")
    async def release_candidate(self, data: EvalRelease) -> bool:
        """Remove the instance launched for the run, unless its revision has since become the one serving
        (a deployment took it up meanwhile). True when removed."""
        async with self.sessionmaker() as session:
            server = await session.get(Server, uuid.UUID(data.instance.server_id))
            deployment = await session.get(Deployment, uuid.UUID(data.instance.deployment_id))
        if server is not None and str(server.active_deployment_id) == data.instance.deployment_id:
            return False
        recorded = _instance(deployment) if deployment is not None else None
        if recorded is not None and recorded.ref == data.instance.ref:
            return False  # the launch found the revision's own recorded instance (still draining): not ours
        executor = self.executors[data.instance.runtime]
        try:
            await heartbeating(executor.remove(from_record(data.instance)), "removing the candidate")
        except RuntimeFailure as exc:
            raise as_application_error(exc) from None
        return True

    def all(self) -> list[Any]:
        return [self.evaluation_target, self.run_evaluation_tests, self.finish_evaluation, self.release_candidate]
