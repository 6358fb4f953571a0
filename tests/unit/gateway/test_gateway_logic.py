"""The gateway's pure parts: token buckets, slots, what it reads of a request, tool filtering of JSON and
SSE answers, and the redaction of opted-in invocation traces."""

from __future__ import annotations

import json
from typing import Any

from gateway.jsonrpc import SseToolFilter, _from_headers, describe, filter_tools
from gateway.limits import Slots, TokenBuckets
from gateway.redact import REDACTED, excerpt, redact, response_message


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=2, burst=3, clock=clock)
    assert [buckets.take("k") for _ in range(3)] == [0, 0, 0]
    wait = buckets.take("k")
    assert 0.49 < wait <= 0.5  # one token comes back in half a second at 2/s
    clock.now += 0.5
    assert buckets.take("k") == 0
    assert buckets.take("other") == 0  # keys are independent


def test_token_buckets_forget_the_oldest_keys_past_their_bound() -> None:
    buckets = TokenBuckets(rate=1, burst=1, clock=Clock(), max_keys=100)
    for i in range(1000):
        buckets.take(i)
    assert len(buckets) == 100


def test_slots_cap_in_flight_requests_per_key_and_free_memory() -> None:
    slots = Slots(2)
    assert slots.acquire("a") and slots.acquire("a") and not slots.acquire("a")
    assert slots.acquire("a", limit=3)  # a server's own, larger limit
    assert slots.acquire("b")
    for _ in range(3):
        slots.release("a")
    slots.release("b")
    assert len(slots) == 0


def test_describe_reads_method_tool_and_id_only() -> None:
    call = describe(b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"add","arguments":{"a":1}}}')
    assert (call.method, call.tool, call.id, call.arguments, call.problem) == ("tools/call", "add", 7, {"a": 1}, None)
    batch = describe(b'[{"method":"tools/call","params":{"name":"x"}},{"method":"tools/call","params":{"name":"y"}}]')
    assert batch.batch and batch.problem is not None and "batch" in batch.problem and batch.tool is None
    for junk in (b"", b"not json", b"[1,2]", b'"text"', b"{bad"):
        described = describe(junk)
        assert described.method is None and described.problem is not None


def test_a_2026_request_is_described_by_its_headers_and_its_id_read_only_when_asked() -> None:
    body = b'{"jsonrpc":"2.0","id":"r-9","method":"tools/call","params":{"name":"add"}}'
    call = _from_headers(b"tools/call", b"add", body)
    assert (call.method, call.tool, call.arguments) == ("tools/call", "add", None)
    assert call.unread is body  # nothing parsed yet
    assert call.id == "r-9" and call.unread is None
    assert _from_headers(b"tools/list", b"ignored", b"{}").tool is None
    assert _from_headers(b"ping", None, b"not json").id is None
    # A name that is not plain ASCII comes base64-encoded (2026-07-28 value encoding).
    assert _from_headers(b"tools/call", b"=?base64?w6ljaG8=?=", body).tool == "\u00e9cho"


def test_tools_are_filtered_in_json_and_sse_answers() -> None:
    listing = {"jsonrpc": "2.0", "id": 1, "result": {"tools": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}}
    assert [t["name"] for t in filter_tools(listing, frozenset({"a", "c"}))["result"]["tools"]] == ["a", "c"]
    other = {"jsonrpc": "2.0", "id": 2, "result": {"content": []}}
    assert filter_tools(other, frozenset({"a"})) is other
    sse = f"event: message\nid: 5\ndata: {json.dumps(listing)}\n\n".encode()
    tool_filter = SseToolFilter(frozenset({"b"}))
    # Split at an awkward place: nothing is emitted until an event is whole.
    out = tool_filter.feed(sse[:20]) + tool_filter.feed(sse[20:]) + tool_filter.flush()
    assert b"id: 5" in out and b"event: message" in out
    data = next(line for line in out.split(b"\n") if line.startswith(b"data:"))
    assert [t["name"] for t in json.loads(data[5:])["result"]["tools"]] == ["b"]
    comment = SseToolFilter(frozenset({"b"}))
    assert comment.feed(b": keep-alive\n\n") == b": keep-alive\n\n"


def test_redaction_of_secret_names_and_secret_looking_values() -> None:
    value = {
        "username": "ada",
        "password": "hunter2",
        "nested": {"apiKey": "abc", "note": "token ghp_" + "a" * 36 + " and sk-live-" + "b" * 24},
        "list": ["Bearer " + "c" * 30, "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.abcdefghijklmnop"],
        "count": 3,
    }
    clean = redact(value)
    assert clean["username"] == "ada" and clean["count"] == 3
    assert clean["password"] == REDACTED and clean["nested"]["apiKey"] == REDACTED
    assert "ghp_" not in clean["nested"]["note"] and "sk-live-" not in clean["nested"]["note"]
    assert clean["list"] == [REDACTED, REDACTED]
    text = excerpt({"big": "x" * 5000}, 200)
    assert len(text) == 200 and text.endswith("more characters]")


def test_the_result_of_an_sse_answer_is_found() -> None:
    body = b'event: message\ndata: {"jsonrpc":"2.0","method":"notifications/progress"}\n\n' + (
        b'event: message\ndata: {"jsonrpc":"2.0","id":1,"result":{"content":[]}}\n\n'
    )
    assert response_message(body) == {"jsonrpc": "2.0", "id": 1, "result": {"content": []}}
    assert response_message(b'{"jsonrpc":"2.0","id":1,"result":{}}')["result"] == {}


def test_the_platforms_own_origins_are_allowed_and_foreign_ones_are_not() -> None:
    from core.settings import Settings

    secrets: dict[str, Any] = {"jwt_secret": "j" * 40, "secrets_key": "s" * 40, "_env_file": None}
    local = Settings(**secrets, public_url=None, gateway_allowed_origins="", bind_address="0.0.0.0", bind_port=3000)
    # With no PUBLIC_URL the base URL is http://127.0.0.1:3000: a page served from it may call the gateway.
    assert local.api_base_url == "http://127.0.0.1:3000"
    assert {"http://127.0.0.1:3000", "http://localhost:3000", "http://[::1]:3000"} <= local.allowed_origins
    for foreign in ("http://localhost:5173", "http://127.0.0.1:3001", "https://127.0.0.1:3000", "http://evil.example"):
        assert foreign not in local.allowed_origins, foreign
    public = Settings(
        **secrets,
        public_url="https://MCP.example.com:443/platform/",
        gateway_allowed_origins="http://localhost:5173",
        bind_address="127.0.0.1",
        bind_port=8000,
    )
    # A browser leaves the default port out of Origin, and the path is no part of it.
    assert {"https://mcp.example.com", "http://localhost:5173", "http://localhost:8000"} <= public.allowed_origins
    assert "https://mcp.example.com:443" not in public.allowed_origins
    elsewhere = Settings(**secrets, public_url=None, gateway_allowed_origins="", bind_address="10.0.0.5", bind_port=80)
    assert elsewhere.allowed_origins == {"http://10.0.0.5"}
