"""Evaluations and certifications: a server's tests, their runs against a revision and the results,
and the certifications of artifacts a passing run gives."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from core.models.base import Base, now_column


class EvalTest(Base):
    """One evaluation test of a server: call `tool` with `arguments`, score the answer (core.evaluation)."""

    __tablename__ = "eval_tests"
    __table_args__ = (UniqueConstraint("server_id", "name", name="uq_eval_tests_server_name"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    server_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("servers.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    tool: Mapped[str] = mapped_column(String(128))
    arguments: Mapped[dict[str, Any]] = mapped_column(default=dict)
    expectation: Mapped[dict[str, Any]] = mapped_column()
    expect_error: Mapped[bool] = mapped_column(Boolean, default=False)
    timeout_seconds: Mapped[float] = mapped_column(Float, default=30.0)
    created_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = now_column()


class EvalRun(Base):
    """One run of a server's tests against one revision. The tests are copied in when the run is asked
    for, so editing them later never changes what a run evaluated."""

    __tablename__ = "eval_runs"
    __table_args__ = (
        Index("ix_eval_runs_server_created", "server_id", "created_at"),
        # Asking again with the same Idempotency-Key returns the run asked for first.
        Index(
            "uq_eval_runs_server_idem",
            "server_id",
            "idempotency_key",
            unique=True,
            postgresql_where=text("idempotency_key IS NOT NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    server_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("servers.id", ondelete="CASCADE"))
    deployment_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("deployments.id", ondelete="SET NULL"))
    seq: Mapped[int] = mapped_column(Integer)  # the revision evaluated
    workflow_id: Mapped[str] = mapped_column(String(200), unique=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    # pending | running | passed | failed | error | cancelled
    status: Mapped[str] = mapped_column(String(16), default="pending")
    candidate: Mapped[bool] = mapped_column(Boolean, default=False)  # launched beside the serving revision
    # What the run certifies when it ends (tier, requirement, valid_days), and the artifact it is bound to.
    certify: Mapped[dict[str, Any] | None] = mapped_column()
    subject: Mapped[str | None] = mapped_column(String(300))
    tests: Mapped[dict[str, Any]] = mapped_column()  # {"tests": [the tests as they were]}
    total: Mapped[int] = mapped_column(Integer, default=0)
    passed: Mapped[int] = mapped_column(Integer, default=0)
    score: Mapped[float | None] = mapped_column(Float)  # mean of the results' scores
    error: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = now_column()
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class EvalResult(Base):
    __tablename__ = "eval_results"
    __table_args__ = (UniqueConstraint("run_id", "test_id", name="uq_eval_results_run_test"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("eval_runs.id", ondelete="CASCADE"), index=True)
    test_id: Mapped[uuid.UUID] = mapped_column()  # as copied into the run; the test itself may be gone
    test_name: Mapped[str] = mapped_column(String(100))
    tool: Mapped[str] = mapped_column(String(128))
    passed: Mapped[bool] = mapped_column(Boolean)
    score: Mapped[float] = mapped_column(Float)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    detail: Mapped[str] = mapped_column(Text)
    excerpt: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = now_column()


class Certification(Base):
    """A tier + requirement certified for one immutable artifact (an image digest, or a package's exact
    version), with the evaluation run that is its evidence and a validity window."""

    __tablename__ = "certifications"
    __table_args__ = (Index("ix_certifications_server_subject", "server_id", "subject"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    server_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("servers.id", ondelete="CASCADE"))
    subject: Mapped[str] = mapped_column(String(300))
    artifact_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("build_artifact_runs.id", ondelete="SET NULL"))
    tier: Mapped[str] = mapped_column(String(32))
    requirement: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending | pass | fail
    evaluation_run_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("eval_runs.id", ondelete="SET NULL"), unique=True
    )
    valid_days: Mapped[float] = mapped_column(Float)
    valid_from: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    valid_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = now_column()
