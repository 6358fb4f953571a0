"""The gateway against a real dual-era MCP server: what passes through and what does not, Origin, limits,
timeouts, disconnects, scoped keys, invocation traces and /metrics.

The server runs beside the platform (started by the test on a socket it bound) and is attached to a
real server record as its serving deployment, so every request takes the gateway's real path: route
table, keys, limits, pooled client. Deploying through the workflow is covered in test_gateway_deploy.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import httpx2
import psutil
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from sqlalchemy import insert, update
from sqlalchemy.ext.asyncio import create_async_engine

from core.db import notify_route_changed
from core.models import Deployment, Server
from gateway.limits import Slots, TokenBuckets
from tests.support.components import free_port
from tests.support.everything import DirectServer
from tests.support.stack import Stack

MODERN = "2026-07-28"
LEGACY = "2025-11-25"
ACCEPT = "application/json, text/event-stream"


async def eventually(condition: Callable[[], Awaitable[bool]], bound: float = 15.0) -> None:
    deadline = time.monotonic() + bound
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition still false after {bound} s")
        await asyncio.sleep(0.05)


def modern_call(tool: str, arguments: dict[str, Any], request_id: int = 1) -> tuple[dict[str, str], dict[str, Any]]:
    """Headers and body of a stateless 2026-07-28 tools/call."""
    body = {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {
            "name": tool,
            "arguments": arguments,
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": MODERN,
                "io.modelcontextprotocol/clientCapabilities": {},
                "io.modelcontextprotocol/clientInfo": {"name": "mcphost-tests", "version": "1"},
            },
        },
    }
    headers = {
        "accept": ACCEPT,
        "content-type": "application/json",
        "mcp-protocol-version": MODERN,
        "mcp-method": "tools/call",
        "mcp-name": tool,
    }
    return headers, body


def rpc_result(response: httpx.Response) -> dict[str, Any]:
    """The JSON-RPC message of a response, JSON or SSE."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        messages = [json.loads(line[5:]) for line in response.text.splitlines() if line.startswith("data:")]
        return messages[-1]  # type: ignore[no-any-return]
    return response.json()  # type: ignore[no-any-return]


def text_of(message: dict[str, Any]) -> str:
    assert "result" in message, message
    return "".join(c.get("text", "") for c in message["result"]["content"])


async def attach(stack: Stack, server_id: str, upstream_url: str) -> None:
    """Make `upstream_url` the serving revision of the server, as a deployment's activate step would."""
    engine = create_async_engine(stack.settings.database_url)
    try:
        async with engine.begin() as conn:
            dep_id = uuid.uuid4()
            await conn.execute(
                insert(Deployment).values(
                    id=dep_id,
                    server_id=uuid.UUID(server_id),
                    seq=1,
                    idempotency_key=str(dep_id),
                    workflow_id=f"attached-{dep_id}",
                    status="running",
                    spec={},
                    upstream_url=upstream_url,
                )
            )
            await conn.execute(
                update(Server)
                .where(Server.id == uuid.UUID(server_id))
                .values(active_deployment_id=dep_id, active_seq=1, status="running")
            )
        async with stack.state.sessionmaker() as session, session.begin():
            slug = (await session.get(Server, uuid.UUID(server_id))).slug  # type: ignore[union-attr]
            await notify_route_changed(session, slug)
        stack.state.routes.invalidate(slug)
    finally:
        await engine.dispose()


class Hosted:
    def __init__(
        self,
        stack: Stack,
        owner: httpx.AsyncClient,
        server: dict[str, Any],
        upstream: DirectServer,
        front: str | None = None,
    ) -> None:
        self.stack, self.owner, self.server, self.upstream = stack, owner, server, upstream
        self.id: str = server["id"]
        self.key: str = server["api_key"]
        self.url = f"{front or stack.base_url}/mcp/{server['slug']}"

    def headers(self, key: str | None = None, **extra: str) -> dict[str, str]:
        return {"authorization": f"Bearer {key or self.key}", **extra}

    async def call(
        self, http: httpx.AsyncClient, tool: str, arguments: dict[str, Any], key: str | None = None
    ) -> httpx.Response:
        headers, body = modern_call(tool, arguments)
        return await http.post(self.url, json=body, headers={**headers, **self.headers(key)})


async def host(
    stack: Stack, owner: httpx.AsyncClient, upstream: DirectServer, front: str | None = None, **gateway: Any
) -> Hosted:
    """A server record serving `upstream`, called through `front` (a base URL; default: the API's)."""
    slug = f"gw-{uuid.uuid4().hex[:10]}"
    source = {"type": "package", "registry": "pypi", "package": "mcphost-everything"}
    created = await owner.post("/api/servers", json={"name": slug, "slug": slug, "source": source, "gateway": gateway})
    assert created.status_code == 201, created.text
    await attach(stack, created.json()["id"], upstream.url)
    return Hosted(stack, owner, created.json(), upstream, front)


@contextlib.asynccontextmanager
async def raw_upstream(
    stack: Stack,
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    front: str | None = None,
    **gateway: Any,
) -> AsyncIterator[Hosted]:
    """A server record whose upstream is `handler`, a hand-written HTTP server of the test's own."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    owner, _ = await stack.user()
    try:
        async with owner:
            slug = f"gw-{uuid.uuid4().hex[:10]}"
            source = {"type": "package", "registry": "pypi", "package": "mcphost-everything"}
            created = await owner.post(
                "/api/servers", json={"name": slug, "slug": slug, "source": source, "gateway": gateway}
            )
            port = server.sockets[0].getsockname()[1]
            await attach(stack, created.json()["id"], f"http://127.0.0.1:{port}/mcp")
            yield Hosted(stack, owner, created.json(), DirectServer(), front)
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture(scope="module")
def upstream() -> Iterator[DirectServer]:
    server = DirectServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def json_upstream() -> Iterator[DirectServer]:
    server = DirectServer("--json").start()
    yield server
    server.stop()


@pytest.fixture
async def front(request: pytest.FixtureRequest, stack: Stack) -> str:
    """Where clients reach the gateway: uvicorn beside the API (`mcphost up`, the default), or the
    gateway's own server (`mcphost gateway`). Tests of HTTP transport run through both (BOTH_FRONTS)."""
    kind = getattr(request, "param", "uvicorn")
    return stack.base_url if kind == "uvicorn" else await stack.lean_gateway()


# What an HTTP server in front of the handler could get wrong runs through both; the handler's own
# logic (keys, limits, metering) is the same code under both and runs once.
BOTH_FRONTS = pytest.mark.parametrize("front", ["uvicorn", "lean"], indirect=True)


@pytest.fixture
async def hosted(stack: Stack, upstream: DirectServer, front: str) -> AsyncIterator[Hosted]:
    owner, _ = await stack.user()
    async with owner:
        yield await host(stack, owner, upstream, front)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=60) as client:
        yield client


@BOTH_FRONTS
async def test_mcp_headers_pass_byte_exact_and_credentials_never(hosted: Hosted, http: httpx.AsyncClient) -> None:
    headers, body = modern_call("request_headers", {})
    odd = "=?base64?" + "w6nDoA==" + "?="  # an encoded non-ASCII value, as 2026-07-28 clients send them
    response = await http.post(
        hosted.url,
        json=body,
        headers={
            **headers,
            **hosted.headers(),
            "mcp-param-region": odd,
            "mcp-future-thing": "spaced \t value",
            "cookie": "session=stolen",
            "x-forwarded-for": "203.0.113.9",
            "x-api-key": hosted.key,
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        },
    )
    assert response.status_code == 200, response.text
    seen = json.loads(text_of(rpc_result(response)))
    assert seen["mcp-method"] == "tools/call" and seen["mcp-name"] == "request_headers"
    assert seen["mcp-protocol-version"] == MODERN
    assert seen["mcp-param-region"] == odd
    assert seen["mcp-future-thing"] == "spaced \t value"
    assert seen["traceparent"].startswith("00-0af7651916cd43dd8448eb211c80319c")
    assert seen["host"] == f"127.0.0.1:{hosted.upstream.port}"  # the Host the server expects
    for never in ("authorization", "x-api-key", "cookie", "x-forwarded-for"):
        assert never not in seen, (never, seen)


@BOTH_FRONTS
async def test_status_codes_and_allow_come_from_the_server(hosted: Hosted, http: httpx.AsyncClient) -> None:
    # A stateless (2026-07-28) GET is 405 from the server, with its Allow; the gateway keeps both.
    got = await http.get(hosted.url, headers={**hosted.headers(), "mcp-protocol-version": MODERN, "accept": ACCEPT})
    assert got.status_code == 405 and got.headers["allow"] == "POST", (got.status_code, got.headers)
    # A routing header that contradicts the body is the server's 400, not something the gateway hides.
    headers, body = modern_call("echo", {"text": "x"})
    wrong = await http.post(hosted.url, json=body, headers={**headers, **hosted.headers(), "mcp-name": "add"})
    assert wrong.status_code == 400, wrong.text
    assert "error" in wrong.json()
    # A method nobody serves is the gateway's 405 with what it allows.
    put = await http.put(hosted.url, headers=hosted.headers())
    assert put.status_code == 405 and put.headers["allow"] == "GET, POST, DELETE"


@BOTH_FRONTS
async def test_session_era_clients_work_end_to_end(hosted: Hosted) -> None:
    """The official client, handshake era: initialize, session id, GET stream, DELETE at the end."""
    async with httpx2.AsyncClient(headers=hosted.headers(), timeout=30) as h:
        async with Client(streamable_http_client(hosted.url, http_client=h), mode="legacy", cache=None) as client:
            result = await client.call_tool("echo", {"text": "legacy"})
            assert "".join(getattr(c, "text", "") for c in result.content) == "echo: legacy"
            tools = {t.name for t in (await client.list_tools()).tools}
            assert {"echo", "add", "sleep"} <= tools
    async with httpx2.AsyncClient(headers=hosted.headers(), timeout=30) as h:
        async with Client(streamable_http_client(hosted.url, http_client=h), mode=MODERN, cache=None) as client:
            result = await client.call_tool("add", {"a": 2, "b": 3})
            assert "".join(getattr(c, "text", "") for c in result.content) == "5"


async def test_a_forbidden_origin_never_reaches_the_server(
    stack: Stack, hosted: Hosted, http: httpx.AsyncClient
) -> None:
    headers, body = modern_call("echo", {"text": "from a page"})
    before = hosted.upstream.requests_seen()
    evil = await http.post(
        hosted.url, json=body, headers={**headers, **hosted.headers(), "origin": "https://evil.example"}
    )
    assert evil.status_code == 403, evil.text
    assert evil.json()["error"]["message"].startswith("this Origin may not call the gateway")
    assert hosted.upstream.requests_seen() == before
    # The platform's own origin (PUBLIC_URL) and no Origin at all (non-browser clients) pass.
    own = stack.settings.api_base_url
    gateway = stack.state.gateway.gateway
    saved = gateway.allowed_origins
    gateway.allowed_origins = saved | {own.encode()}
    try:
        ok = await http.post(hosted.url, json=body, headers={**headers, **hosted.headers(), "origin": own})
        assert ok.status_code == 200, ok.text
    finally:
        gateway.allowed_origins = saved
    plain = await http.post(hosted.url, json=body, headers={**headers, **hosted.headers()})
    assert plain.status_code == 200
    assert hosted.upstream.requests_seen() == before + 2


async def test_a_hung_server_times_out_with_a_json_rpc_error(
    stack: Stack, upstream: DirectServer, json_upstream: DirectServer, http: httpx.AsyncClient, front: str
) -> None:
    owner, _ = await stack.user()
    async with owner:
        for server in (upstream, json_upstream):  # an SSE answer and a JSON one
            slow = await host(stack, owner, server, front, read_timeout_seconds=1.5)
            started = time.monotonic()
            response = await slow.call(http, "sleep", {"seconds": 20})
            took = time.monotonic() - started
            message = rpc_result(response)
            assert "error" in message and "within 1.5 s" in message["error"]["message"], message
            assert message["id"] == 1
            assert took < 15
            # A call that answers in time still does.
            assert text_of(rpc_result(await slow.call(http, "sleep", {"seconds": 0.2}))) == "slept 0.2 s"


@BOTH_FRONTS
async def test_a_request_body_that_stops_arriving_gets_408(stack: Stack, hosted: Hosted, front: str) -> None:
    """Under either front, a client that sends a head and part of its body, then nothing, is answered 408 once
    the body has stopped arriving for the client idle time, and its connection is closed; nothing reaches the
    server. A body sent slowly, piece by piece, is waited for as long as it keeps coming."""
    gateway = stack.state.gateway.gateway
    # uvicorn has no bound of its own: the gateway's handler keeps it. The gateway's own server keeps it itself.
    saved = (gateway.body_timeout, stack._lean.keep_alive if front != stack.base_url else None)
    if front == stack.base_url:
        gateway.body_timeout = 1.0
    else:
        stack._lean.keep_alive = 1.0
    headers, body = modern_call("echo", {"text": "slowly"})
    payload = json.dumps(body).encode()
    lines = "".join(f"{k}: {v}\r\n" for k, v in {**headers, **hosted.headers()}.items())
    head = f"POST {hosted.url.split(front, 1)[1]} HTTP/1.1\r\nhost: x\r\n{lines}content-length: {len(payload)}\r\n\r\n"
    port = int(front.rsplit(":", 1)[1])
    before = hosted.upstream.requests_seen()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(head.encode() + payload[:10])
            answer = await asyncio.wait_for(reader.read(), 10)  # the whole answer, up to the connection's close
        finally:
            writer.close()
        status, _, rest = answer.partition(b"\r\n")
        assert status.startswith(b"HTTP/1.1 408 "), answer
        assert b"\r\nconnection: close\r\n" in rest.lower()
        assert b"stopped arriving for 1 s" in rest
        assert hosted.upstream.requests_seen() == before

        # Six pieces 0.2 s apart: 1.2 s in all, but never 1 s without a piece.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            pieces = [payload[i : i + len(payload) // 6 + 1] for i in range(0, len(payload), len(payload) // 6 + 1)]
            writer.write(head.encode())
            for piece in pieces:
                await asyncio.sleep(0.2)  # the client's pace, what is under test
                writer.write(piece)
            answer_head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        finally:
            writer.close()
        assert answer_head.startswith(b"HTTP/1.1 200 "), answer_head
        assert hosted.upstream.requests_seen() == before + 1
    finally:
        gateway.body_timeout = saved[0]
        if saved[1] is not None:
            stack._lean.keep_alive = saved[1]


def upstream_connections(server: DirectServer) -> int:
    assert server.proc is not None
    count = 0
    for conn in psutil.Process(server.proc.pid).net_connections(kind="tcp"):
        if conn.status == psutil.CONN_ESTABLISHED and conn.laddr.port == server.port:
            count += 1
    return count


@BOTH_FRONTS
async def test_a_client_that_goes_away_frees_its_upstream_connection(stack: Stack, front: str) -> None:
    server = DirectServer().start()
    try:
        owner, _ = await stack.user()
        async with owner:
            hosted = await host(stack, owner, server, front)
            baseline = upstream_connections(server)
            clients = [httpx.AsyncClient(timeout=60) for _ in range(4)]
            calls = [asyncio.create_task(hosted.call(c, "sleep", {"seconds": 60})) for c in clients]

            async def held() -> bool:
                return upstream_connections(server) >= baseline + 4

            await eventually(held)
            for call in calls:
                call.cancel()
            for client in clients:
                await client.aclose()
            await asyncio.gather(*calls, return_exceptions=True)

            async def freed() -> bool:
                return upstream_connections(server) <= baseline

            await eventually(freed)
    finally:
        server.stop()


@BOTH_FRONTS
async def test_idle_streams_get_keep_alives_and_are_not_cut(stack: Stack, hosted: Hosted) -> None:
    gateway = stack.state.gateway.gateway
    saved = gateway.keepalive
    gateway.keepalive = 0.3
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            init = {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
            }
            opened = await http.post(hosted.url, json=init, headers={**hosted.headers(), "accept": ACCEPT})
            assert opened.status_code == 200, opened.text
            session = opened.headers["mcp-session-id"]
            common = {**hosted.headers(), "mcp-session-id": session, "mcp-protocol-version": LEGACY}
            note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
            assert (await http.post(hosted.url, json=note, headers={**common, "accept": ACCEPT})).status_code == 202
            comments = 0
            started = time.monotonic()
            async with http.stream("GET", hosted.url, headers={**common, "accept": "text/event-stream"}) as stream:
                assert stream.status_code == 200
                async for line in stream.aiter_lines():
                    if line.startswith(":"):
                        comments += 1
                    if comments >= 4:
                        break
            assert comments >= 4 and time.monotonic() - started >= 0.9
            ended = await http.delete(hosted.url, headers=common)
            assert ended.status_code in (200, 204), ended.status_code
    finally:
        gateway.keepalive = saved


async def test_random_slugs_leave_the_route_cache_bounded(stack: Stack, http: httpx.AsyncClient) -> None:
    routes = stack.state.routes
    saved = routes.max_entries
    routes.max_entries = 200
    try:
        semaphore = asyncio.Semaphore(32)

        async def probe(i: int) -> int:
            async with semaphore:
                slug = f"nothing-{uuid.uuid4().hex[:12]}" if i % 2 else f"Not_A_Slug.{i}"
                return (
                    await http.post(f"{stack.base_url}/mcp/{slug}", json={}, headers={"authorization": "Bearer x"})
                ).status_code

        statuses = await asyncio.gather(*(probe(i) for i in range(10_000)))
        assert set(statuses) == {404}
        assert len(routes) <= 200
    finally:
        routes.max_entries = saved


async def test_rate_limit_answers_429_with_retry_after(stack: Stack, hosted: Hosted, http: httpx.AsyncClient) -> None:
    gateway = stack.state.gateway.gateway
    saved = gateway.buckets
    gateway.buckets = TokenBuckets(rate=0.2, burst=3)
    try:
        statuses = [(await hosted.call(http, "echo", {"text": str(i)})) for i in range(5)]
        assert [r.status_code for r in statuses[:3]] == [200, 200, 200]
        limited = statuses[3]
        assert limited.status_code == 429
        assert int(limited.headers["retry-after"]) >= 1
        assert limited.json()["error"]["code"] == -32001 and "rate limit" in limited.json()["error"]["message"]
    finally:
        gateway.buckets = saved


async def test_one_tenant_holding_streams_cannot_fail_another_tenants_calls(
    stack: Stack, upstream: DirectServer, http: httpx.AsyncClient
) -> None:
    gateway = stack.state.gateway.gateway
    saved = gateway.server_slots
    gateway.server_slots = Slots(4)
    greedy_owner, _ = await stack.user()
    other_owner, _ = await stack.user()
    async with greedy_owner, other_owner:
        greedy = await host(stack, greedy_owner, upstream)
        other = await host(stack, other_owner, upstream)
        clients = [httpx.AsyncClient(timeout=60) for _ in range(8)]
        try:
            holds = [asyncio.create_task(greedy.call(c, "sleep", {"seconds": 3})) for c in clients]
            await asyncio.sleep(0)

            async def greedy_full() -> bool:
                return gateway.server_slots.in_use(greedy.server["slug"]) == 4

            await eventually(greedy_full)
            answers = [await other.call(http, "echo", {"text": f"other {i}"}) for i in range(10)]
            assert [r.status_code for r in answers] == [200] * 10
            assert all(text_of(rpc_result(r)).startswith("echo: other") for r in answers)
            results = await asyncio.gather(*holds)
            codes = sorted(r.status_code for r in results)
            assert codes.count(200) == 4 and codes.count(429) == 4, codes
        finally:
            gateway.server_slots = saved
            for c in clients:
                await c.aclose()


@BOTH_FRONTS
async def test_size_caps(stack: Stack, hosted: Hosted, http: httpx.AsyncClient) -> None:
    gateway = stack.state.gateway.gateway
    headers, body = modern_call("echo", {"text": "x" * (gateway.max_request_bytes + 10)})
    too_big = await http.post(hosted.url, json=body, headers={**headers, **hosted.headers()})
    assert too_big.status_code == 413 and "larger than" in too_big.json()["error"]["message"]
    saved = gateway.max_response_bytes
    gateway.max_response_bytes = 64 * 1024
    try:
        cut = rpc_result(await hosted.call(http, "big", {"kib": 256}))
        assert "error" in cut and "larger than 65536 bytes" in cut["error"]["message"], cut
        fine = rpc_result(await hosted.call(http, "big", {"kib": 16}))
        assert len(text_of(fine)) == 16 * 1024
    finally:
        gateway.max_response_bytes = saved


# ---- keys ------------------------------------------------------------------------------------------


async def legacy_tools(url: str, key: str) -> list[str]:
    async with httpx2.AsyncClient(headers={"authorization": f"Bearer {key}"}, timeout=30) as h:
        async with Client(streamable_http_client(url, http_client=h), mode="legacy", cache=None) as client:
            return sorted(t.name for t in (await client.list_tools()).tools)


async def modern_tools(http: httpx.AsyncClient, url: str, key: str) -> list[str]:
    body = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/list",
        "params": {
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": MODERN,
                "io.modelcontextprotocol/clientCapabilities": {},
                "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"},
            }
        },
    }
    headers = {
        "accept": ACCEPT,
        "mcp-protocol-version": MODERN,
        "mcp-method": "tools/list",
        "authorization": f"Bearer {key}",
    }
    response = await http.post(url, json=body, headers=headers)
    assert response.status_code == 200, response.text
    return sorted(t["name"] for t in rpc_result(response)["result"]["tools"])


async def test_a_scoped_key_sees_and_calls_only_its_tools(hosted: Hosted, http: httpx.AsyncClient) -> None:
    created = await hosted.owner.post(
        f"/api/servers/{hosted.id}/keys", json={"name": "ci bot", "tools": ["echo", "add"]}
    )
    assert created.status_code == 201, created.text
    scoped = created.json()["api_key"]
    assert created.json()["tools"] == ["add", "echo"]
    assert await legacy_tools(hosted.url, scoped) == ["add", "echo"]
    assert await modern_tools(http, hosted.url, scoped) == ["add", "echo"]
    assert len(await modern_tools(http, hosted.url, hosted.key)) > 2  # the default key sees everything
    refused = rpc_result(await hosted.call(http, "big", {"kib": 1}, key=scoped))
    assert refused["error"]["code"] == -32602 and "not allowed for key 'ci bot'" in refused["error"]["message"]
    assert text_of(rpc_result(await hosted.call(http, "echo", {"text": "ok"}, key=scoped))) == "echo: ok"
    # The key list never shows the key again; the same live name is a conflict.
    listed = await hosted.owner.get(f"/api/servers/{hosted.id}/keys")
    assert listed.status_code == 200 and "api_key" not in listed.json()["data"][0]
    again = await hosted.owner.post(f"/api/servers/{hosted.id}/keys", json={"name": "ci bot"})
    assert again.status_code == 409
    bad = await hosted.owner.post(f"/api/servers/{hosted.id}/keys", json={"name": "default"})
    assert bad.status_code == 422


async def test_an_expired_key_is_refused(hosted: Hosted, http: httpx.AsyncClient) -> None:
    created = await hosted.owner.post(
        f"/api/servers/{hosted.id}/keys", json={"name": "brief", "expires_in_days": 0.00002}
    )
    assert created.status_code == 201, created.text
    key = created.json()["api_key"]

    async def expired() -> bool:
        return (await hosted.call(http, "echo", {"text": "x"}, key=key)).status_code == 401

    await eventually(expired, bound=10)
    response = await hosted.call(http, "echo", {"text": "x"}, key=key)
    assert "has expired" in response.json()["error"]["message"]


async def test_another_users_keys_are_not_found(stack: Stack, hosted: Hosted) -> None:
    stranger, _ = await stack.user()
    async with stranger:
        assert (await stranger.get(f"/api/servers/{hosted.id}/keys")).status_code == 404
        assert (await stranger.post(f"/api/servers/{hosted.id}/keys", json={"name": "mine"})).status_code == 404
        assert (await stranger.get(f"/api/servers/{hosted.id}/invocations")).status_code == 404


@pytest.fixture
async def api_b(stack: Stack) -> AsyncIterator[Stack]:
    other = Stack(stack.settings.model_copy(update={"bind_port": free_port()}), in_process_worker=False)
    await other.start()
    try:
        other.state.routes.ttl = 3600.0

        async def listening() -> bool:
            return other.state.routes.listening

        await eventually(listening)
        yield other
    finally:
        await other.stop()


async def test_a_revoked_key_is_refused_on_another_process_at_once(
    hosted: Hosted, api_b: Stack, http: httpx.AsyncClient
) -> None:
    created = await hosted.owner.post(f"/api/servers/{hosted.id}/keys", json={"name": "to revoke"})
    key, key_id = created.json()["api_key"], created.json()["id"]
    url_b = f"{api_b.base_url}/mcp/{hosted.server['slug']}"
    headers, body = modern_call("echo", {"text": "b"})
    ok = await http.post(url_b, json=body, headers={**headers, "authorization": f"Bearer {key}"})
    assert ok.status_code == 200, ok.text  # B has the route, with this key, cached for an hour now
    revoked = await hosted.owner.delete(f"/api/servers/{hosted.id}/keys/{key_id}")
    assert revoked.status_code == 204

    async def refused_on_b() -> bool:
        response = await http.post(url_b, json=body, headers={**headers, "authorization": f"Bearer {key}"})
        return response.status_code == 401

    await eventually(refused_on_b, bound=5)
    listed = (await hosted.owner.get(f"/api/servers/{hosted.id}/keys")).json()["data"]
    assert listed[0]["revoked_at"] is not None


# ---- invocations, usage, metrics ----------------------------------------------------------------


async def test_invocations_usage_and_metrics_after_real_calls(
    stack: Stack, upstream: DirectServer, http: httpx.AsyncClient
) -> None:
    owner, _ = await stack.user()
    async with owner:
        plain = await host(stack, owner, upstream)
        traced = await host(stack, owner, upstream, trace_payloads=True)
        secret = "hunter2-correct-horse"
        github = "ghp_" + "A" * 36
        for target in (plain, traced):
            response = await target.call(
                http, "login", {"username": "ada", "password": secret, "note": f"use {github}"}
            )
            assert "welcome ada" in text_of(rpc_result(response))
            await target.call(http, "echo", {"text": "hello"})

        async def written(target: Hosted) -> list[dict[str, Any]]:
            response = await owner.get(f"/api/servers/{target.id}/invocations")
            assert response.status_code == 200, response.text
            return response.json()["data"]  # type: ignore[no-any-return]

        async def both_written() -> bool:
            return len(await written(plain)) >= 2 and len(await written(traced)) >= 2

        await eventually(both_written)
        rows = await written(traced)
        login = next(r for r in rows if r["tool"] == "login")
        assert login["method"] == "tools/call" and login["key_name"] == "default" and login["status"] == 200
        assert login["outcome"] == "ok" and login["request_bytes"] > 0 and login["response_bytes"] > 0
        assert "ada" in login["arguments"] and secret not in login["arguments"] and github not in login["arguments"]
        assert "[redacted]" in login["arguments"]
        assert "welcome ada" in login["result"] and "sk-live-" not in login["result"]
        plain_login = next(r for r in await written(plain) if r["tool"] == "login")
        assert plain_login["arguments"] is None and plain_login["result"] is None  # not opted in

        usage = await owner.get(f"/api/servers/{traced.id}/usage")
        assert usage.status_code == 200
        by_tool = {(u["method"], u["tool"]): u for u in usage.json()["data"]}
        assert by_tool[("tools/call", "login")]["calls"] == 1 and by_tool[("tools/call", "echo")]["calls"] == 1

        metrics = (await http.get(f"{stack.base_url}/metrics")).text
        assert 'mcphost_gateway_requests_total{method="tools/call",outcome="ok"}' in metrics
        assert "mcphost_gateway_request_duration_seconds_bucket" in metrics
        assert "mcphost_gateway_routes_cached" in metrics and "mcphost_gateway_in_flight" in metrics


async def test_a_server_flooding_headers_is_cut_off(
    stack: Stack, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hosted server is untrusted: endless response headers must not make the shared gateway hold them."""
    import gateway.upstream

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\n" + b"".join(b"x-junk-%d: %s\r\n" % (i, b"y" * 1000) for i in range(200)))
        writer.write(b"content-length: 2\r\n\r\n{}")
        await writer.drain()
        writer.close()

    async with raw_upstream(stack, flood) as hosted:
        cut = await hosted.call(http, "echo", {"text": "x"})
        assert cut.status_code == 502 and "more than 65536 bytes of headers" in cut.text, cut.text
        # The control: without the cap the same answer is taken in whole.
        monkeypatch.setattr(gateway.upstream, "MAX_HEADER_BYTES", 10**9)
        taken = await hosted.call(http, "echo", {"text": "x"})
        assert taken.status_code == 200 and taken.text == "{}"


@pytest.mark.parametrize("front", ["lean"], indirect=True)
async def test_an_answer_whose_body_comes_after_its_head_arrives_whole(
    stack: Stack, http: httpx.AsyncClient, front: str
) -> None:
    """The gateway's own server hands an answer that arrives complete straight to the client from the upstream
    connection. One whose body comes later, after the request began relaying it, must still arrive whole."""
    release = asyncio.Event()
    event = b'event: message\ndata: {"jsonrpc":"2.0","id":1,"result":{"content":[],"isError":false}}\n\n'

    async def staged(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.startswith(b"content-length"))
        await reader.readexactly(length)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        await writer.drain()
        await release.wait()  # the client has the head: the gateway's task is relaying this answer
        writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(event), event))
        await writer.drain()
        writer.close()

    async with raw_upstream(stack, staged, front) as hosted:
        headers, body = modern_call("echo", {"text": "x"})
        async with http.stream("POST", hosted.url, json=body, headers={**headers, **hosted.headers()}) as answer:
            assert answer.status_code == 200
            assert answer.headers["content-type"] == "text/event-stream"
            release.set()
            assert await answer.aread() == event


@pytest.mark.parametrize("front", ["lean"], indirect=True)
async def test_calls_forwarded_from_callbacks_keep_every_guarantee(
    stack: Stack, http: httpx.AsyncClient, front: str
) -> None:
    """On the gateway's own server a whole 2026-era call on a pooled connection is sent and answered from the
    connections' callbacks, with no task. What that path cannot finish alone it hands to a task: an answer
    streamed over time, one over the size cap, a server that does not answer in time; and a client that leaves
    frees the server's connection at once. Each on a kept-alive connection, so each goes through that path."""
    gateway = stack.state.gateway.gateway
    hung_up = asyncio.Event()
    seen: list[bytes] = []  # the tools of the requests that reached the server
    result = b'{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"ok"}],"isError":false}}'

    async def scripted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            fields = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:] if b": " in line)
            await reader.readexactly(int(fields[b"content-length"]))
            tool = fields.get(b"mcp-name", b"plain")  # a session-era request names its tool in the body only
            seen.append(tool)
            if tool in (b"plain", b"late"):
                if tool == b"late":
                    await asyncio.sleep(0.5)  # then the whole answer in one write, as for "plain"
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                    % (len(result), result)
                )
            elif tool == b"big":
                big = b'{"jsonrpc":"2.0","id":1,"result":"' + b"x" * 4096 + b'"}'
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                    % (len(big), big)
                )
            elif tool == b"stream":
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
                )
                for part in (b": working\n\n", b"event: message\ndata: " + result + b"\n\n"):
                    await writer.drain()
                    await asyncio.sleep(0.05)  # the server's pace: the answer comes in pieces
                    writer.write(b"%x\r\n%s\r\n" % (len(part), part))
                writer.write(b"0\r\n\r\n")
            elif tool in (b"stall-body", b"cut-body"):  # a head promising 100 bytes, then 10 of them
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n" + b'{"jsonrpc"'
                )
                await writer.drain()
                if tool == b"cut-body":
                    writer.close()
                    return
                if await reader.read(1) == b"":  # and nothing more, until the gateway hangs up
                    hung_up.set()
                return
            elif tool in (b"sse", b"slow-sse"):  # the head written apart from the one event, as servers do
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
                )
                await writer.drain()
                if tool == b"slow-sse":
                    await asyncio.sleep(0.5)
                event = b"event: message\ndata: " + result + b"\n\n"
                writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(event), event))
            else:  # "hang": no answer; the connection's end is what the test waits for
                if await reader.read(1) == b"":
                    hung_up.set()
                return
            await writer.drain()

    async with raw_upstream(stack, scripted, front, read_timeout_seconds=1.0) as hosted:

        async def call(tool: str) -> httpx.Response:
            headers, body = modern_call(tool, {})
            return await http.post(hosted.url, json=body, headers={**headers, **hosted.headers()})

        assert text_of(rpc_result(await call("plain"))) == "ok"  # the first call opens the pooled connection
        before = gateway.forwarded_now
        for _ in range(3):
            answer = await call("plain")
            assert answer.status_code == 200 and text_of(rpc_result(answer)) == "ok"
        assert gateway.forwarded_now == before + 3  # no task: sent and answered from the callbacks
        # A session-era call too (its method read from the body), while no revision of the server drains.
        legacy = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "plain", "arguments": {}}}
        session = {"accept": ACCEPT, "mcp-session-id": "s-1", "mcp-protocol-version": "2025-11-25"}
        answer = await http.post(hosted.url, json=legacy, headers={**session, **hosted.headers()})
        assert answer.status_code == 200 and text_of(rpc_result(answer)) == "ok"
        assert gateway.forwarded_now == before + 4

        # The checks hold on this path too: a forbidden Origin, a wrong key and a key over its rate are refused
        # and nothing reaches the server (forwarded, each would have been answered "ok").
        headers, body = modern_call("plain", {})
        reached, forwarded = len(seen), gateway.forwarded_now
        evil = await http.post(
            hosted.url, json=body, headers={**headers, **hosted.headers(), "origin": "https://evil.example"}
        )
        assert evil.status_code == 403, evil.text
        wrong = await http.post(hosted.url, json=body, headers={**headers, **hosted.headers("mcph_" + "x" * 43)})
        assert wrong.status_code == 401, wrong.text
        saved_buckets = gateway.buckets
        gateway.buckets = TokenBuckets(rate=0.01, burst=1)
        try:
            assert (await call("plain")).status_code == 200
            limited = await call("plain")
        finally:
            gateway.buckets = saved_buckets
        assert limited.status_code == 429 and "retry-after" in limited.headers
        assert len(seen) == reached + 1 and gateway.forwarded_now == forwarded + 1

        for _ in range(3):  # an event stream's head, then its one event
            answer = await call("sse")
            assert answer.status_code == 200 and text_of(rpc_result(answer)) == "ok"
        saved_keepalive = gateway.keepalive
        gateway.keepalive = 0.1
        try:  # the event late: a task takes over and keeps the stream alive meanwhile
            slow = await call("slow-sse")
        finally:
            gateway.keepalive = saved_keepalive
        assert slow.status_code == 200 and ": keep-alive" in slow.text and text_of(rpc_result(slow)) == "ok"

        streamed = await call("stream")
        assert streamed.status_code == 200 and streamed.text.startswith(": working")
        assert text_of(rpc_result(streamed)) == "ok"

        saved = gateway.max_response_bytes
        gateway.max_response_bytes = 1024
        try:
            too_big = await call("big")
        finally:
            gateway.max_response_bytes = saved
        assert too_big.status_code == 502 and "larger than 1024 bytes" in too_big.json()["error"]["message"]

        late = await call("hang")
        assert late.status_code == 504 and "within 1 s" in late.json()["error"]["message"]
        # A server that stops in the middle of its answer is a hung one too; one that hangs up there, broken.
        hung_up.clear()
        stalled = await call("stall-body")
        assert stalled.status_code == 504 and "no whole answer" in stalled.json()["error"]["message"]
        await asyncio.wait_for(hung_up.wait(), 10)  # and its connection is closed, not pooled
        cut = await call("cut-body")
        assert cut.status_code == 502 and "broke off its answer" in cut.json()["error"]["message"]
        assert text_of(rpc_result(await call("plain"))) == "ok"  # and the next call still goes through
        assert gateway.forwarded_now > before + 3

        # A client that leaves mid-call: its upstream connection is closed at once, its slots given back.
        hung_up.clear()
        headers, body = modern_call("hang", {})
        payload = json.dumps(body).encode()
        port = int(front.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        lines = "".join(f"{k}: {v}\r\n" for k, v in {**headers, **hosted.headers()}.items())
        path = hosted.url.split(front, 1)[1]
        writer.write(
            f"POST {path} HTTP/1.1\r\nhost: x\r\n{lines}content-length: {len(payload)}\r\n\r\n".encode() + payload
        )
        await writer.drain()

        async def in_flight() -> bool:
            return gateway.in_flight == 1

        await eventually(in_flight)
        writer.close()
        await asyncio.wait_for(hung_up.wait(), 10)

        async def released() -> bool:
            return gateway.in_flight == 0 and len(gateway.server_slots) == 0 and len(gateway.key_slots) == 0

        await eventually(released)

        # A small body that never follows its head: no task waits for it, the connection does, and answers 408
        # once the body has stopped arriving for the client idle time; nothing reaches the server.
        lean = stack._lean
        saved_idle, lean.keep_alive = lean.keep_alive, 0.5
        reached = len(seen)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(
                f"POST {path} HTTP/1.1\r\nhost: x\r\n{lines}content-length: {len(payload)}\r\n\r\n".encode()
                + payload[:5]
            )
            answer_head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert answer_head.startswith(b"HTTP/1.1 408 ") and b"connection: close" in answer_head
            await asyncio.wait_for(reader.read(), 10)  # and the connection closes
        finally:
            lean.keep_alive = saved_idle
            writer.close()
        assert len(seen) == reached and gateway.in_flight == 0

        # Shutting down lets an answer under way with no task finish, and returns as soon as it has.
        from gateway.server import GatewayServer

        second = GatewayServer(gateway)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        second_port = await second.listen(sock=sock)
        assert text_of(rpc_result(await call("plain"))) == "ok"  # a pooled connection to the server, idle again
        headers, body = modern_call("late", {})
        payload = json.dumps(body).encode()
        lines = "".join(f"{k}: {v}\r\n" for k, v in {**headers, **hosted.headers()}.items())
        reader, writer = await asyncio.open_connection("127.0.0.1", second_port)
        try:
            writer.write(
                f"POST {path} HTTP/1.1\r\nhost: x\r\n{lines}content-length: {len(payload)}\r\n\r\n".encode() + payload
            )
            await eventually(in_flight)
            assert not second.tasks  # forwarded from the callback
            await asyncio.wait_for(second.shutdown(grace=60), 30)
            answer_head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert answer_head.startswith(b"HTTP/1.1 200 ")
            assert b'"text":"ok"' in await asyncio.wait_for(reader.read(), 10)
        finally:
            writer.close()
            if not second.closing:  # the test failed before it: the server still goes
                await second.shutdown(grace=1)
