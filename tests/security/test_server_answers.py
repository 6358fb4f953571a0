"""What a tenant's server answers the platform's own MCP client (the health check, the supervisor's probe,
evaluation calls) is hostile input: the client talks only to the address recorded for the instance.

A hostile server answers every request with a redirect to another tenant's server on the worker's
loopback (a real MCP server that counts what reaches it). The redirect fails the health check, the
supervisor's probe and the evaluation call with that reason, and the other server receives nothing. The
SDK alone does not follow a redirect to another origin either (it fails with a hint to use that URL), but
it does follow one within the origin, whatever its HTTP client says: the control takes the transport's
checks out and shows that attack landing, the health check taking the other server's tools and the
evaluation scoring the other server's answer as the redirecting server's.

Also: a server that trickles its answer, or streams events without end, fails the check within its time
limit; an answer of 32 MiB is cut at 16 MiB (the control reads all of it); a compressed answer is refused
(it would be counted before it expands); proxy settings in the environment do not divert the client; a
request for any URL but the recorded one is never sent.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx2
import pytest
import uvicorn
from mcp import Client
from mcp.server.mcpserver import MCPServer
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.evaluation import call_and_score
from activities.health import HealthActivities, HealthInput, probe_mcp
from activities.mcpclient import MAX_ANSWER_BYTES, PlatformTransport, RefusedAnswer
from activities.records import InstanceRecord
from activities.supervision import ProbeInput, SupervisionActivities
from runtimes.base import InstanceStatus

pytestmark = pytest.mark.timeout(120)

MiB = 1024 * 1024
SECRET = "the victim's secret"


class Victim:
    """Another tenant's MCP server (the official SDK, streamable HTTP) at /mcp, counting the HTTP requests
    that reach it. Its origin is shared with a hostile tenant at /tenant-b/mcp that answers every request
    with a redirect to /mcp, as two servers behind one address would be."""

    def __init__(self) -> None:
        app = MCPServer("victim")

        @app.tool()
        def secret() -> str:
            """What only this server's own callers should read."""
            return SECRET

        self.inner = app.streamable_http_app()
        self.requests = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/tenant-b/mcp":
            await send({"type": "http.response.start", "status": 307, "headers": [(b"location", b"/mcp")]})
            await send({"type": "http.response.body", "body": b""})
            return
        if scope["type"] == "http":
            self.requests += 1
        await self.inner(scope, receive, send)


@dataclass
class Served:
    app: Victim
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    @property
    def shared_origin_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/tenant-b/mcp"


@pytest.fixture(scope="module")
def victim() -> Iterator[Served]:
    """Served by uvicorn on a thread of its own, so it answers whatever the test's event loop does."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    app = Victim()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the victim server did not start"
        time.sleep(0.02)
    try:
        yield Served(app=app, port=sock.getsockname()[1])
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@dataclass
class Raw:
    """A bare HTTP/1.1 server on loopback: what it received, and what its answers managed to send."""

    port: int = 0
    requests: list[str] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    sent: int = 0
    finished: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"


Answer = Callable[[asyncio.StreamWriter, Raw], Awaitable[bool]]


@asynccontextmanager
async def raw_server(answer: Answer) -> AsyncIterator[Raw]:
    """Each request (headers and a Content-Length body) is answered by `answer`, which says whether the
    connection stays open for the next one."""
    raw = Raw()
    handlers: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                headers = {
                    k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:] if line)
                }
                await reader.readexactly(int(headers.get("content-length", "0")))
                raw.requests.append(head[0])
                raw.headers.append(headers)
                if not await answer(writer, raw):
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            # Ends cancelled by the test too: asyncio's stream callback would report a cancelled handler.
            pass
        finally:
            writer.close()
            handlers.discard(task)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    raw.port = server.sockets[0].getsockname()[1]
    try:
        yield raw
    finally:
        server.close()
        for task in list(handlers):
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


def redirect_to(location: str, status: int = 307) -> Answer:
    async def answer(writer: asyncio.StreamWriter, raw: Raw) -> bool:
        writer.write(f"HTTP/1.1 {status} Redirect\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n".encode())
        await writer.drain()
        return True

    return answer


def instance(url: str) -> InstanceRecord:
    return InstanceRecord(runtime="process", ref="r", deployment_id="d", server_id="s", url=url)


class AlwaysRunning:
    """The runtime says the instance runs; everything else goes to the real socket."""

    async def status(self, instance: Any) -> InstanceStatus:
        return InstanceStatus(state="running")

    async def logs(self, instance: Any, tail: int = 200) -> list[str]:
        return []


class Runtime:
    def executor(self, name: str) -> AlwaysRunning:
        return AlwaysRunning()


class StillServing(SupervisionActivities):
    """The supervisor's probe, with the database's answer "this revision still serves" given."""

    def __init__(self) -> None:
        super().__init__(sessionmaker=None, runtime=Runtime())  # type: ignore[arg-type]

    async def _serves(self, deployment_id: str) -> bool:
        return True


SECRET_TEST = {
    "tool": "secret",
    "arguments": {},
    "timeout_seconds": 5,
    "expectation": {"kind": "contains", "value": SECRET},
}


def unguarded(monkeypatch: pytest.MonkeyPatch) -> None:
    """The platform's client with its transport's checks taken out: what the SDK does on its own."""

    async def send(self: PlatformTransport, request: httpx2.Request) -> httpx2.Response:
        return await self.inner.handle_async_request(request)

    monkeypatch.setattr(PlatformTransport, "handle_async_request", send)


async def test_the_victim_answers_and_counts(victim: Served) -> None:
    """The yardstick: the platform's client reaches the victim directly, and each request is counted."""
    before = victim.app.requests
    result = await probe_mcp(victim.url, timeout=10)
    assert result.server_name == "victim" and [t["name"] for t in result.tools] == ["secret"]
    assert victim.app.requests > before


async def test_a_redirect_fails_the_health_probe_and_reaches_nobody(victim: Served) -> None:
    before = victim.app.requests
    async with raw_server(redirect_to(victim.url)) as hostile:
        with pytest.raises(RefusedAnswer) as refused:
            await probe_mcp(hostile.url, timeout=10)
    assert str(refused.value) == (
        f"the server answered 307 (redirect to {victim.url}); the platform does not follow redirects"
    )
    assert hostile.requests == ["POST /mcp HTTP/1.1"], "the conversation must end at the first redirect"
    assert victim.app.requests == before


@pytest.mark.parametrize("status", [301, 302, 303, 308])
async def test_every_redirect_status_is_refused(victim: Served, status: int) -> None:
    before = victim.app.requests
    async with raw_server(redirect_to(victim.url, status)) as hostile:
        with pytest.raises(RefusedAnswer, match=f"answered {status} .*does not follow redirects"):
            await probe_mcp(hostile.url, timeout=10)
    assert victim.app.requests == before


async def test_the_health_check_fails_at_once_with_the_reason(victim: Served) -> None:
    """The check does not wait out its deadline: a redirect is the server's doing, not its start-up."""
    before = victim.app.requests
    activities = HealthActivities({"process": AlwaysRunning()})  # type: ignore[dict-item]
    async with raw_server(redirect_to(victim.url)) as hostile:
        started = time.monotonic()
        with pytest.raises(ApplicationError) as failed:
            await ActivityEnvironment().run(
                activities.check_health, HealthInput(instance=instance(hostile.url), timeout_seconds=60)
            )
    assert time.monotonic() - started < 10
    assert failed.value.non_retryable and failed.value.type == "unhealthy"
    assert f"answered 307 (redirect to {victim.url}); the platform does not follow redirects" in str(failed.value)
    assert victim.app.requests == before


async def test_a_redirect_makes_the_supervisor_probe_unhealthy(victim: Served) -> None:
    before = victim.app.requests
    async with raw_server(redirect_to(victim.url)) as hostile:
        result = await ActivityEnvironment().run(
            StillServing().supervise_probe, ProbeInput(instance=instance(hostile.url), timeout_seconds=10)
        )
    assert result.state == "unhealthy"
    assert f"answered 307 (redirect to {victim.url}); the platform does not follow redirects" in result.detail
    assert victim.app.requests == before


async def test_a_redirect_fails_the_evaluation_call(victim: Served) -> None:
    before = victim.app.requests
    async with raw_server(redirect_to(victim.url)) as hostile:
        score, answer, latency = await call_and_score(hostile.url, SECRET_TEST)
    assert not score.passed and answer is None and latency is None
    assert score.detail == (
        f"the call failed: the server answered 307 (redirect to {victim.url}); the platform does not follow redirects"
    )
    assert victim.app.requests == before


async def test_a_redirect_within_the_origin_is_refused_too(victim: Served) -> None:
    """The SDK follows this one on its own, whatever the HTTP client's setting; the platform does not."""
    before = victim.app.requests
    with pytest.raises(RefusedAnswer) as refused:
        await probe_mcp(victim.shared_origin_url, timeout=10)
    assert str(refused.value) == (
        f"the server answered 307 (redirect to {victim.url}); the platform does not follow redirects: "
        "if the server answers at /mcp, give its source that path"
    )
    score, _, _ = await call_and_score(victim.shared_origin_url, SECRET_TEST)
    assert not score.passed and "does not follow redirects" in score.detail
    assert victim.app.requests == before


async def test_control_without_the_checks_the_redirect_reaches_the_victim(
    victim: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attack is real: without the transport's checks, the health check records the victim's tools as
    the hostile tenant's, and the evaluation scores (and would store) the victim's answer."""
    unguarded(monkeypatch)
    before = victim.app.requests
    result = await probe_mcp(victim.shared_origin_url, timeout=10)
    assert result.server_name == "victim" and [t["name"] for t in result.tools] == ["secret"]
    score, answer, _ = await call_and_score(victim.shared_origin_url, SECRET_TEST)
    assert score.passed and answer is not None and SECRET in answer.text
    assert victim.app.requests > before


async def trickle(writer: asyncio.StreamWriter, raw: Raw) -> bool:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n")
    while True:
        writer.write(b" ")
        await writer.drain()
        await asyncio.sleep(0.2)


async def endless_events(writer: asyncio.StreamWriter, raw: Raw) -> bool:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n")
    while True:
        writer.write(b"event: ping\ndata: {}\n\n")
        await writer.drain()
        await asyncio.sleep(0.2)


@pytest.mark.parametrize("answer", [trickle, endless_events], ids=["trickled-json", "endless-events"])
async def test_an_answer_that_never_ends_fails_within_the_time_limit(victim: Served, answer: Answer) -> None:
    before = victim.app.requests
    async with raw_server(answer) as hostile:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await probe_mcp(hostile.url, timeout=2)
        elapsed = time.monotonic() - started
    assert 1.9 < elapsed < 4, elapsed
    assert victim.app.requests == before


def huge(size: int) -> Answer:
    async def answer(writer: asyncio.StreamWriter, raw: Raw) -> bool:
        writer.write(f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {size}\r\n\r\n".encode())
        chunk = b" " * MiB
        for _ in range(size // MiB):
            writer.write(chunk)
            await writer.drain()
            raw.sent += len(chunk)
        raw.finished = True
        return True

    return answer


async def test_an_answer_past_the_bound_is_cut(victim: Served) -> None:
    before = victim.app.requests
    assert MAX_ANSWER_BYTES == 16 * MiB
    async with raw_server(huge(32 * MiB)) as hostile:
        with pytest.raises(RefusedAnswer, match="the server's answers went past 16 MiB; the platform reads no more"):
            await probe_mcp(hostile.url, timeout=20)
        await asyncio.sleep(0.2)
    # What the loopback's socket buffers hold is sent without being read; far from the other 16 MiB.
    assert not hostile.finished and hostile.sent < 30 * MiB, hostile.sent
    assert victim.app.requests == before


async def test_control_without_the_bound_all_of_it_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    unguarded(monkeypatch)
    async with raw_server(huge(32 * MiB)) as hostile:
        with pytest.raises(Exception):  # noqa: B017 - spaces are not JSON-RPC: what matters is the reading
            await probe_mcp(hostile.url, timeout=20)
    # The discover probe's answer, then (falling back) the initialize handshake's: each read to its end.
    assert hostile.finished and hostile.sent == 32 * MiB * len(hostile.requests)


async def compressed(writer: asyncio.StreamWriter, raw: Raw) -> bool:
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\nContent-Length: 0\r\n\r\n"
    )
    await writer.drain()
    return True


async def test_a_compressed_answer_is_refused_and_never_asked_for() -> None:
    async with raw_server(compressed) as hostile:
        with pytest.raises(RefusedAnswer, match="answered in 'gzip' encoding, which the platform did not ask for"):
            await probe_mcp(hostile.url, timeout=10)
    assert hostile.headers and all(h.get("accept-encoding") == "identity" for h in hostile.headers)


async def test_proxy_settings_in_the_environment_do_not_divert_the_client(
    victim: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with raw_server(redirect_to(victim.url)) as proxy:
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.setenv(name, f"http://127.0.0.1:{proxy.port}")
        result = await probe_mcp(victim.url, timeout=10)
    assert result.server_name == "victim"
    assert proxy.requests == []


async def test_control_the_sdk_client_of_its_own_goes_through_the_proxy(
    victim: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why the platform builds its own: the SDK's default HTTP client takes its proxy from the environment."""
    async with raw_server(redirect_to(victim.url)) as proxy:
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("ALL_PROXY", f"http://127.0.0.1:{proxy.port}")
        with pytest.raises(Exception):  # noqa: B017 - the proxy's answer is no MCP: what matters is who got asked
            async with Client(victim.url, mode="auto", cache=None):
                pass
    assert proxy.requests and proxy.requests[0] == f"POST {victim.url} HTTP/1.1"


async def test_nothing_is_sent_but_to_the_recorded_url(victim: Served) -> None:
    """Whatever the SDK would ask (a redirect it follows itself, a URL of its own), the transport sends
    only to the address the platform recorded."""
    before = victim.app.requests
    async with raw_server(redirect_to(victim.url)) as recorded:
        async with httpx2.AsyncClient(transport=PlatformTransport(recorded.url)) as http:
            with pytest.raises(RefusedAnswer, match=f"sends nothing to {victim.url}, only to {recorded.url}"):
                await http.post(victim.url, content=json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
    assert recorded.requests == []
    assert victim.app.requests == before
