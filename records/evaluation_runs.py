"""Recording an evaluation run: the one way a run is asked for (the evaluation routes, artifact
certification, a promotion's verification). Runs in the caller's transaction."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from core.errors import Conflict
from core.models import Certification, Deployment, EvalRun, EvalTest, Server, ServerLog
from core.policy import subject_of


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
        status="pending",
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
