"""Session pins: a session-era (2025) MCP session stays on the revision it was opened on.

When a redeploy switches the route, open sessions keep reaching their old revision while it drains; new
sessions go to the new one. A pin holds only while its deployment is still draining (the route lists
those), so nothing is ever sent to a revision that has been retired. Pins are kept in this process (a
bounded LRU) and in `gateway_sessions`, so another gateway process, or this one after a restart, finds
them too, and so the deploy workflow can see which sessions are still in use.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.models import GatewaySession
from core.security import sha256_hex
from gateway.routes import Route


@dataclass(frozen=True, slots=True)
class Pin:
    deployment_id: uuid.UUID
    upstream_url: str


def session_hash(session_id: bytes) -> str:
    return sha256_hex(session_id)


class SessionPins:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession] | None, *, max_entries: int = 100_000) -> None:
        self.sessionmaker = sessionmaker
        self.max_entries = max_entries
        self._pins: OrderedDict[str, Pin | None] = OrderedDict()
        self._new: dict[str, tuple[uuid.UUID, Pin]] = {}
        self._seen: set[str] = set()
        self._ended: set[str] = set()
        self._streams: dict[str, int] = {}

    def _remember(self, digest: str, pin: Pin | None) -> None:
        self._pins[digest] = pin
        self._pins.move_to_end(digest)
        while len(self._pins) > self.max_entries:
            self._pins.popitem(last=False)

    def pin(self, session_id: bytes, route: Route, upstream_url: str) -> None:
        assert route.deployment_id is not None
        digest = session_hash(session_id)
        pin = Pin(route.deployment_id, upstream_url)
        self._remember(digest, pin)
        self._new[digest] = (route.server_id, pin)

    async def lookup(self, session_id: bytes, route: Route) -> Pin | None:
        """The older revision this session must stay on, or None to use the route's own upstream."""
        if not route.draining:
            return None  # nothing is draining: every session goes where the route goes (no lookup at all)
        digest = session_hash(session_id)
        if digest in self._pins:
            pin = self._pins[digest]
            self._pins.move_to_end(digest)
        else:
            pin = await self._load(digest)
            self._remember(digest, pin)
        if pin is None or pin.deployment_id == route.deployment_id or pin.deployment_id not in route.draining:
            return None
        return pin

    async def _load(self, digest: str) -> Pin | None:
        if self.sessionmaker is None:
            return None
        async with self.sessionmaker() as session:
            row = (
                await session.execute(
                    select(GatewaySession.deployment_id, GatewaySession.upstream_url).where(
                        GatewaySession.session_hash == digest, GatewaySession.ended_at.is_(None)
                    )
                )
            ).first()
        return Pin(row[0], row[1]) if row else None

    def forget(self, session_id: bytes | None) -> None:
        if session_id is not None:
            self._pins.pop(session_hash(session_id), None)

    def touch(self, session_id: bytes, *, streaming: bool | None = None) -> None:
        """Note use of a session: a request now, or a stream opening (True) or closing (False)."""
        digest = session_hash(session_id)
        self._seen.add(digest)
        if streaming is True:
            self._streams[digest] = self._streams.get(digest, 0) + 1
        elif streaming is False:
            left = self._streams.get(digest, 1) - 1
            if left <= 0:
                self._streams.pop(digest, None)
            else:
                self._streams[digest] = left

    def end(self, session_id: bytes) -> None:
        digest = session_hash(session_id)
        self._pins.pop(digest, None)
        self._ended.add(digest)

    async def flush(self, session: AsyncSession) -> None:
        """Write new pins, last-seen times (open streams count as seen) and ended sessions."""
        new, self._new = self._new, {}
        seen, self._seen = self._seen | set(self._streams), set()
        ended, self._ended = self._ended, set()
        if new:
            rows = [
                {
                    "session_hash": digest,
                    "server_id": server_id,
                    "deployment_id": pin.deployment_id,
                    "upstream_url": pin.upstream_url,
                }
                for digest, (server_id, pin) in new.items()
            ]
            await session.execute(pg_insert(GatewaySession).values(rows).on_conflict_do_nothing())
        now = datetime.now(UTC)
        seen -= ended
        if seen:
            await session.execute(
                update(GatewaySession).where(GatewaySession.session_hash.in_(sorted(seen))).values(last_seen_at=now)
            )
        if ended:
            await session.execute(
                update(GatewaySession).where(GatewaySession.session_hash.in_(sorted(ended))).values(ended_at=now)
            )
