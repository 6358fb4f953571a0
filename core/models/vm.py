"""The virtual-machine runtime's guests: one per deployment, their lifecycle events and their
attestation posture history."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
)
from sqlalchemy.orm import Mapped, mapped_column

from core.models.base import Base, now_column


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
    created_at: Mapped[datetime] = now_column()
    updated_at: Mapped[datetime] = now_column()


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
    at: Mapped[datetime] = now_column()


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
    at: Mapped[datetime] = now_column()
