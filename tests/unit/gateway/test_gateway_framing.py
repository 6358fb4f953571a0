"""How the gateway reads a request body before it decides on it (gateway.jsonrpc.describe and judge): every
framing the server would read otherwise than the gateway is refused, and what is forwarded is judged on
what the server will execute. The differential fuzz test at the end checks that against the official MCP
SDK's own parsing of a POST body, in both spec eras."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import pydantic_core
import pytest
from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st
from mcp.shared.inbound import InboundLadderRejection, classify_inbound_request
from mcp_types import JSONRPCNotification, JSONRPCRequest, jsonrpc_message_adapter
from pydantic import ValidationError

from gateway import metrics
from gateway.jsonrpc import HEADER_MISMATCH, Call, describe, judge
from gateway.proxy import _scan

ALLOWED = frozenset({"get_time"})
MODERN = "2026-07-28"
META = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"},
}


def call_body(tool: str, method: str = "tools/call") -> str:
    message = {"jsonrpc": "2.0", "id": 1, "method": method, "params": {"name": tool, "arguments": {}}}
    return json.dumps(message, separators=(",", ":"))


def decision(body: bytes, routing: tuple[bytes, bytes | None] | None = None) -> tuple[Call, Any]:
    call = describe(body)
    return call, judge(call, ALLOWED, "scoped", routing)


@pytest.mark.parametrize("framing", [" {}", "\t{}", "\n{}", "\r\n {}", "{} ", "{}\n\t", " \n{}\r\n "])
def test_whitespace_around_the_json_is_judged_on_the_real_parse(framing: str) -> None:
    allowed = framing.replace("{}", call_body("get_time")).encode()
    call, refusal = decision(allowed)
    assert refusal is None and (call.method, call.tool) == ("tools/call", "get_time")
    forbidden = framing.replace("{}", call_body("delete_everything")).encode()
    call, refusal = decision(forbidden)
    assert call.tool == "delete_everything"
    assert refusal is not None and (refusal.status, refusal.code, refusal.outcome) == (200, -32602, "forbidden_tool")
    assert "'delete_everything' is not allowed for key 'scoped'" in refusal.message


def test_whitespace_inside_the_json_is_judged_too() -> None:
    body = b'{ "jsonrpc" : "2.0" ,\n "id" :\t1 , "method" : "tools/call" , "params" : {\r\n"name" : "add" } }'
    call, refusal = decision(body)
    assert call.tool == "add" and refusal is not None and refusal.outcome == "forbidden_tool"


def test_escaped_method_and_tool_names_are_judged_decoded() -> None:
    body = b'{"jsonrpc":"2.0","id":1,"method":"tools\\u002fcall","params":{"name":"get\\u005ftime"}}'
    call, refusal = decision(body)
    assert (call.method, call.tool, refusal) == ("tools/call", "get_time", None)
    body = b'{"jsonrpc":"2.0","id":1,"method":"tools\\/call","params":{"n\\u0061me":"\\u0061dd"}}'
    call, refusal = decision(body)
    assert (call.method, call.tool) == ("tools/call", "add")
    assert refusal is not None and refusal.outcome == "forbidden_tool"


MALFORMED = {
    "byte-order mark": ("\ufeff" + call_body("add")).encode(),
    "UTF-16 with its mark": call_body("add").encode("utf-16"),
    "UTF-16 without a mark": call_body("add").encode("utf-16-le"),
    "UTF-32": call_body("add").encode("utf-32-be"),
    "invalid UTF-8": call_body("add").encode().replace(b"add", b"a\xffd"),
    "an overlong '/' in UTF-8": call_body("add").encode().replace(b"tools/call", b"tools\xc0\xafcall"),
    "a repeated name": b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_time","name":"add"}}',
    "a repeated name, escaped": b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_time",'
    b'"n\\u0061me":"add"}}',
    "a repeated method": b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"name":"add"},"method":"tools/call"}',
    "repeated params": b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_time"},'
    b'"params":{"name":"add"}}',
    "a repeated key in the arguments": b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_time",'
    b'"arguments":{"tz":"UTC","tz":"CET"}}}',
    "a batch": f"[{call_body('get_time')},{call_body('add')}]".encode(),
    "a batch of one": f"[{call_body('add')}]".encode(),
    "NaN": call_body("get_time").replace('"arguments":{}', '"arguments":{"x":NaN}').encode(),
    "Infinity": call_body("get_time").replace('"arguments":{}', '"arguments":{"x":-Infinity}').encode(),
    "a lone surrogate": call_body("get_time").replace('"arguments":{}', '"arguments":{"x":"\\udc00"}').encode(),
    "a lone surrogate in a name": call_body("add").replace('"add"', '"add\\ud800"').encode(),
    "a string": b'"tools/call"',
    "a number": b"1",
    "null": b"null",
    "nothing": b"",
    "only whitespace": b" \n",
    "a non-JSON space before it": ("\u00a0" + call_body("add")).encode(),
    "a vertical tab before it": b"\x0b" + call_body("add").encode(),
    "a NUL after it": call_body("add").encode() + b"\x00",
    "two messages": (call_body("get_time") + call_body("add")).encode(),
    "a method that is not a string": b'{"jsonrpc":"2.0","id":1,"method":["tools/call"],"params":{"name":"add"}}',
    "deep nesting": b'{"jsonrpc":"2.0","id":1,"method":"ping","params":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_a_body_that_parsers_read_differently_is_refused_and_says_why(name: str) -> None:
    call, refusal = decision(MALFORMED[name])
    assert refusal is not None, name
    assert (refusal.status, refusal.outcome) == (400, "malformed")
    assert refusal.code in (-32700, -32600)
    assert refusal.message.startswith("malformed request: ") and len(refusal.message) > 30
    assert call.tool is None and call.problem is not None
    # The same for a key without an allowlist: the gateway never meters what it cannot read.
    assert judge(call, None, "default") == refusal


def test_surrogates_are_looked_for_at_any_depth_the_parser_allows() -> None:
    def nested(string: bytes) -> bytes:
        return b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":' + b"[" * 500 + string + b"]" * 500 + b"}}"

    assert describe(nested(b'"\\ud83d\\ude00"')).problem is None  # a pair: an emoji
    assert "surrogate" in (describe(nested(b'"\\ud83d"')).problem or "")
    assert "surrogate" in (describe(nested(b'{"\\udc00":1}')).problem or "")


def test_the_refusals_say_what_is_wrong() -> None:
    reasons = {name: describe(body).problem or "" for name, body in MALFORMED.items()}
    assert "byte-order mark" in reasons["byte-order mark"]
    assert "UTF-16" in reasons["UTF-16 without a mark"] and "UTF-8" in reasons["UTF-16 with its mark"]
    assert "not UTF-8" in reasons["invalid UTF-8"]
    assert "'name' appears twice" in reasons["a repeated name, escaped"]
    assert "'method' appears twice" in reasons["a repeated method"]
    assert "batch" in reasons["a batch of one"]
    assert "NaN" in reasons["NaN"] and "-Infinity" in reasons["Infinity"]
    assert "surrogate" in reasons["a lone surrogate"]
    assert "empty" in reasons["nothing"]
    assert "not a JSON-RPC message" in reasons["a string"]


def test_a_response_the_client_posts_passes_and_a_plain_request_is_judged_only_for_tools() -> None:
    response = b'{"jsonrpc":"2.0","id":"s-1","result":{"content":[]}}'
    assert decision(response)[1] is None
    listing = b'{"jsonrpc":"2.0","id":2,"method":"tools/list"}'
    assert decision(listing) == (Call(method="tools/list", request_id=2), None)
    nameless = b'{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"arguments":{}}}'
    refusal = decision(nameless)[1]
    assert refusal is not None and refusal.message == "tool None is not allowed for key 'scoped'"
    not_a_string = b'{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":["get_time"]}}'
    refusal = decision(not_a_string)[1]
    assert refusal is not None and refusal.outcome == "forbidden_tool"


def modern_body(tool: str, method: str = "tools/call", key: str = "name") -> bytes:
    params = {key: tool, "arguments": {}, "_meta": META}
    return json.dumps({"jsonrpc": "2.0", "id": 9, "method": method, "params": params}).encode()


def test_routing_headers_that_contradict_the_body_are_a_header_mismatch() -> None:
    body = modern_body("add")
    call, refusal = decision(body, (b"tools/call", b"get_time"))
    assert refusal is not None and (refusal.status, refusal.code, refusal.outcome) == (
        400,
        HEADER_MISMATCH,
        "header_mismatch",
    )
    assert refusal.message == "header mismatch: the Mcp-Name header is 'get_time' but the body's params.name is 'add'"
    refusal = decision(body, (b"tools/list", None))[1]
    assert refusal is not None and refusal.code == -32020 and "Mcp-Method header is 'tools/list'" in refusal.message
    refusal = decision(body, (b"tools/call", None))[1]
    assert refusal is not None and refusal.code == -32020 and "no Mcp-Name header" in refusal.message
    refusal = decision(body, (b"tools/call", b"=?base64?not base64?="))[1]
    assert refusal is not None and refusal.code == -32020 and "base64" in refusal.message
    # Headers that agree: the allowlist decides. A base64-encoded name is compared decoded.
    assert decision(modern_body("get_time"), (b"tools/call", b"get_time"))[1] is None
    encoded = b"=?base64?" + base64.b64encode(b"get_time") + b"?="
    assert decision(modern_body("get_time"), (b"tools/call", encoded))[1] is None
    refusal = decision(body, (b"tools/call", b"add"))[1]
    assert refusal is not None and refusal.outcome == "forbidden_tool"


def test_mcp_name_is_checked_for_every_method_that_mirrors_a_param() -> None:
    read = modern_body("file:///etc/passwd", "resources/read", key="uri")
    refusal = decision(read, (b"resources/read", b"file:///tmp/public"))[1]
    assert refusal is not None and refusal.outcome == "header_mismatch" and "params.uri" in refusal.message
    assert decision(read, (b"resources/read", b"file:///etc/passwd"))[1] is None
    prompt = modern_body("secret_prompt", "prompts/get")
    assert decision(prompt, (b"prompts/get", b"public_prompt"))[1] is not None
    listing = modern_body("ignored", "tools/list")
    assert decision(listing, (b"tools/list", b"anything"))[1] is None  # tools/list mirrors nothing


def test_routing_headers_count_only_on_a_2026_era_request() -> None:
    base = [(b"mcp-method", b"tools/call"), (b"mcp-name", b"get_time")]
    modern = _scan([*base, (b"mcp-protocol-version", b"2026-07-28")])
    assert modern[5:] == (b"tools/call", b"get_time")
    later = _scan([(b"mcp-protocol-version", b"2027-01-01"), *base])  # a later revision validates them too
    assert later[5:] == (b"tools/call", b"get_time")
    for version in (b"2025-11-25", b"2025-06-18", b"2025-03-26", b"2024-11-05"):
        scanned = _scan([*base, (b"mcp-protocol-version", version)])
        assert scanned[5:] == (None, None), version  # its server ignores them: the body is read instead
        assert (b"mcp-method", b"tools/call") in scanned[0]  # and they still reach the server unchanged
    assert _scan(base)[5:] == (None, None)


def test_the_new_refusals_are_counted_as_limits() -> None:
    assert {"malformed", "header_mismatch", "forbidden_tool"} <= metrics.LIMIT_OUTCOMES


# ---- differential fuzzing against the official SDK's parsing ------------------------------------------

TOOLS = ["get_time", "add", "get_time ", "Get_time", "get_tim"]
METHODS = ["tools/call", "tools/call", "tools/call", "tools/list", "ping", "Tools/call", "tools/call "]
VALID_SPACE = ["", "", "", "", " ", "\t", "\n", "\r", "\r\n", " \t\n "]
OTHER_SPACE = ["\x0b", "\x0c", "\u00a0", "\u2028", "\ufeff", "\x00", "\x1c"]


@dataclass
class Framing:
    body: bytes
    headers: dict[str, str] | None  # the routing headers of a 2026-era request, None for a 2025-era one

    @property
    def routing(self) -> tuple[bytes, bytes | None] | None:
        if self.headers is None:
            return None
        name = self.headers.get("mcp-name")
        return self.headers["mcp-method"].encode("latin-1"), None if name is None else name.encode("latin-1")


class Pairs(list[tuple[str, Any]]):
    """A JSON object as written: its keys in order, repeated ones included."""


NAN = object()


@st.composite
def framings(draw: st.DrawFn) -> Framing:
    modern = draw(st.booleans())
    tool, method = draw(st.sampled_from(TOOLS)), draw(st.sampled_from(METHODS))
    params = Pairs([("name", tool), ("arguments", Pairs([("tz", "UTC")]))])
    if modern:
        params.append(("_meta", META))
    message = Pairs([("jsonrpc", "2.0"), ("id", draw(st.integers(0, 9))), ("method", method), ("params", params)])
    if draw(st.integers(0, 7)) == 0:
        message = Pairs(m for m in message if m[0] != "id")  # a notification
    message[:] = draw(st.permutations(message))
    params[:] = draw(st.permutations(params))
    for _ in range(draw(st.integers(0, 2)) if draw(st.integers(0, 3)) == 0 else 0):
        where = draw(st.sampled_from(["method", "params", "name", "arguments"]))
        if where in ("method", "params"):
            value: Any = draw(st.sampled_from(METHODS)) if where == "method" else Pairs([("name", "add")])
            message.insert(draw(st.integers(0, len(message))), (where, value))
        elif where == "name":
            params.insert(draw(st.integers(0, len(params))), ("name", draw(st.sampled_from(TOOLS))))
        else:
            params.insert(draw(st.integers(0, len(params))), ("arguments", Pairs([("tz", NAN)])))
    odd = draw(st.integers(0, 5)) == 0  # this framing gets whitespace JSON does not have, or a lone surrogate
    text = _write(draw, message, odd)
    shape = draw(st.integers(0, 19))
    if shape == 0:
        text = f"[{text}]"
    elif shape == 1:
        text = f"[{text},{_write(draw, Pairs([('jsonrpc', '2.0'), ('id', 5), ('method', 'ping')]), odd)}]"
    elif shape == 2:
        text = "\ufeff" + text
    encoding = draw(st.sampled_from(["utf-8"] * 12 + ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-8-sig"]))
    body = text.encode(encoding, "surrogatepass")
    if draw(st.integers(0, 24)) == 0:
        at = draw(st.integers(0, len(body)))
        body = body[:at] + draw(st.sampled_from([b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\x80"])) + body[at:]
    headers = None
    if modern:
        header_method = method if draw(st.integers(0, 3)) else draw(st.sampled_from(METHODS))
        headers = {"mcp-protocol-version": MODERN, "mcp-method": header_method}
        mirrored = draw(st.sampled_from(["same", "same", "same", "encoded", "other", "none"]))
        if mirrored in ("same", "encoded", "other"):
            name = tool if mirrored != "other" else draw(st.sampled_from(TOOLS))
            if mirrored == "encoded":
                name = f"=?base64?{base64.b64encode(name.encode()).decode()}?="
            headers["mcp-name"] = name
    return Framing(body, headers)


def _write(draw: st.DrawFn, value: Any, odd: bool) -> str:
    """`value` as JSON text, with whitespace, escapes and literals drawn for it (`odd`: now and then a space
    that is not JSON's or a string with a lone surrogate or a NUL)."""

    def space() -> str:
        if odd and draw(st.integers(0, 9)) == 0:
            return draw(st.sampled_from(OTHER_SPACE))
        return draw(st.sampled_from(VALID_SPACE))

    def string(text: str) -> str:
        out = []
        for char in text:
            how = draw(st.integers(0, 11))
            if how == 0:
                out.append(f"\\u{ord(char):04x}")
            elif how == 1:
                out.append(f"\\u{ord(char):04X}")
            elif how == 2 and char == "/":
                out.append("\\/")
            else:
                out.append(json.dumps(char)[1:-1])
        if odd and draw(st.integers(0, 9)) == 0:
            out.append(draw(st.sampled_from(["\\ud800", "\\udfff", "\\ud83d\\ude00", "\\u0000"])))
        return '"' + "".join(out) + '"'

    def write(item: Any) -> str:
        if isinstance(item, dict):
            item = Pairs(item.items())
        if isinstance(item, Pairs):
            members = [f"{space()}{string(k)}{space()}:{space()}{write(v)}{space()}" for k, v in item]
            return "{" + (",".join(members) if members else space()) + "}"
        if item is NAN:
            return draw(st.sampled_from(["NaN", "Infinity", "-Infinity"]))
        if isinstance(item, str):
            return string(item)
        return json.dumps(item)

    return space() + write(value) + space()


def sdk_reads(framing: Framing) -> list[tuple[str, Any]]:
    """What the official SDK's streamable-HTTP servers would act on for this POST, as (method, params), from
    the transport that serves its era: 2025 (pydantic-core parse, then the JSON-RPC message union) and, for a
    2026-era request, the stateless entry (json.loads, the request model, then its header checks)."""
    acted: list[tuple[str, Any]] = []
    try:
        message = jsonrpc_message_adapter.validate_python(pydantic_core.from_json(framing.body), by_name=False)
    except ValueError:  # pydantic's ValidationError is one
        pass
    else:
        if isinstance(message, JSONRPCRequest | JSONRPCNotification):
            acted.append((message.method, message.params))
    if framing.headers is not None:
        try:
            decoded = json.loads(framing.body)
        except (ValueError, RecursionError):
            return acted
        if isinstance(decoded, dict) and "id" not in decoded:
            return acted  # acknowledged with a 202 and dropped
        try:
            request = JSONRPCRequest.model_validate(decoded)
        except ValidationError:
            return acted
        verdict = classify_inbound_request(decoded, headers=framing.headers)
        if not isinstance(verdict, InboundLadderRejection):
            acted.append((request.method, request.params))
    return acted


def violation(framing: Framing, read: Any = describe) -> str | None:
    """What is wrong when the gateway forwards this framing (None when nothing is)."""
    call = read(framing.body)
    if judge(call, ALLOWED, "scoped", framing.routing) is not None:
        return None  # refused: the server never sees it
    for method, params in sdk_reads(framing):
        name = params.get("name") if isinstance(params, dict) else None
        if method != call.method:
            return f"the gateway judged method {call.method!r}, the server runs {method!r}"
        if method == "tools/call" and (name != call.tool or name not in ALLOWED):
            return f"the gateway judged tool {call.tool!r}, the server runs {name!r} (allowed: {sorted(ALLOWED)})"
        if framing.headers is not None and framing.headers["mcp-method"] != method:
            return f"forwarded under Mcp-Method {framing.headers['mcp-method']!r}, the server runs {method!r}"
    return None


FUZZ = settings(
    max_examples=1000, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)


@pytest.mark.fuzz
@FUZZ
@given(framings())
def test_what_the_gateway_forwards_is_what_the_sdk_executes(framing: Framing) -> None:
    assert violation(framing) is None, (violation(framing), framing)


@pytest.mark.fuzz
def test_the_fuzzer_finds_the_leading_whitespace_hole_of_the_old_reading() -> None:
    def old_describe(body: bytes) -> Call:
        # The reading before: a body not starting with { or [ was described as nothing to check.
        return Call() if body[:1] not in (b"{", b"[") else describe(body)

    found = find(
        framings(),
        lambda framing: violation(framing, old_describe) is not None,
        # The first counterexample is enough to show the hole: no time is spent shrinking it.
        settings=settings(max_examples=3000, database=None, derandomize=True, phases=[Phase.generate]),
    )
    assert found.body[:1] not in (b"{", b"[")  # the hole: what does not start with { or [
    assert "the server runs" in (violation(found, old_describe) or "")
    assert violation(found) is None  # and the reading now closes it
