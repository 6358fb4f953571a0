"""`mcphost gateway` as operators run it: its own process, beside the API, on the same database.

A server made through the API answers through the separate gateway; its /metrics counts the call;
a key revoked through the API is refused there at once (Postgres NOTIFY); SIGTERM lets a call in
flight finish and the process exits cleanly.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.integration.gateway.test_gateway import Hosted, eventually, host, rpc_result, text_of
from tests.support.components import terminate
from tests.support.everything import DirectServer
from tests.support.stack import Stack, settings_env


@pytest.fixture
async def separate_gateway(stack: Stack) -> AsyncIterator[tuple[subprocess.Popen[bytes], str]]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "mcphost"), "gateway", "--fd", str(sock.fileno())],
        env=settings_env(stack.settings),
        pass_fds=[sock.fileno()],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    sock.close()
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(timeout=5) as probe:
            deadline = time.monotonic() + 60
            while True:
                try:
                    health = await probe.get(f"{base}/healthz")
                    if health.status_code == 200 and health.json()["routes_listening"]:
                        break
                except httpx.TransportError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"mcphost gateway did not start: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
                await asyncio.sleep(0.1)
        yield proc, base
    finally:
        terminate(proc, timeout=30)
        if proc.stderr is not None:
            proc.stderr.close()


async def test_the_separate_gateway_serves_meters_follows_revocations_and_drains(
    stack: Stack, separate_gateway: tuple[subprocess.Popen[bytes], str]
) -> None:
    proc, base = separate_gateway
    upstream = DirectServer().start()
    try:
        owner, _ = await stack.user()
        async with owner, httpx.AsyncClient(timeout=60) as http:
            hosted: Hosted = await host(stack, owner, upstream, base)
            assert text_of(rpc_result(await hosted.call(http, "echo", {"text": "apart"}))) == "echo: apart"
            metrics = (await http.get(f"{base}/metrics")).text
            assert 'mcphost_gateway_requests_total{method="tools/call",outcome="ok"}' in metrics

            made = await owner.post(f"/api/servers/{hosted.id}/keys", json={"name": "short-lived"})
            assert made.status_code == 201, made.text
            key = made.json()["api_key"]
            assert (await hosted.call(http, "echo", {"text": "k"}, key=key)).status_code == 200
            revoked = await owner.delete(f"/api/servers/{hosted.id}/keys/{made.json()['id']}")
            assert revoked.status_code == 204, revoked.text

            async def refused() -> bool:  # the revocation reaches the other process by NOTIFY
                return (await hosted.call(http, "echo", {"text": "k"}, key=key)).status_code == 401

            await eventually(refused, bound=5)

            # SIGTERM while a call is in flight: the call completes, then the process ends by itself.
            call = asyncio.create_task(hosted.call(http, "sleep", {"seconds": 1.5}))
            await asyncio.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            assert text_of(rpc_result(await call)) == "slept 1.5 s"
            code = await asyncio.to_thread(proc.wait, 30)
            assert code == 0, proc.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
    finally:
        upstream.stop()
