"""The MCP gateway's records: a server's named keys, the calls made through it, usage per minute,
and the sessions it keeps on a revision through a redeploy."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    BigInteger,
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
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from core.models.base import Base, now_column


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
    created_at: Mapped[datetime] = now_column()
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
    created_at: Mapped[datetime] = now_column()
    last_seen_at: Mapped[datetime] = now_column()
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
