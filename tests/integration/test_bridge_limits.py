"""The stdio bridge's limits with a real stdio MCP server behind it: sessions are capped, and a session
whose client vanished without a DELETE is ended after the idle timeout, its child process stopped."""

from __future__ import annotations

import asyncio
import socket
import sys
import time

import httpx
import psutil

from runtimes.bridge import StdioBridge
from tests.support.everything import SOURCE

INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}
HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


def children() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if str(SOURCE) in " ".join(p.cmdline())]


async def test_sessions_are_capped_and_idle_ones_reaped() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    bridge = StdioBridge(sys.executable, [str(SOURCE)], "/mcp", max_sessions=2, idle_timeout=1.5)
    task = asyncio.create_task(bridge.serve("127.0.0.1", port, sockets=[sock]))
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            deadline = time.monotonic() + 20
            while bridge._server is None or not bridge._server.started:
                assert time.monotonic() < deadline, "bridge did not start"
                await asyncio.sleep(0.05)
            ids = []
            for _ in range(2):
                opened = await http.post(url, json=INIT, headers=HEADERS)
                assert opened.status_code == 200, opened.text
                ids.append(opened.headers["mcp-session-id"])
            assert len(children()) == 2
            refused = await http.post(url, json=INIT, headers=HEADERS)
            assert refused.status_code == 503 and "2 open sessions" in refused.json()["error"]["message"]
            # One client keeps using its session; the other vanished (no DELETE).
            ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
            live = {**HEADERS, "mcp-session-id": ids[0], "mcp-protocol-version": "2025-11-25"}
            deadline = time.monotonic() + 30
            while ids[1] in bridge.sessions:
                assert time.monotonic() < deadline, "the idle session was never ended"
                response = await http.post(url, json=ping, headers=live)
                assert response.status_code == 200, response.text
                await asyncio.sleep(0.3)
            assert ids[0] in bridge.sessions and bridge.reaped >= 1

            async def one_child() -> bool:
                return len(children()) == 1

            deadline = time.monotonic() + 15
            while not await one_child():
                assert time.monotonic() < deadline, "the reaped session's child is still running"
                await asyncio.sleep(0.1)
            gone = await http.post(url, json=ping, headers={**live, "mcp-session-id": ids[1]})
            assert gone.status_code == 404  # its client must start a new session
            again = await http.post(url, json=INIT, headers=HEADERS)
            assert again.status_code == 200  # the freed place is taken again
    finally:
        assert bridge._server is not None
        bridge._server.should_exit = True
        await asyncio.wait_for(task, 30)
    deadline = time.monotonic() + 15
    while children():
        assert time.monotonic() < deadline, "children left after the bridge stopped"
        await asyncio.sleep(0.1)
