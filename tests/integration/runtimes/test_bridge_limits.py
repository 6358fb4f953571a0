"""The stdio bridge's limits with a real stdio MCP server behind it: sessions are capped, and a session
whose client vanished without a DELETE is ended after the idle timeout, its child process stopped."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path

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
ROOT = Path(__file__).resolve().parents[3]
HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


def _runs_source(process: psutil.Process) -> bool:
    try:
        return str(SOURCE) in " ".join(process.cmdline())
    except psutil.Error:  # gone, or a zombie not reaped yet: not a running server either way
        return False


def children() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if _runs_source(p)]


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


def _bridge_program(port: int, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "runtimes.bridge", "--port", str(port), *extra, "--", sys.executable, str(SOURCE)],
        cwd=ROOT,
        stderr=subprocess.DEVNULL,
    )


def _server_children(bridge: subprocess.Popen[bytes]) -> list[int]:
    try:
        found = psutil.Process(bridge.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return sorted(p.pid for p in found if _runs_source(p))


async def _wait(condition, what: str, timeout: float = 20) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


async def test_the_first_session_adopts_the_child_started_with_the_bridge() -> None:
    """Run as a program, the bridge starts the first session's server before its own imports, and that
    session uses it (no second child); a server nobody asks for is stopped after the idle timeout, and none
    outlives the bridge. With --no-prestart nothing runs before a session opens."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/mcp"
    bridge = _bridge_program(port)
    try:
        await _wait(lambda: len(_server_children(bridge)) == 1, "no server was started with the bridge")
        spare = _server_children(bridge)
        async with httpx.AsyncClient(timeout=30) as http:
            # Listening at once: no connection is refused while the bridge is still importing.
            opened = await http.post(url, json=INIT, headers=HEADERS)
            assert opened.status_code == 200, opened.text
            assert "serverInfo" in opened.text, opened.text
            assert _server_children(bridge) == spare  # the session runs on the prestarted child
            session = {
                **HEADERS,
                "mcp-session-id": opened.headers["mcp-session-id"],
                "mcp-protocol-version": "2025-11-25",
            }
            call = {
                "jsonrpc": "2.0",
                "id": 2,
                "method": "tools/call",
                "params": {"name": "echo", "arguments": {"text": "hi"}},
            }
            answered = await http.post(url, json=call, headers=session)
            assert answered.status_code == 200 and "echo: hi" in answered.text, answered.text
            assert (await http.delete(url, headers=session)).status_code in (200, 204)
            await _wait(lambda: not _server_children(bridge), "the session's child outlived its session")
            # The next session starts its own child.
            again = await http.post(url, json=INIT, headers=HEADERS)
            assert again.status_code == 200
            assert len(_server_children(bridge)) == 1 and _server_children(bridge) != spare
        running = _server_children(bridge)
    finally:
        bridge.terminate()
        bridge.wait(30)
    await _wait(lambda: not any(psutil.pid_exists(pid) for pid in running), "a server outlived the bridge")

    # Nobody comes: the prestarted server goes the way of an idle session; and without prestart nothing runs.
    for extra, expect_spare in ((["--idle-timeout", "1"], True), (["--no-prestart"], False)):
        bridge = _bridge_program(port, *extra)
        try:
            if expect_spare:
                await _wait(lambda b=bridge: len(_server_children(b)) == 1, "no server was started with the bridge")
                await _wait(lambda b=bridge: not _server_children(b), "the unused prestarted server was never stopped")
            else:
                async with httpx.AsyncClient(timeout=30) as http:
                    await _wait_listening(http, url)
                assert _server_children(bridge) == []
        finally:
            bridge.terminate()
            bridge.wait(30)


async def _wait_listening(http: httpx.AsyncClient, url: str) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            await http.get(url)
            return
        except httpx.TransportError:
            assert time.monotonic() < deadline, "the bridge never listened"
            await asyncio.sleep(0.05)
