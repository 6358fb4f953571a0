"""Redeploys under traffic, through the real DeployWorkflow: a session-era (2025) client keeps its
revision while it drains, a stateless (2026) client moves to the new one, and neither sees a failed call.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.integration.gateway.test_gateway import modern_call, rpc_result, text_of
from tests.support import everything
from tests.support.stack import Stack, wait_deployment


@dataclass
class Loop:
    """Calls the `revision` tool again and again; remembers every answer and every failure."""

    answers: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    sessions: int = 0


async def legacy_loop(url: str, key: str, loop: Loop, *, reconnect: bool = False) -> None:
    """One handshake-era session (initialize, session id) for as long as the loop runs."""
    while not loop.stop.is_set():
        try:
            async with httpx2.AsyncClient(headers={"authorization": f"Bearer {key}"}, timeout=30) as h:
                async with Client(streamable_http_client(url, http_client=h), mode="legacy", cache=None) as client:
                    loop.sessions += 1
                    while not loop.stop.is_set():
                        result = await client.call_tool("revision", {})
                        loop.answers.append("".join(getattr(c, "text", "") for c in result.content))
                        await asyncio.sleep(0.05)
        except Exception as exc:  # noqa: BLE001 - a failed call is what this loop is watching for
            loop.failures.append(repr(exc))
            if not reconnect:
                return


async def modern_loop(url: str, key: str, loop: Loop) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        while not loop.stop.is_set():
            headers, body = modern_call("revision", {})
            try:
                response = await http.post(url, json=body, headers={**headers, "authorization": f"Bearer {key}"})
                loop.answers.append(text_of(rpc_result(response)))
            except Exception as exc:  # noqa: BLE001
                loop.failures.append(repr(exc))
            await asyncio.sleep(0.05)


async def redeploy(owner: httpx.AsyncClient, server_id: str, revision: str) -> str:
    patched = await owner.patch(f"/api/servers/{server_id}", json={"env": {"TEST_REVISION": revision}})
    assert patched.status_code == 200, patched.text
    started = await owner.post(f"/api/servers/{server_id}/deployments")
    assert started.status_code == 202, started.text
    return str(started.json()["deployment_id"])


async def step_status(owner: httpx.AsyncClient, deployment_id: str, step: str) -> dict[str, Any] | None:
    detail = (await owner.get(f"/api/deployments/{deployment_id}")).json()
    return next((s for s in detail.get("steps", []) if s["step"] == step), None)


async def until(condition: Any, bound: float = 90.0) -> None:
    deadline = time.monotonic() + bound
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition still false after {bound} s")
        await asyncio.sleep(0.1)


@pytest.fixture
async def served(stack: Stack) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, Any], str]]:
    everything.build_wheel()
    owner, _ = await stack.user()
    async with owner:
        created = await owner.post(
            "/api/servers",
            json={
                "name": f"drained-{uuid.uuid4().hex[:8]}",
                "source": everything.source(),
                "env": {"TEST_REVISION": "1"},
            },
        )
        assert created.status_code == 201, created.text
        server = created.json()
        first = await owner.post(f"/api/servers/{server['id']}/deployments")
        done = await wait_deployment(owner, first.json()["deployment_id"])
        assert done["status"] == "running", done
        yield owner, server, f"{stack.base_url}/mcp/{server['slug']}"
        await owner.delete(f"/api/servers/{server['id']}")


async def test_a_redeploy_under_traffic_fails_no_call_in_either_era(
    served: tuple[httpx.AsyncClient, dict[str, Any], str],
) -> None:
    owner, server, url = served
    legacy, modern = Loop(), Loop()
    tasks = [
        asyncio.create_task(legacy_loop(url, server["api_key"], legacy)),
        asyncio.create_task(modern_loop(url, server["api_key"], modern)),
    ]
    try:

        async def warmed() -> bool:
            return len(legacy.answers) >= 5 and len(modern.answers) >= 5

        await until(warmed)
        deployment_id = await redeploy(owner, server["id"], "2")

        async def draining() -> bool:
            step = await step_status(owner, deployment_id, "drain_sessions")
            return step is not None and step["status"] == "started"

        await until(draining)
        # While the old revision drains, the open session stays on it and stateless calls reach the new one.
        legacy_mark, modern_mark = len(legacy.answers), len(modern.answers)

        async def both_moved_on() -> bool:
            return len(legacy.answers) >= legacy_mark + 10 and len(modern.answers) >= modern_mark + 10

        await until(both_moved_on)
        assert set(legacy.answers) == {"1"}, legacy.answers[-20:]
        assert modern.answers[-1] == "2" and set(modern.answers[modern_mark:]) == {"2"}
        # The session ends (the client's DELETE): the drain is over, the old revision is retired.
        legacy.stop.set()
        await tasks[0]
        done = await wait_deployment(owner, deployment_id)
        assert done["status"] == "running", done
        drained = await step_status(owner, deployment_id, "drain_sessions")
        assert drained is not None and "every session on the previous revision has ended" in drained["message"]
        after = len(modern.answers)

        async def more_modern() -> bool:
            return len(modern.answers) >= after + 10

        await until(more_modern)
    finally:
        legacy.stop.set()
        modern.stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert legacy.failures == [] and modern.failures == [], (legacy.failures, modern.failures)
    assert set(modern.answers[after:]) == {"2"}
    # The worker's activity metrics (the suite's worker runs in this process, so its registry is the one
    # the API's /metrics serves; `mcphost worker` serves its own at WORKER_METRICS_PORT).
    metrics = (await owner.get("/metrics")).text
    assert 'mcphost_worker_activities_total{activity="end_drain",outcome="completed"}' in metrics
    assert 'mcphost_worker_activity_duration_seconds_count{activity="activate"}' in metrics


async def test_past_the_drain_deadline_a_session_starts_anew_on_the_new_revision(
    stack: Stack, served: tuple[httpx.AsyncClient, dict[str, Any], str]
) -> None:
    owner, server, url = served
    legacy = Loop()
    task = asyncio.create_task(legacy_loop(url, server["api_key"], legacy, reconnect=True))
    try:

        async def warmed() -> bool:
            return len(legacy.answers) >= 5

        await until(warmed)
        deployment_id = await redeploy(owner, server["id"], "3")
        done = await wait_deployment(owner, deployment_id)
        assert done["status"] == "running", done
        drained = await step_status(owner, deployment_id, "drain_sessions")
        assert drained is not None and "drain deadline passed" in drained["message"], drained
        mark = len(legacy.answers)

        async def on_three() -> bool:
            return len(legacy.answers) > mark + 5 and legacy.answers[-1] == "3"

        await until(on_three)
    finally:
        legacy.stop.set()
        await task
    # The old revision went away under the session: its next call failed (404), and the client opened
    # a new session on the serving revision.
    assert legacy.sessions >= 2 and len(legacy.failures) == legacy.sessions - 1, legacy.failures
    assert "1" not in legacy.answers[mark:] and "2" not in legacy.answers[mark:]
