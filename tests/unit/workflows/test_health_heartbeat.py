"""The health check heartbeats while a probe waits on a server that accepts connections and never
answers: a lost worker and a slow server must not look alike to Temporal's heartbeat timeout."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities import common
from activities.health import HealthActivities, HealthInput
from activities.records import InstanceRecord
from runtimes.base import InstanceStatus


class AlwaysRunning:
    """Says the instance runs; the probe itself goes to the real socket below."""

    async def status(self, instance: Any) -> InstanceStatus:
        return InstanceStatus(state="running")

    async def logs(self, instance: Any, tail: int = 200) -> list[str]:
        return []


async def test_heartbeats_arrive_while_one_probe_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(common, "HEARTBEAT_EVERY", 0.2)
    held: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # accept, read nothing, answer nothing

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = await asyncio.start_server(hold, sock=sock)
    port = sock.getsockname()[1]
    details: list[str] = []
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *args: details.append(str(args[0]) if args else "")
    instance = InstanceRecord(
        runtime="process", ref="r", deployment_id="d", server_id="s", url=f"http://127.0.0.1:{port}/mcp"
    )
    activities = HealthActivities({"process": AlwaysRunning()})  # type: ignore[dict-item]
    try:
        with pytest.raises(ApplicationError, match="no MCP answer"):
            # One probe of about 1.5 s, the whole deadline: without heartbeats during it, none would come.
            await env.run(activities.check_health, HealthInput(instance=instance, timeout_seconds=1.5))
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
    during = [d for d in details if "waiting for an MCP answer" in d]
    assert len(during) >= 2, details
