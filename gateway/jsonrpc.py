"""What the `/mcp/{slug}` handler (gateway.proxy) reads of a JSON-RPC request and decides on it:
`describe` reads a POST body exactly as the server will (or says why it cannot be), `judge` says why a key
may not send it (a framing problem, a 2026-era Mcp-Method or Mcp-Name header that contradicts the body
(-32020), a tool the key's allowlist does not name); the JSON-RPC error answers of its refusals; and the
filters that leave only a key's allowed tools in a tools/list result, whole or in an SSE stream.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any

JSON_TYPE = (b"content-type", b"application/json")
# The methods whose param the Mcp-Name header mirrors (2026-07-28 transport, standard request headers).
NAMED_BY = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
# JSON-RPC error codes of the gateway's refusals (JSON-RPC 2.0; HeaderMismatch from MCP 2026-07-28).
PARSE_ERROR, INVALID_REQUEST, INVALID_PARAMS, HEADER_MISMATCH = -32700, -32600, -32602, -32020


@dataclass(slots=True)
class Call:
    """What the gateway read of one JSON-RPC request: enough to meter and to enforce a tool allowlist."""

    method: str | None = None
    tool: str | None = None  # the name a tools/call calls (None: absent or not a string)
    request_id: Any = None
    arguments: Any = None
    named: Any = None  # what Mcp-Name mirrors: params.name or params.uri of a method in NAMED_BY
    batch: bool = False
    unread: bytes | None = None  # a body described by its headers, whose id is read only when asked for
    problem: str | None = None  # why the body is not one JSON-RPC message the gateway can judge
    problem_code: int = PARSE_ERROR

    @property
    def id(self) -> Any:
        if self.unread is not None:
            self.request_id, self.unread = describe(self.unread).request_id, None
        return self.request_id


@dataclass(slots=True, frozen=True)
class Refusal:
    """Why a POST is not forwarded: the HTTP status, the JSON-RPC error and the outcome it is metered as."""

    status: int
    code: int
    message: str
    outcome: str


class _Duplicate(ValueError):
    pass


class _Constant(ValueError):
    pass


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Parsers disagree on a repeated key (the last wins in Python and pydantic, the first in others), so a
    # body with one has no single meaning to judge.
    found = dict(pairs)
    if len(found) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Duplicate(key)
            seen.add(key)
    return found


def _constant(name: str) -> Any:
    raise _Constant(name)


_DECODER = json.JSONDecoder(object_pairs_hook=_unique, parse_constant=_constant)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _malformed(problem: str, code: int = PARSE_ERROR, *, batch: bool = False) -> Call:
    return Call(problem=problem, problem_code=code, batch=batch)


def describe(body: bytes) -> Call:
    """What the server will act on in a POST body, read the way servers read it, or why it cannot be: the
    gateway judges exactly one JSON object in strict UTF-8 (RFC 8259), whose every string and key means one
    thing to any parser. What parsers disagree on (a byte-order mark, UTF-16 or UTF-32, bytes that are not
    UTF-8, repeated keys, NaN and Infinity, lone surrogates) and what MCP has no place for (a batch, a
    value that is not an object) is a `problem`, refused before it reaches the server."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _malformed(f"the body is not UTF-8 (byte {exc.start} is {body[exc.start : exc.start + 1]!r})")
    try:
        message = _DECODER.decode(text)
    except _Duplicate as exc:
        return _malformed(f"the key {exc.args[0]!r} appears twice in one object", INVALID_REQUEST)
    except _Constant as exc:
        return _malformed(f"{exc.args[0]} is not a JSON value")
    except (ValueError, RecursionError) as exc:
        if not text.strip(" \t\r\n"):
            return _malformed("the body is empty")
        if text[:1] == "\ufeff":
            return _malformed("the body starts with a byte-order mark")
        if "\x00" in text:
            return _malformed("the body has NUL characters (UTF-16 or UTF-32 text?); send UTF-8")
        return _malformed(f"the body is not JSON ({exc})" if isinstance(exc, ValueError) else "nested too deeply")
    if type(message) is not dict:
        if type(message) is list:
            return _malformed("a JSON-RPC batch; MCP sends one message per POST", INVALID_REQUEST, batch=True)
        return _malformed("the body is not a JSON-RPC message (a JSON object)", INVALID_REQUEST)
    if "\\u" in text and _SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(message):
        return _malformed("a string has a lone UTF-16 surrogate (\\ud800-\\udfff)")
    method = message.get("method")
    call = Call(method=method, request_id=message.get("id"))
    if method is None:
        return call  # a response or an error the client answers a server's request with
    if type(method) is not str:
        return _malformed("the method is not a string", INVALID_REQUEST)
    key = NAMED_BY.get(method)
    if key is not None:
        params = message.get("params")
        if type(params) is dict:
            call.named = params.get(key)
            if method == "tools/call":
                call.tool = call.named if type(call.named) is str else None
                call.arguments = params.get("arguments")
    return call


def _has_lone_surrogate(message: dict[str, Any]) -> bool:
    """Whether a string in the parsed body has a surrogate code point left unpaired (Python keeps it; pydantic
    refuses it; others replace it). A loop, not recursion: the body may be nested as deep as the parser
    allows."""
    pending: list[Any] = [message]
    while pending:
        value = pending.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(value, dict):
            pending.extend(value)
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
    return False


def judge(
    call: Call, tools: frozenset[str] | None, key_name: str, routing: tuple[bytes, bytes | None] | None = None
) -> Refusal | None:
    """Why a POST described by `describe` may not be forwarded, or None: a body the gateway cannot judge, a
    2026-era request whose routing headers (`routing`: Mcp-Method and Mcp-Name, given when the request is
    of that era and names its method) say something else than its body, or a tools/call of a tool the key's
    allowlist (`tools`) does not name."""
    if call.problem is not None:
        return Refusal(400, call.problem_code, f"malformed request: {call.problem}", "malformed")
    if routing is not None:
        mismatch = header_mismatch(call, *routing)
        if mismatch is not None:
            return Refusal(400, HEADER_MISMATCH, f"header mismatch: {mismatch}", "header_mismatch")
    if tools is not None and call.method == "tools/call" and call.tool not in tools:
        return Refusal(200, INVALID_PARAMS, f"tool {call.tool!r} is not allowed for key {key_name!r}", "forbidden_tool")
    return None


def header_mismatch(call: Call, rpc_method: bytes, rpc_name: bytes | None) -> str | None:
    """How a 2026-era request's Mcp-Method and Mcp-Name headers disagree with its body, or None; compared
    as the official SDK's server compares them (Mcp-Name is checked when the body has the param it mirrors,
    after decoding a `=?base64?...?=` value)."""
    method = rpc_method.decode("latin-1")
    if method != call.method:
        return f"the Mcp-Method header is {method!r} but the body's method is {call.method!r}"
    key = NAMED_BY.get(method)
    if key is None or call.named is None:
        return None
    if rpc_name is None:
        return f"no Mcp-Name header, but the body's params.{key} is {call.named!r}"
    name = header_value(rpc_name)
    if name is None:
        return "the Mcp-Name header is not valid =?base64?...?= text"
    if name != call.named:
        return f"the Mcp-Name header is {name!r} but the body's params.{key} is {call.named!r}"
    return None


def header_value(raw: bytes) -> str | None:
    """A header value as 2026-07-28 clients encode it: as is, or UTF-8 in `=?base64?...?=`; None when that
    encoding is broken."""
    if not (raw.startswith(b"=?base64?") and raw.endswith(b"?=") and len(raw) >= 11):
        return raw.decode("latin-1")
    payload = raw[9:-2]
    try:
        decoded = base64.b64decode(payload, validate=True)
        if base64.b64encode(decoded) != payload:  # only the canonical form, as the SDK's decoder
            return None
        return decoded.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None


def _from_headers(method: bytes, name: bytes | None, body: bytes) -> Call:
    text = method.decode("latin-1")
    tool = header_value(name) if name is not None and text == "tools/call" else None
    return Call(method=text, tool=tool, unread=body)


def rpc_error_body(message: str, *, code: int = -32001, request_id: Any = None) -> bytes:
    return json.dumps(
        {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}, separators=(",", ":")
    ).encode()


def filter_tools(message: Any, allowed: frozenset[str]) -> Any:
    """A tools/list result (or a batch of results) with only the allowed tools left in it."""
    if isinstance(message, list):
        return [filter_tools(m, allowed) for m in message]
    if isinstance(message, dict):
        result = message.get("result")
        if isinstance(result, dict) and isinstance(result.get("tools"), list):
            tools = [t for t in result["tools"] if isinstance(t, dict) and t.get("name") in allowed]
            return {**message, "result": {**result, "tools": tools}}
    return message


class SseToolFilter:
    """Rewrites the `data:` of SSE events that carry a tools/list result; other bytes pass unchanged."""

    def __init__(self, allowed: frozenset[str]) -> None:
        self.allowed = allowed
        self._pending = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self._pending + chunk.replace(b"\r\n", b"\n")
        head, sep, self._pending = data.rpartition(b"\n\n")
        if not sep:
            self._pending = data
            return b""
        return b"".join(self._event(e) + b"\n\n" for e in head.split(b"\n\n"))

    def flush(self) -> bytes:
        rest, self._pending = self._pending, b""
        return self._event(rest) if rest else b""

    def _event(self, event: bytes) -> bytes:
        lines = event.split(b"\n")
        data = [line[5:].removeprefix(b" ") for line in lines if line.startswith(b"data:")]
        if not data:
            return event
        try:
            message = json.loads(b"\n".join(data))
        except ValueError:
            return event
        filtered = filter_tools(message, self.allowed)
        if filtered is message:
            return event
        others = [line for line in lines if not line.startswith(b"data:")]
        return b"\n".join([*others, b"data: " + json.dumps(filtered, separators=(",", ":")).encode()])


def _reply(status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> tuple[int, list, bytes]:
    return status, [JSON_TYPE, (b"content-length", str(len(body)).encode()), *(headers or [])], body
