"""Recording an evaluation run: the one way a run is asked for (the evaluation routes, artifact
certification, a promotion's verification). Runs in the caller's transaction."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from core.errors import Conflict
from core.models import Certification, Deployment, EvalRun, EvalTest, Server, ServerLog
from core.policy import subject_of


class Status(StrEnum):
    """A run is `pending` until its workflow takes it (`running`), and ends `passed` (every test
    passed), `failed`, `error` (it could not run) or `cancelled`."""

    PENDING = "pending"
    RUNNING = "running"
    PASSED = "passed"
    FAILED = "failed"
    ERROR = "error"
    CANCELLED = "cancelled"


FINISHED = (Status.PASSED, Status.FAILED, Status.ERROR, Status.CANCELLED)


def evaluation_workflow_id(run_id: uuid.UUID) -> str:
    return f"eval-{run_id}"


def snapshot(tests: list[EvalTest]) -> list[dict[str, Any]]:
    """The tests as they are now: a run keeps these, whatever happens to the tests later."""
    return [
        {
            "id": str(t.id),
            "name": t.name,
            "tool": t.tool,
            "arguments": t.arguments,
            "expectation": t.expectation,
            "expect_error": t.expect_error,
            "timeout_seconds": t.timeout_seconds,
        }
        for t in tests
    ]


async def open_run(
    session: AsyncSession,
    server: Server,
    deployment: Deployment,
    requester_id: uuid.UUID | None,
    requester_email: str,
    tests: list[dict[str, Any]],
    certify: dict[str, Any] | None,
    key: str | None,
) -> EvalRun:
    """Record a run (and, when it certifies, its pending certification) in the caller's transaction."""
    subject = subject_of(deployment.spec.get("source", {}), deployment.image_digest)
    if certify and subject is None:
        raise Conflict(
            f"revision {deployment.seq} has no immutable artifact to certify: pin an exact package version or an "
            "image digest (a git build is bound to its image digest)"
        )
    run_id = uuid.uuid4()
    run = EvalRun(
        id=run_id,
        server_id=server.id,
        deployment_id=deployment.id,
        seq=deployment.seq,
        workflow_id=evaluation_workflow_id(run_id),
        idempotency_key=key,
        status=Status.PENDING,
        candidate=False,
        tests={"tests": tests},
        certify=certify,
        subject=subject,
        total=0,
        passed=0,
        created_by=requester_id,
    )
    session.add(run)
    await session.flush()
    if certify and subject:
        session.add(
            Certification(
                id=uuid.uuid4(),
                server_id=server.id,
                subject=subject,
                artifact_id=deployment.artifact_id,
                tier=certify["tier"],
                requirement=certify["requirement"],
                status="pending",
                evaluation_run_id=run_id,
                valid_days=certify["valid_days"],
                created_by=requester_id,
            )
        )
    what = f" to certify {certify['tier']}:{certify['requirement']}" if certify else ""
    session.add(
        ServerLog(
            server_id=server.id,
            message=f"evaluation of revision {deployment.seq} ({len(tests)} tests){what} asked for by "
            f"{requester_email}",
        )
    )
    return run


def outcome(cancelled: bool, error: str, expected: int, total: int, passed: int) -> Status:
    """How a run that was taken ends."""
    if cancelled:
        return Status.CANCELLED
    if error:
        return Status.ERROR
    return Status.PASSED if passed == expected == total else Status.FAILED


async def finish(
    session: AsyncSession,
    run: EvalRun,
    status: Status,
    *,
    total: int,
    passed: int,
    score: float | None,
    error: str = "",
) -> None:
    """End a run (locked by the caller, not yet ended) with its results, settle the certification it
    asked for, and say so in the server's log."""
    await session.execute(
        update(EvalRun)
        .where(EvalRun.id == run.id)
        .values(status=status, total=total, passed=passed, score=score, error=error or None,
                finished_at=datetime.now(UTC))
    )  # fmt: skip
    certified = ""
    if run.certify:
        now = datetime.now(UTC)
        ok = status == Status.PASSED
        await session.execute(
            update(Certification)
            .where(Certification.evaluation_run_id == run.id, Certification.status == "pending")
            .values(
                status="pass" if ok else "fail",
                valid_from=now if ok else None,
                valid_until=now + timedelta(days=float(run.certify["valid_days"])) if ok else None,
            )
        )
        verdict = "certified" if ok else "not certified"
        certified = f"; {run.subject} {verdict} {run.certify['tier']}:{run.certify['requirement']}"
    expected = len(run.tests.get("tests", []))
    shown = f", score {score:.3f}" if score is not None else ""
    session.add(
        ServerLog(
            server_id=run.server_id,
            message=f"evaluation of revision {run.seq}: {status} ({passed}/{expected} passed{shown})"
            + (f": {error}" if error else "")
            + certified,
        )
    )


async def end_unstarted(session: AsyncSession, run_id: uuid.UUID, status: Status, error: str | None = None) -> bool:
    """End a run no workflow has taken (`error`: it could not be started; `cancelled`), and fail the
    certification it asked for. False when it was taken or had ended meanwhile."""
    row = await session.get(EvalRun, run_id, with_for_update=True)
    if row is None or row.status != Status.PENDING:
        return False
    row.status = status
    if error is not None:
        row.error = error
    await session.execute(
        update(Certification)
        .where(Certification.evaluation_run_id == run_id, Certification.status == "pending")
        .values(status="fail")
    )
    return True
