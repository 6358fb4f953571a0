"""Framing, the channel: a key limited to some tools (a tool allowlist) calls only those, however the request
is framed. The gateway runs in front of the real dual-era MCP server (the official SDK, both spec eras) and
every attack is a call of `add` with a key allowed only `echo`, written so that the server would execute
it: whitespace around the JSON, a byte-order mark, UTF-16, bytes that are not UTF-8, a repeated key, escaped
names, a batch, NaN, a lone surrogate, a routing header that names the allowed tool while the body calls the
other. Each is refused (a 4xx, or the JSON-RPC -32602 of a forbidden tool) and nothing reaches the server.
The control turns the gateway's reading back into what it was (a body not starting with `{` or `[` had
nothing to check) and shows the leading-whitespace call reaching the server and `add` running there.

Also here: the platform's own origin may call the gateway (MCP's conformance "valid localhost origin"),
and a foreign one may not.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from gateway import proxy
from tests.integration.gateway.test_gateway import (
    ACCEPT,
    LEGACY,
    Hosted,
    eventually,
    host,
    modern_call,
    rpc_result,
    text_of,
)
from tests.support.everything import DirectServer
from tests.support.stack import Stack

pytestmark = pytest.mark.timeout(300)

ALLOWED, FORBIDDEN = "echo", "add"
ADD = {"a": 2, "b": 3}  # `add` returns "5": seeing it means the forbidden tool ran


@pytest.fixture(scope="module")
def upstream() -> Iterator[DirectServer]:
    server = DirectServer().start()
    yield server
    server.stop()


@pytest.fixture(params=["uvicorn", "lean"])
async def front(request: pytest.FixtureRequest, stack: Stack) -> str:
    """uvicorn beside the API (`mcphost up`) and the gateway's own server (`mcphost gateway`)."""
    return stack.base_url if request.param == "uvicorn" else await stack.lean_gateway()


@dataclass
class Scoped:
    hosted: Hosted
    key: str  # a key whose allowlist is [ALLOWED]

    @property
    def upstream(self) -> DirectServer:
        return self.hosted.upstream


@pytest.fixture
async def scoped(stack: Stack, upstream: DirectServer, front: str) -> AsyncIterator[Scoped]:
    owner, _ = await stack.user()
    async with owner:
        hosted = await host(stack, owner, upstream, front)
        created = await owner.post(f"/api/servers/{hosted.id}/keys", json={"name": "scoped", "tools": [ALLOWED]})
        assert created.status_code == 201, created.text
        yield Scoped(hosted, created.json()["api_key"])


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=60) as client:
        yield client


def modern(tool: str, arguments: dict[str, Any]) -> tuple[dict[str, str], str]:
    """Headers (Mcp-Name included, as the server requires) and compact JSON text of a 2026-era tools/call."""
    headers, body = modern_call(tool, arguments)
    return headers, json.dumps(body, separators=(",", ":"))


def framed(text: str, old: str, new: str) -> str:
    assert old in text, (old, text)
    return text.replace(old, new, 1)


def attacks() -> dict[str, tuple[dict[str, str], bytes]]:
    """Calls of the forbidden tool, each framed so that a server (the SDK's, of one era or the other, or another
    JSON parser) would execute it, or so that parsers disagree on what it calls."""
    headers, text = modern(FORBIDDEN, ADD)
    as_echo = framed(text, f'"name":"{FORBIDDEN}"', f'"name":"{ALLOWED}"')
    return {
        "leading space": (headers, b" " + text.encode()),
        "leading tab": (headers, b"\t" + text.encode()),
        "leading newline": (headers, b"\r\n" + text.encode()),
        "trailing whitespace": (headers, text.encode() + b" \n\t"),
        "byte-order mark": (headers, b"\xef\xbb\xbf" + text.encode()),
        "UTF-16": (headers, text.encode("utf-16")),
        "UTF-16 without a mark": (headers, text.encode("utf-16-le")),
        "invalid UTF-8": (headers, text.encode().replace(b'"a":2', b'"a":2,"x":"\xff\xfe"')),
        # json.loads and pydantic keep the last copy of a repeated key: the allowed name first, then the other.
        "repeated name": (headers, framed(as_echo, f'"name":"{ALLOWED}"', f'"name":"{ALLOWED}","name":"add"').encode()),
        "repeated method": (
            headers,
            framed(text, '"method":"tools/call"', '"method":"tools/list","method":"tools/call"').encode(),
        ),
        "repeated params": (
            headers,
            framed(text, '"params":', '"params":{"name":"echo","arguments":{"text":"x"}},"params":').encode(),
        ),
        "escaped method": (headers, framed(text, '"tools/call"', '"tools\\u002fcall"').encode()),
        "escaped tool name": (headers, framed(text, '"add"', '"\\u0061dd"').encode()),
        "escaped key": (
            headers,
            framed(as_echo, f'"name":"{ALLOWED}"', f'"name":"{ALLOWED}","n\\u0061me":"add"').encode(),
        ),
        "batch": (headers, f"[{text}]".encode()),
        "NaN": (headers, framed(text, '"a":2', '"a":2,"n":NaN').encode()),
        "lone surrogate": (headers, framed(text, '"a":2', '"a":2,"s":"\\udc00"').encode()),
        "Mcp-Name of the allowed tool": ({**headers, "mcp-name": ALLOWED}, text.encode()),
        "Mcp-Method of another method": ({**headers, "mcp-method": "tools/list"}, text.encode()),
    }


def refused(response: httpx.Response) -> bool:
    """A 4xx with a JSON-RPC error, or the gateway's JSON-RPC refusal of a forbidden tool."""
    message = response.json()
    if 400 <= response.status_code < 500:
        return "error" in message
    return response.status_code == 200 and message.get("error", {}).get("code") == -32602


async def test_no_framing_lets_a_scoped_key_call_another_tool(scoped: Scoped, http: httpx.AsyncClient) -> None:
    url, auth = scoped.hosted.url, {"authorization": f"Bearer {scoped.key}"}
    before = scoped.upstream.requests_seen()
    outcomes, through = {}, {}
    for name, (headers, body) in attacks().items():
        response = await http.post(url, content=body, headers={**headers, **auth})
        outcomes[name] = (response.status_code, response.text)
        if not refused(response):
            through[name] = (response.status_code, response.text[:200])
    assert through == {}  # every attack that got through, with what it got back
    assert scoped.upstream.requests_seen() == before, outcomes  # not one of them reached the server
    status, text = outcomes["leading newline"]  # judged on the real parse: the forbidden tool, named
    assert status == 200 and "tool 'add' is not allowed for key 'scoped'" in text
    status, text = outcomes["escaped tool name"]
    assert status == 200 and "tool 'add' is not allowed" in text
    for name in ("byte-order mark", "UTF-16", "invalid UTF-8", "repeated name", "batch", "NaN", "lone surrogate"):
        status, text = outcomes[name]
        error = json.loads(text)["error"]
        assert status == 400 and error["message"].startswith("malformed request: "), (name, text)
    assert "byte-order mark" in json.loads(outcomes["byte-order mark"][1])["error"]["message"]
    assert "'name' appears twice" in json.loads(outcomes["repeated name"][1])["error"]["message"]
    assert "batch" in json.loads(outcomes["batch"][1])["error"]["message"]
    for name in ("Mcp-Name of the allowed tool", "Mcp-Method of another method"):
        status, text = outcomes[name]
        assert status == 400 and json.loads(text)["error"]["code"] == -32020, (name, text)
    assert (
        "Mcp-Name header is 'echo' but the body's params.name is 'add'" in outcomes["Mcp-Name of the allowed tool"][1]
    )

    # Metered like every refusal: an invocation each, with its outcome, and the limit counter.
    async def metered() -> list[dict[str, Any]]:
        got = await scoped.hosted.owner.get(
            f"/api/servers/{scoped.hosted.id}/invocations", params={"key_name": "scoped", "limit": 1000}
        )
        assert got.status_code == 200, got.text
        return got.json()["data"]  # type: ignore[no-any-return]

    async def all_metered() -> bool:
        return len(await metered()) >= len(outcomes)

    await eventually(all_metered)
    counted: dict[tuple[str, int], int] = {}
    for row in await metered():
        counted[(row["outcome"], row["status"])] = counted.get((row["outcome"], row["status"]), 0) + 1
    expected: dict[tuple[str, int], int] = {}
    for status, text in outcomes.values():
        code = json.loads(text)["error"]["code"]
        outcome = "forbidden_tool" if code == -32602 else "header_mismatch" if code == -32020 else "malformed"
        expected[(outcome, status)] = expected.get((outcome, status), 0) + 1
    assert counted == expected == {("forbidden_tool", 200): 6, ("malformed", 400): 11, ("header_mismatch", 400): 2}
    scrape = (await http.get(f"{scoped.hosted.stack.base_url}/metrics")).text
    assert 'mcphost_gateway_limited_total{limit="malformed"}' in scrape
    assert 'mcphost_gateway_limited_total{limit="header_mismatch"}' in scrape


async def test_the_allowed_tool_still_works_however_it_is_spaced(scoped: Scoped, http: httpx.AsyncClient) -> None:
    url, auth = scoped.hosted.url, {"authorization": f"Bearer {scoped.key}"}
    headers, text = modern(ALLOWED, {"text": "hi"})
    for body in (
        b" \r\n\t" + text.encode() + b"\n",
        framed(text, '"echo"', '"\\u0065cho"').encode(),
        json.dumps(json.loads(text), indent=2).encode(),
    ):
        response = await http.post(url, content=body, headers={**headers, **auth})
        assert response.status_code == 200, response.text
        assert text_of(rpc_result(response)) == "echo: hi"


async def open_session(http: httpx.AsyncClient, url: str, key: str) -> dict[str, str]:
    """A 2025-era session opened with `key`: the headers its calls carry."""
    headers = {"accept": ACCEPT, "content-type": "application/json", "authorization": f"Bearer {key}"}
    init = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    opened = await http.post(url, json=init, headers=headers)
    assert opened.status_code == 200, opened.text
    session = {**headers, "mcp-session-id": opened.headers["mcp-session-id"], "mcp-protocol-version": LEGACY}
    done = await http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=session)
    assert done.status_code == 202, done.text
    return session


def legacy_call(tool: str, arguments: dict[str, Any]) -> bytes:
    message = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": arguments}}
    return json.dumps(message, separators=(",", ":")).encode()


@pytest.mark.parametrize("front", ["uvicorn"], indirect=True)
async def test_in_a_2025_session_too(scoped: Scoped, http: httpx.AsyncClient) -> None:
    url = scoped.hosted.url
    session = await open_session(http, url, scoped.key)
    before = scoped.upstream.requests_seen()
    for body in (b"\n " + legacy_call(FORBIDDEN, ADD), b"\xef\xbb\xbf" + legacy_call(FORBIDDEN, ADD)):
        response = await http.post(url, content=body, headers=session)
        assert refused(response), response.text
    # Routing headers on a 2025-era request are not what the gateway judges: the body is.
    lying = {**session, "mcp-method": "tools/call", "mcp-name": ALLOWED}
    response = await http.post(url, content=legacy_call(FORBIDDEN, ADD), headers=lying)
    assert response.status_code == 200 and rpc_result(response)["error"]["code"] == -32602, response.text
    assert scoped.upstream.requests_seen() == before
    allowed = await http.post(url, content=b"\t" + legacy_call(ALLOWED, {"text": "hi"}) + b"\n", headers=session)
    assert allowed.status_code == 200 and text_of(rpc_result(allowed)) == "echo: hi"


def old_describe(body: bytes) -> proxy.Call:
    """The gateway's reading before: a body not starting with `{` or `[` was described as nothing to check."""
    return proxy.Call() if body[:1] not in (b"{", b"[") else REAL_DESCRIBE(body)


REAL_DESCRIBE, REAL_JUDGE = proxy.describe, proxy.judge


@pytest.mark.parametrize("front", ["uvicorn"], indirect=True)
async def test_control_with_the_old_reading_the_forbidden_tool_runs(
    scoped: Scoped, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = scoped.hosted.url
    monkeypatch.setattr(proxy, "describe", old_describe)
    # 2025 era: the body alone decides.
    session = await open_session(http, url, scoped.key)
    before = scoped.upstream.requests_seen()
    ran = await http.post(url, content=b" " + legacy_call(FORBIDDEN, ADD), headers=session)
    assert ran.status_code == 200 and text_of(rpc_result(ran)) == "5", ran.text  # `add` ran on the server
    assert scoped.upstream.requests_seen() == before + 1
    # 2026 era: with the routing-header check off as well, as it was.
    monkeypatch.setattr(proxy, "judge", lambda call, tools, key_name, routing=None: REAL_JUDGE(call, tools, key_name))
    headers, text = modern(FORBIDDEN, ADD)
    ran = await http.post(
        url, content=b"\n" + text.encode(), headers={**headers, "authorization": f"Bearer {scoped.key}"}
    )
    assert ran.status_code == 200 and text_of(rpc_result(ran)) == "5", ran.text
    assert scoped.upstream.requests_seen() == before + 2
    # The same body with the reading restored: refused, and nothing more reaches the server.
    monkeypatch.undo()
    response = await http.post(
        url, content=b"\n" + text.encode(), headers={**headers, "authorization": f"Bearer {scoped.key}"}
    )
    assert refused(response) and scoped.upstream.requests_seen() == before + 2


@pytest.mark.parametrize("front", ["uvicorn"], indirect=True)
async def test_the_platforms_own_origin_may_call_the_gateway_and_a_foreign_one_may_not(
    stack: Stack, scoped: Scoped, http: httpx.AsyncClient
) -> None:
    headers, body = modern_call(ALLOWED, {"text": "from the platform"})
    auth = {"authorization": f"Bearer {scoped.key}"}
    port = stack.settings.bind_port
    assert stack.settings.public_url is None  # the default: the platform's own base URL is its address
    for origin in (f"http://127.0.0.1:{port}", f"http://localhost:{port}", stack.settings.api_base_url):
        response = await http.post(scoped.hosted.url, json=body, headers={**headers, **auth, "origin": origin})
        assert response.status_code == 200, (origin, response.text)
        assert text_of(rpc_result(response)) == "echo: from the platform"
    before = scoped.upstream.requests_seen()
    for origin in ("http://evil.example", f"http://127.0.0.1:{port + 1}", f"http://evil.example:{port}"):
        response = await http.post(scoped.hosted.url, json=body, headers={**headers, **auth, "origin": origin})
        assert response.status_code == 403, (origin, response.text)
    assert scoped.upstream.requests_seen() == before
