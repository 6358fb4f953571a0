"""Two API processes on one database: a key rotated or a server deleted through one stops working on the
other at once, by Postgres NOTIFY, not when the other's route cache expires."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import create_async_engine

from core.models import Server
from core.security import generate_secret_token, hash_token
from tests.support.components import free_port
from tests.support.stack import Stack

TIME = {"type": "package", "registry": "pypi", "package": "mcp-server-time", "args": ["--local-timezone", "UTC"]}
PING = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
# Far beyond anything this test waits for: only a notification can empty the other process's cache.
ROUTE_TTL = 3600.0
BOUND = 10.0


async def eventually(condition: Callable[[], Awaitable[bool]], bound: float = BOUND) -> float:
    """Seconds until `condition` held, polled in short steps; fails past `bound`."""
    started = time.monotonic()
    while not await condition():
        if time.monotonic() - started > bound:
            raise AssertionError(f"condition still false after {bound} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


@pytest.fixture
async def api_b(stack: Stack) -> AsyncIterator[Stack]:
    other = Stack(stack.settings.model_copy(update={"bind_port": free_port()}), in_process_worker=False)
    await other.start()
    try:
        other.state.routes.ttl = ROUTE_TTL

        async def listening() -> bool:
            return other.state.routes.listening

        # Without its LISTEN connection the table falls back to a 2 s TTL, which would prove nothing.
        await eventually(listening)
        yield other
    finally:
        await other.stop()


async def gateway_status(client: httpx.AsyncClient, slug: str, key: str) -> int:
    response = await client.post(f"/mcp/{slug}", json=PING, headers={"Authorization": f"Bearer {key}"})
    return response.status_code


async def test_rotated_and_deleted_keys_stop_working_on_every_api_process(stack: Stack, api_b: Stack) -> None:
    owner, _ = await stack.user()
    slug = f"notify-{uuid.uuid4().hex[:8]}"
    async with owner, api_b.client() as gateway_b:
        created = await owner.post("/api/servers", json={"name": slug, "slug": slug, "source": TIME})
        assert created.status_code == 201, created.text
        server_id, old_key = created.json()["id"], created.json()["api_key"]

        # The key is checked before the upstream: an undeployed server answers a right key with 503 and a
        # wrong one with 401, so the key check is observable without deploying anything.
        assert await gateway_status(gateway_b, slug, old_key) == 503
        assert await gateway_status(gateway_b, slug, generate_secret_token("mcpk_")) == 401

        # B serves this route from its cache now: a change written behind its back, without a notification,
        # goes unseen.
        engine = create_async_engine(stack.settings.database_url)
        try:
            async with engine.begin() as conn:
                await conn.execute(
                    update(Server).where(Server.slug == slug).values(api_key_hash=hash_token("mcpk_elsewhere"))
                )
        finally:
            await engine.dispose()
        assert await gateway_status(gateway_b, slug, old_key) == 503

        rotated = await owner.post(f"/api/servers/{server_id}/api-key")
        assert rotated.status_code == 200, rotated.text
        new_key = rotated.json()["api_key"]

        async def old_key_refused_on_b() -> bool:
            return await gateway_status(gateway_b, slug, old_key) == 401

        took = await eventually(old_key_refused_on_b)
        assert took < BOUND < ROUTE_TTL
        assert await gateway_status(gateway_b, slug, new_key) == 503  # and B has cached the new route

        deleted = await owner.delete(f"/api/servers/{server_id}")
        assert deleted.status_code == 202, deleted.text

        async def records_gone() -> bool:
            return (await owner.get(f"/api/servers/{server_id}")).status_code == 404

        await eventually(records_gone, bound=120)  # the DeleteServerWorkflow runs on the worker of A

        async def gone_on_b() -> bool:
            return await gateway_status(gateway_b, slug, new_key) == 404

        assert await eventually(gone_on_b) < BOUND < ROUTE_TTL
