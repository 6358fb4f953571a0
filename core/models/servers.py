"""A server and what belongs to it: its deployments and their steps, its secrets (and who touched
them), and the webhook deliveries that redeploy it."""

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
from sqlalchemy.orm import Mapped, mapped_column

from core.models.base import Base, now_column

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
    created_at: Mapped[datetime] = now_column()
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
    created_at: Mapped[datetime] = now_column()
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Git sources: the build this deployment runs, and the exact image (registry digest or local id).
    artifact_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("build_artifact_runs.id", ondelete="SET NULL"), index=True
    )
    revision: Mapped[str | None] = mapped_column(String(64))
    image_ref: Mapped[str | None] = mapped_column(Text)
    image_digest: Mapped[str | None] = mapped_column(String(80))


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
    started_at: Mapped[datetime] = now_column()
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


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
    created_at: Mapped[datetime] = now_column()
