"""Remediation: playbooks, their bindings to servers, their runs and what each step left."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from core.models.base import Base, now_column


class RemediationPlaybook(Base):
    """Ordered remediation steps (core.remediation.Playbook) of an owner, bound to servers."""

    __tablename__ = "runtime_vm_remediation_playbooks"
    __table_args__ = (UniqueConstraint("owner_id", "name", name="uq_remediation_playbooks_owner_name"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    definition: Mapped[dict[str, Any]] = mapped_column()
    created_at: Mapped[datetime] = now_column()


class RemediationBinding(Base):
    """A playbook bound to a server: started when the server turns degraded or its guest untrusted."""

    __tablename__ = "runtime_vm_remediation_bindings"

    server_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("servers.id", ondelete="CASCADE"), primary_key=True)
    playbook_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("runtime_vm_remediation_playbooks.id", ondelete="CASCADE"), primary_key=True
    )
    created_at: Mapped[datetime] = now_column()


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
    created_at: Mapped[datetime] = now_column()
    updated_at: Mapped[datetime] = now_column()
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
    created_at: Mapped[datetime] = now_column()
