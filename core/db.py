"""One async engine per process, made by the process entry point and disposed at shutdown."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

# Payload: the slug of a server whose route (upstream, API key, existence) changed; API processes drop
# their cached route for it.
ROUTES_CHANNEL = "mcphost_routes"
# Payload: a deployment id whose record changed (steps, status); SSE streams wake up on it.
DEPLOYMENTS_CHANNEL = "mcphost_deployments"
# Server status changes and new log/metric rows, sent by triggers (migration 0006): JSON payloads.
SERVERS_CHANNEL = "mcphost_servers"


def make_engine(database_url: str, *, pool_size: int = 10) -> AsyncEngine:
    return create_async_engine(database_url, pool_size=pool_size, max_overflow=10, pool_pre_ping=True)


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def asyncpg_dsn(database_url: str) -> str:
    """The same URL in the form asyncpg.connect() accepts (for LISTEN connections)."""
    return database_url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def notify(session: AsyncSession, channel: str, payload: str | dict[str, Any]) -> None:
    """Publish `payload` (a dict is sent as JSON) on `channel`. Postgres delivers it when the transaction
    commits, and not at all on rollback, so no listener acts on a change before it is written or on one
    that never happened. Every NOTIFY the platform sends goes through here."""
    text_payload = payload if isinstance(payload, str) else json.dumps(payload)
    await session.execute(text("SELECT pg_notify(:channel, :payload)"), {"channel": channel, "payload": text_payload})


async def notify_route_changed(session: AsyncSession, slug: str) -> None:
    """Tell every API process to drop its cached route for `slug`."""
    await notify(session, ROUTES_CHANNEL, slug)
