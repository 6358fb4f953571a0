"""The platform's tables. Alembic migrations in `migrations/` are the only way these change in a database."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    Sequence,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSONB, uuid.UUID: UUID(as_uuid=True)}


def _now_column() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False)


class User(Base):
    __tablename__ = "users"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16), default="user")
    # Roles for governance approvals (e.g. release-manager), given by an administrator.
    roles: Mapped[list[str]] = mapped_column(JSONB, default=list, server_default="[]")
    server_quota: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = _now_column()


class ApiToken(Base):
    """A personal API token. Only the SHA-256 of the token is kept; the token itself is shown once."""

    __tablename__ = "api_tokens"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = _now_column()
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class RevokedSession(Base):
    """JWT ids ended by logout; rows can be dropped once `expires_at` has passed."""

    __tablename__ = "revoked_sessions"

    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class SetupToken(Base):
    """The one-time token that claims an installation with no administrator. Only its SHA-256 is kept: the
    token itself is shown once, in the API's log and a 0600 file in the state directory."""

    __tablename__ = "setup_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = _now_column()


# Sandbox uid slots: a sequence, so two servers never get one slot and a deleted server's is never reused.
UID_SLOTS = Sequence("server_uid_slots", minvalue=0, start=0)


class Server(Base):
    __tablename__ = "servers"
    __table_args__ = (UniqueConstraint("owner_id", "name", name="uq_servers_owner_name"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    slug: Mapped[str] = mapped_column(String(63), unique=True)
    source: Mapped[dict[str, Any]] = mapped_column()
    runtime: Mapped[str | None] = mapped_column(String(32))
    env: Mapped[dict[str, Any]] = mapped_column(default=dict)
    api_key_hash: Mapped[str] = mapped_column(String(64))
    api_key_prefix: Mapped[str] = mapped_column(String(16))
    webhook_secret: Mapped[str] = mapped_column(Text)  # sealed (core.crypto)
    status: Mapped[str] = mapped_column(String(16), default="created")
    active_deployment_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("deployments.id", ondelete="SET NULL", use_alter=True, name="fk_servers_active_deployment"),
        index=True,
    )
    # Sequence of the deployment whose revision the gateway serves; a deployment only takes the route
    # from an older one, so a slow earlier deployment can never replace a newer one.
    active_seq: Mapped[int] = mapped_column(Integer, default=0)
    deploy_seq: Mapped[int] = mapped_column(Integer, default=0)
    capabilities: Mapped[dict[str, Any] | None] = mapped_column()
    # Resources: cores and MiB (None: the installation's defaults), and whether it gets the host's GPUs.
    cpu_limit: Mapped[float | None] = mapped_column(Float)
    memory_limit: Mapped[int | None] = mapped_column(Integer)
    use_gpu: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    # Its sandbox uid is SANDBOX_UID_BASE + this slot (core.tenancy.slot_uid): given once, never shared.
    uid_slot: Mapped[int] = mapped_column(Integer, UID_SLOTS, unique=True)
    # Its isolation on the docker runtime (core.isolation): engine or gvisor; None: CONTAINER_ISOLATION.
    isolation: Mapped[str | None] = mapped_column(String(16))
    # Gateway options of this server (timeouts, concurrency, payload tracing): see core.gateway_options.
    gateway: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")
    # Certifications a revision's artifact must hold before it is launched: [{"tier", "requirement"}].
    required_certifications: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, default=list, server_default="[]")
    created_at: Mapped[datetime] = _now_column()
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class Deployment(Base):
    __tablename__ = "deployments"
    __table_args__ = (
        UniqueConstraint("server_id", "seq", name="uq_deployments_server_seq"),
        UniqueConstraint("server_id", "idempotency_key", name="uq_deployments_server_idem"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    server_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("servers.id", ondelete="CASCADE"), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    idempotency_key: Mapped[str] = mapped_column(String(200))
    workflow_id: Mapped[str] = mapped_column(String(200), unique=True)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    step: Mapped[str | None] = mapped_column(String(32))
    runtime: Mapped[str | None] = mapped_column(String(32))
    spec: Mapped[dict[str, Any]] = mapped_column()
    instance: Mapped[dict[str, Any] | None] = mapped_column()
    # What the health check found the revision offers (protocol version, tools, prompts, resources).
    capabilities: Mapped[dict[str, Any] | None] = mapped_column()
    upstream_url: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), index=True)
    created_at: Mapped[datetime] = _now_column()
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Git sources: the build this deployment runs, and the exact image (registry digest or local id).
    artifact_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("build_artifact_runs.id", ondelete="SET NULL"), index=True
    )
    revision: Mapped[str | None] = mapped_column(String(64))
    image_ref: Mapped[str | None] = mapped_column(Text)
    image_digest: Mapped[str | None] = mapped_column(String(80))


class BuildArtifactRun(Base):
    """One build of one source revision for a set of platforms, and where it was pushed.

    Unique by (server, build key): the build key is derived from repository, revision, subdirectory,
    platforms and registry, so a retried or repeated build of the same revision finds this row.
    """

    __tablename__ = "build_artifact_runs"
    __table_args__ = (UniqueConstraint("server_id", "build_key", name="uq_build_artifact_runs_key"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    server_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("servers.id", ondelete="CASCADE"), index=True)
    deployment_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("deployments.id", ondelete="SET NULL", use_alter=True), index=True
    )
    build_key: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="building")  # building | built | pushed | failed
    source_repo: Mapped[str] = mapped_column(Text)
    source_branch: Mapped[str | None] = mapped_column(String(255))
    source_revision: Mapped[str] = mapped_column(String(64))
    subdirectory: Mapped[str | None] = mapped_column(Text)
    recipe: Mapped[dict[str, Any]] = mapped_column(default=dict)  # kind, port, path, exposed, config schema
    local_image: Mapped[str | None] = mapped_column(Text)
    registry_image: Mapped[str | None] = mapped_column(Text)
    manifest_tag: Mapped[str | None] = mapped_column(String(128))
    manifest_digest: Mapped[str | None] = mapped_column(String(80))
    credential_outcomes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    timings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _now_column()
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class BuildArtifactPlatform(Base):
    __tablename__ = "build_artifact_platforms"
    __table_args__ = (UniqueConstraint("run_id", "platform", name="uq_build_artifact_platforms_platform"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("build_artifact_runs.id", ondelete="CASCADE"), index=True)
    platform: Mapped[str] = mapped_column(String(64))
    image_id: Mapped[str | None] = mapped_column(String(128))
    local_image: Mapped[str | None] = mapped_column(Text)
    manifest_digest: Mapped[str | None] = mapped_column(String(80))
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    build_seconds: Mapped[float | None] = mapped_column()
    push_seconds: Mapped[float | None] = mapped_column()
    pruned_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _now_column()


class DeploymentStep(Base):
    """One row per deployment step; retried attempts update the same row (idempotent by deployment + step)."""

    __tablename__ = "deployment_steps"
    __table_args__ = (UniqueConstraint("deployment_id", "step", name="uq_deployment_steps_step"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    deployment_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"), index=True)
    step: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    message: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    started_at: Mapped[datetime] = _now_column()
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ServerLog(Base):
    __tablename__ = "server_logs"
    __table_args__ = (Index("ix_server_logs_server_created", "server_id", "created_at"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    server_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("servers.id", ondelete="CASCADE"))
    deployment_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE"), index=True
    )
    level: Mapped[str] = mapped_column(String(8), default="info")
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = _now_column()


class UsageMetric(Base):
    __tablename__ = "usage_metrics"
    __table_args__ = (Index("ix_usage_metrics_server_created", "server_id", "created_at"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    server_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("servers.id", ondelete="CASCADE"))
    event: Mapped[str] = mapped_column(String(64), index=True)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = _now_column()


class ServerApiKey(Base):
    """A named gateway key of a server, beside its default key: optional expiry and tool allowlist.

    Only the SHA-256 of the key is kept. A revoked key keeps its row (invocations name it) and its name
    can be used again.
    """

    __tablename__ = "server_api_keys"
    __table_args__ = (
        Index(
            "uq_server_api_keys_live_name",
            "server_id",
            "name",
            unique=True,
            postgresql_where=text("revoked_at IS NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    server_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("servers.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    tools: Mapped[list[str] | None] = mapped_column(JSONB)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = _now_column()
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class GatewayInvocation(Base):
    """One MCP request through the gateway. Arguments and results only when the server's owner opted in,
    truncated and redacted."""

    __tablename__ = "gateway_invocations"
    __table_args__ = (Index("ix_gateway_invocations_server_id", "server_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    server_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("servers.id", ondelete="CASCADE"))
    key_name: Mapped[str | None] = mapped_column(String(100))
    http_method: Mapped[str] = mapped_column(String(8))
    method: Mapped[str | None] = mapped_column(String(100))
    tool: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(32))
    duration_ms: Mapped[float] = mapped_column(Float)
    request_bytes: Mapped[int] = mapped_column(BigInteger)
    response_bytes: Mapped[int] = mapped_column(BigInteger)
    arguments: Mapped[str | None] = mapped_column(Text)
    result: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class GatewayUsage(Base):
    """Calls per server, key, method and tool in one minute, added to by every batch the gateway writes."""

    __tablename__ = "gateway_usage"
    __table_args__ = (
        UniqueConstraint("server_id", "minute", "key_name", "method", "tool", name="uq_gateway_usage_bucket"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    server_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("servers.id", ondelete="CASCADE"), index=True)
    minute: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    key_name: Mapped[str] = mapped_column(String(100))
    method: Mapped[str] = mapped_column(String(100))
    tool: Mapped[str] = mapped_column(String(200))
    calls: Mapped[int] = mapped_column(BigInteger, default=0)
    errors: Mapped[int] = mapped_column(BigInteger, default=0)
    request_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    response_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    duration_ms: Mapped[float] = mapped_column(Float, default=0.0)


class GatewaySession(Base):
    """A session-era (2025) MCP session and the revision it was opened on: it stays there through a
    redeploy until it ends or the drain deadline passes. Only a hash of the session id is kept."""

    __tablename__ = "gateway_sessions"

    session_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    server_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("servers.id", ondelete="CASCADE"), index=True)
    deployment_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"), index=True)
    upstream_url: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = _now_column()
    last_seen_at: Mapped[datetime] = _now_column()
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ServerSecret(Base):
    """A named secret of a server, given to it as an environment variable at launch (core.secretstore).

    The value is never here in clear: `sealed` holds it sealed with SECRETS_KEY, or `vault_path` and
    `vault_version` name where in Vault KV v2 it is. `version` counts writes (1 on create)."""

    __tablename__ = "server_secrets"
    __table_args__ = (
        UniqueConstraint("server_id", "name", name="uq_server_secrets_server_name"),
        CheckConstraint(
            "(backend = 'sealed' AND sealed IS NOT NULL) OR "
            "(backend = 'vault' AND vault_path IS NOT NULL AND vault_version IS NOT NULL)",
            name="ck_server_secrets_stored",
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    server_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("servers.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    backend: Mapped[str] = mapped_column(String(16))  # sealed | vault
    sealed: Mapped[str | None] = mapped_column(Text)
    vault_path: Mapped[str | None] = mapped_column(Text)
    vault_version: Mapped[int | None] = mapped_column(Integer)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_by: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ServerSecretEvent(Base):
    """Who touched a server's secret and how: created, rotated, deleted by a user, injected at a launch.
    Values are never recorded."""

    __tablename__ = "server_secret_events"
    __table_args__ = (Index("ix_server_secret_events_server_at", "server_id", "at"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    server_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("servers.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(16))  # created | rotated | deleted | injected
    version: Mapped[int | None] = mapped_column(Integer)
    actor_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    actor: Mapped[str] = mapped_column(String(320))  # the user's email, or "worker"
    deployment_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class WebhookDelivery(Base):
    """One request to a server's webhook endpoints and what came of it. Secrets and signatures are never
    kept; the newest `WEBHOOK_DELIVERY_RETENTION` per server are."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        # A provider's delivery id is handled once: a redelivery finds the accepted row and deploys nothing.
        Index(
            "uq_webhook_deliveries_accepted",
            "server_id",
            "provider",
            "delivery_id",
            unique=True,
            postgresql_where=text("outcome = 'accepted' AND delivery_id IS NOT NULL"),
        ),
        Index("ix_webhook_deliveries_server_created", "server_id", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    server_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("servers.id", ondelete="CASCADE"))
    provider: Mapped[str] = mapped_column(String(16))  # generic | github | gitlab
    delivery_id: Mapped[str | None] = mapped_column(String(200))
    event: Mapped[str | None] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(16))  # accepted | ignored | rejected
    reason: Mapped[str] = mapped_column(Text)
    status_code: Mapped[int] = mapped_column(Integer)
    ref: Mapped[str | None] = mapped_column(String(255))
    revision: Mapped[str | None] = mapped_column(String(64))
    deployment_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("deployments.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = _now_column()


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
    created_at: Mapped[datetime] = _now_column()


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
    created_at: Mapped[datetime] = _now_column()
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
    created_at: Mapped[datetime] = _now_column()


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
    created_at: Mapped[datetime] = _now_column()


class PolicyDecision(Base):
    """Every decision of the policy engine (core.policy), with the facts it was made from."""

    __tablename__ = "runtime_policy_decisions"
    __table_args__ = (Index("ix_runtime_policy_decisions_server_created", "server_id", "created_at"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    server_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("servers.id", ondelete="CASCADE"))
    deployment_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"))
    # One decision per deployment: a retried activity finds it instead of deciding twice.
    decision_key: Mapped[str] = mapped_column(String(200), unique=True)
    subject: Mapped[str | None] = mapped_column(String(300))
    allowed: Mapped[bool] = mapped_column(Boolean)
    backend: Mapped[str] = mapped_column(String(32))
    notes: Mapped[list[str]] = mapped_column(JSONB)
    facts: Mapped[dict[str, Any]] = mapped_column()
    created_at: Mapped[datetime] = _now_column()


class GovernanceDefinition(Base):
    """A reusable list of governance steps (core.governance.Definition)."""

    __tablename__ = "governance_workflows"
    __table_args__ = (UniqueConstraint("owner_id", "name", name="uq_governance_workflows_owner_name"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    steps: Mapped[dict[str, Any]] = mapped_column()  # {"steps": [...]}
    created_at: Mapped[datetime] = _now_column()


class GovernanceRun(Base):
    """One run of a definition for an artifact and tier (GovernanceRunWorkflow, id `governance-<run>`)."""

    __tablename__ = "governance_runs"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    definition_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("governance_workflows.id", ondelete="CASCADE"))
    server_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("servers.id", ondelete="CASCADE"), index=True)
    subject: Mapped[str] = mapped_column(String(300))
    tier: Mapped[str] = mapped_column(String(32))
    requester_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    workflow_id: Mapped[str] = mapped_column(String(200), unique=True)
    steps: Mapped[dict[str, Any]] = mapped_column()  # the definition's steps as they were at the start
    # running | approved | rejected | cancelled
    status: Mapped[str] = mapped_column(String(16), default="running")
    current_step: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _now_column()
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class GovernanceAudit(Base):
    """Who did what on a governance run, when, with what comment; refused attempts included."""

    __tablename__ = "governance_audit"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("governance_runs.id", ondelete="CASCADE"), index=True)
    # Unique per event of the workflow, so a retried record writes nothing twice; NULL for API records.
    event_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    step: Mapped[str | None] = mapped_column(String(64))
    actor: Mapped[str | None] = mapped_column(String(320))  # email, or None for the platform
    # step_started | approve | reject | refused | escalated | expired | check | step_ended | run_ended
    action: Mapped[str] = mapped_column(String(32))
    accepted: Mapped[bool] = mapped_column(Boolean, default=True)
    comment: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = _now_column()


class PromotionTrack(Base):
    """An ordered list of stages a digest is promoted through (core.promotion.TrackSpec)."""

    __tablename__ = "promotion_tracks"
    __table_args__ = (UniqueConstraint("owner_id", "name", name="uq_promotion_tracks_owner_name"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    stages: Mapped[dict[str, Any]] = mapped_column()  # {"stages": [...]}
    # Stages whose auto-promotion an operator has held.
    held: Mapped[list[str]] = mapped_column(JSONB, default=list, server_default="[]")
    created_at: Mapped[datetime] = _now_column()


class Promotion(Base):
    """One digest into one stage of a track (PromotionWorkflow, id `promotion-<id>`)."""

    __tablename__ = "promotions"
    __table_args__ = (
        Index("ix_promotions_track_stage_created", "track_id", "stage", "created_at"),
        # One open promotion of a digest into a stage: asking again (or auto-promotion) finds it.
        Index(
            "uq_promotions_open",
            "track_id",
            "stage",
            "subject",
            unique=True,
            postgresql_where=text("status IN ('scheduled', 'in_progress', 'awaiting_approval', 'approved')"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    track_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("promotion_tracks.id", ondelete="CASCADE"))
    stage: Mapped[str] = mapped_column(String(32))
    stage_index: Mapped[int] = mapped_column(Integer)
    subject: Mapped[str] = mapped_column(String(300))  # the digest (or package@version) promoted
    kind: Mapped[str] = mapped_column(String(16), default="manual")  # manual | auto | rollback
    # scheduled | in_progress | awaiting_approval | approved | active | superseded | rolled_back | rejected |
    # failed | aborted (core.promotion)
    status: Mapped[str] = mapped_column(String(24), default="scheduled")
    step: Mapped[str | None] = mapped_column(String(32))  # queued | order | soak | verification | ...
    # The deployment whose artifact is promoted: each stage server deploys exactly that artifact.
    origin_deployment_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("deployments.id", ondelete="SET NULL"))
    requester_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    workflow_id: Mapped[str] = mapped_column(String(200), unique=True)
    evaluation_run_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("eval_runs.id", ondelete="SET NULL"))
    governance_run_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("governance_runs.id", ondelete="SET NULL"))
    deployments: Mapped[dict[str, Any]] = mapped_column(default=dict)  # {server id: deployment id}
    notes: Mapped[list[str]] = mapped_column(JSONB, default=list, server_default="[]")
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _now_column()
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    activated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class PromotionRejection(Base):
    """A digest an operator rejected on a track: never promoted there again (automatically or not)."""

    __tablename__ = "promotion_rejections"
    __table_args__ = (UniqueConstraint("track_id", "subject", name="uq_promotion_rejections_subject"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    track_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("promotion_tracks.id", ondelete="CASCADE"))
    subject: Mapped[str] = mapped_column(String(300))
    reason: Mapped[str] = mapped_column(Text, default="")
    rejected_by: Mapped[str | None] = mapped_column(String(320))
    created_at: Mapped[datetime] = _now_column()


class VmInstance(Base):
    """A guest of the virtual-machine runtime: one per deployment, with its latest attestation posture."""

    __tablename__ = "runtime_vm_instances"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    server_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("servers.id", ondelete="CASCADE"), index=True)
    deployment_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"), unique=True)
    domain: Mapped[str] = mapped_column(String(100))
    uri: Mapped[str] = mapped_column(String(300))
    address: Mapped[str | None] = mapped_column(String(64))
    memory_mib: Mapped[int] = mapped_column(Integer)
    vcpus: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(24), default="defined")  # the last lifecycle event seen
    # The nonce of the newest attestation asked of the guest, and what it gave.
    nonce: Mapped[str | None] = mapped_column(String(100))
    posture: Mapped[str] = mapped_column(String(16), default="pending")  # trusted|untrusted|stale|pending
    posture_reason: Mapped[str | None] = mapped_column(String(64))
    measurement: Mapped[str | None] = mapped_column(String(128))
    attested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _now_column()
    updated_at: Mapped[datetime] = _now_column()


class VmEvent(Base):
    """A lifecycle event the hypervisor reported for a guest (defined, started, stopped, crashed, ...)."""

    __tablename__ = "runtime_vm_events"
    __table_args__ = (Index("ix_runtime_vm_events_server_at", "server_id", "at"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    server_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("servers.id", ondelete="CASCADE"))
    deployment_id: Mapped[uuid.UUID | None] = mapped_column()
    domain: Mapped[str] = mapped_column(String(100))
    event: Mapped[str] = mapped_column(String(24))
    detail: Mapped[str | None] = mapped_column(String(64))
    at: Mapped[datetime] = _now_column()


class VmTrustChange(Base):
    """A change of a guest's attestation posture; each one is also sent as a notification."""

    __tablename__ = "runtime_vm_trust_history"
    __table_args__ = (Index("ix_runtime_vm_trust_history_server_at", "server_id", "at"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    server_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("servers.id", ondelete="CASCADE"))
    deployment_id: Mapped[uuid.UUID | None] = mapped_column()
    domain: Mapped[str] = mapped_column(String(100))
    previous: Mapped[str | None] = mapped_column(String(16))
    posture: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(64))
    note: Mapped[str] = mapped_column(String(120))
    measurement: Mapped[str | None] = mapped_column(String(128))
    key_id: Mapped[str | None] = mapped_column(String(100))
    at: Mapped[datetime] = _now_column()


class RemediationPlaybook(Base):
    """Ordered remediation steps (core.remediation.Playbook) of an owner, bound to servers."""

    __tablename__ = "runtime_vm_remediation_playbooks"
    __table_args__ = (UniqueConstraint("owner_id", "name", name="uq_remediation_playbooks_owner_name"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    definition: Mapped[dict[str, Any]] = mapped_column()
    created_at: Mapped[datetime] = _now_column()


class RemediationBinding(Base):
    """A playbook bound to a server: started when the server turns degraded or its guest untrusted."""

    __tablename__ = "runtime_vm_remediation_bindings"

    server_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("servers.id", ondelete="CASCADE"), primary_key=True)
    playbook_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("runtime_vm_remediation_playbooks.id", ondelete="CASCADE"), primary_key=True
    )
    created_at: Mapped[datetime] = _now_column()


class RemediationRun(Base):
    """One run of a playbook for a server. `version` grows with every change (optimistic concurrency:
    changes name the version they saw with If-Match)."""

    __tablename__ = "runtime_vm_remediation_runs"
    __table_args__ = (
        Index(
            "uq_remediation_runs_active",
            "server_id",
            "playbook_id",
            unique=True,
            postgresql_where=text("status IN ('awaiting_approval', 'running')"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    playbook_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("runtime_vm_remediation_playbooks.id", ondelete="CASCADE"), index=True
    )
    server_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("servers.id", ondelete="CASCADE"), index=True)
    trigger: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(24))
    requester_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    version: Mapped[int] = mapped_column(Integer, default=1)
    workflow_id: Mapped[str] = mapped_column(String(200), unique=True)
    definition: Mapped[dict[str, Any]] = mapped_column()
    current_step: Mapped[str | None] = mapped_column(String(64))
    results: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, default=list, server_default="[]")
    exit_code: Mapped[int | None] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(Text)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    sla_breached: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = _now_column()
    updated_at: Mapped[datetime] = _now_column()
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class RemediationArtifact(Base):
    """What a run's step left: its log lines, an HTTP answer, a vote. `key` makes a retried write a no-op."""

    __tablename__ = "runtime_vm_remediation_artifacts"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    run_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("runtime_vm_remediation_runs.id", ondelete="CASCADE"), index=True
    )
    key: Mapped[str] = mapped_column(String(200), unique=True)
    step: Mapped[str | None] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(24))
    content: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = _now_column()
