"""The gateway's route table: slug -> serving upstream, the server's keys and its gateway options.

Routes are cached per process in a bounded LRU (unknown slugs included, so a spray of random slugs can
neither grow memory nor reach the database more than once each per TTL) and dropped when Postgres
NOTIFYs a change, with a short TTL as a safety net while the listener is down.
"""

from __future__ import annotations

import re
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.db import ROUTES_CHANNEL
from core.gateway_options import GatewayOptions
from core.listen import PgListener
from core.models import Deployment, GatewaySession, Server, ServerApiKey
from records.deployments import Status as DeploymentStatus

SLUG = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
DEFAULT_KEY_NAME = "default"


@dataclass(frozen=True, slots=True)
class KeyGrant:
    """What one API key of a server may do."""

    name: str
    id: uuid.UUID | None = None  # None: the server's default key
    tools: frozenset[str] | None = None  # None: every tool
    expires_at: float | None = None  # epoch seconds
    key_hash: str = ""  # SHA-256 (hex) of the key, what a presented key's hash is compared with


@dataclass(frozen=True, slots=True)
class Route:
    server_id: uuid.UUID
    slug: str
    status: str
    upstream_url: str | None
    deployment_id: uuid.UUID | None
    keys: dict[str, KeyGrant] = field(default_factory=dict)  # by SHA-256 of the key
    # Earlier deployments whose session-era sessions may still reach them (see gateway.sessions).
    draining: frozenset[uuid.UUID] = frozenset()
    options: GatewayOptions = field(default_factory=GatewayOptions)


class Miss:
    """What `RouteTable.cached` returns when the cache cannot answer."""


MISS = Miss()


def _epoch(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


class RouteTable:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        database_url: str,
        *,
        ttl: float = 30.0,
        max_entries: int = 10_000,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.database_url = database_url
        self.ttl = ttl
        self.max_entries = max_entries
        self._cache: OrderedDict[str, tuple[float, Route | None]] = OrderedDict()
        # Bumped by every invalidation. A lookup that read the row before a change was notified must not
        # cache what it read after the notification has already emptied the slot.
        self._generation = 0
        self.hits = 0
        self.misses = 0
        self._listener = PgListener(
            database_url, ROUTES_CHANNEL, lambda slug: self.invalidate(slug or None), self.invalidate
        )

    @property
    def listening(self) -> bool:
        """Whether changes made by other processes reach this table now (else it falls back to a short TTL)."""
        return self._listener.connected

    def __len__(self) -> int:
        return len(self._cache)

    def cached(self, slug: str) -> Route | None | Miss:
        """The route of `slug` if the cache holds it fresh, else MISS (then `lookup` asks the database); no
        coroutine on the request path for a hit."""
        cached = self._cache.get(slug)
        if cached is not None and time.monotonic() - cached[0] < (self.ttl if self._listener.connected else 2.0):
            self.hits += 1
            self._cache.move_to_end(slug)
            return cached[1]
        return MISS

    async def lookup(self, slug: str) -> Route | None:
        cached = self.cached(slug)
        if not isinstance(cached, Miss):
            return cached
        self.misses += 1
        if not SLUG.fullmatch(slug):
            return None  # no server can have this slug: not worth a query, nor a cache slot
        generation = self._generation
        route = await self._load(slug)
        if generation == self._generation:
            self._cache[slug] = (time.monotonic(), route)
            self._cache.move_to_end(slug)
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
        return route

    async def _load(self, slug: str) -> Route | None:
        async with self.sessionmaker() as session:
            row = (
                await session.execute(
                    select(
                        Server.id,
                        Server.slug,
                        Server.api_key_hash,
                        Server.status,
                        Server.gateway,
                        Deployment.upstream_url,
                        Server.active_deployment_id,
                    )
                    .outerjoin(Deployment, Deployment.id == Server.active_deployment_id)
                    .where(Server.slug == slug)
                )
            ).first()
            if row is None:
                return None
            named = (
                await session.execute(
                    select(
                        ServerApiKey.id,
                        ServerApiKey.name,
                        ServerApiKey.key_hash,
                        ServerApiKey.tools,
                        ServerApiKey.expires_at,
                    ).where(ServerApiKey.server_id == row[0], ServerApiKey.revoked_at.is_(None))
                )
            ).all()
            draining = (
                (
                    await session.scalars(
                        select(GatewaySession.deployment_id)
                        .join(Deployment, Deployment.id == GatewaySession.deployment_id)
                        .where(
                            GatewaySession.server_id == row[0],
                            GatewaySession.ended_at.is_(None),
                            GatewaySession.deployment_id != row[6],
                            # An earlier revision serves only until it is retired (it turns "stopped" then).
                            Deployment.status == DeploymentStatus.RUNNING,
                            Deployment.upstream_url.is_not(None),
                        )
                        .distinct()
                    )
                ).all()
                if row[6] is not None
                else []
            )
        keys = {row[2]: KeyGrant(name=DEFAULT_KEY_NAME, key_hash=row[2])}
        for key_id, name, key_hash, tools, expires_at in named:
            keys[key_hash] = KeyGrant(
                name=name,
                id=key_id,
                tools=frozenset(tools) if tools is not None else None,
                expires_at=_epoch(expires_at),
                key_hash=key_hash,
            )
        return Route(
            server_id=row[0],
            slug=row[1],
            status=row[3],
            options=GatewayOptions.model_validate(row[4] or {}),
            upstream_url=row[5],
            deployment_id=row[6] if row[5] else None,
            keys=keys,
            draining=frozenset(draining),
        )

    def invalidate(self, slug: str | None = None) -> None:
        self._generation += 1
        if slug is None:
            self._cache.clear()
        else:
            self._cache.pop(slug, None)

    async def start(self) -> None:
        await self._listener.start()

    async def stop(self) -> None:
        await self._listener.stop()
