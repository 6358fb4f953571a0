"""The MCP data plane: the handler for `/mcp/{slug}` that forwards streamable-HTTP MCP traffic, a pure ASGI
app under any ASGI server, called directly by the gateway's own server (gateway.server) with the request's
exchange as its `Channel`.

What it does to a request, in order: refuse keys in the URL (400), refuse a browser Origin that is not
allowed (403), find the route (404), check the key (401) and its expiry and its rate (429), cap the body
(413), refuse a body it reads (each one but a 2026-era request's for a key with no tool allowlist and no
payload tracing) and cannot read exactly as the server will (400) and a 2026-era request whose Mcp-Method
or Mcp-Name header contradicts its body (400, -32020), check the key's tool allowlist
(JSON-RPC error), take a slot of the server's and of the key's concurrency (429), then forward. What MCP
defines passes byte-exact both ways (`Mcp-*` headers of both spec eras, `Last-Event-ID`, `Origin`, status
codes, `Allow`); the caller's credentials, cookies and hop-by-hop headers never do, and the server sees its
own `Host`. JSON answers are relayed whole (capped); SSE streams as they arrive, with keep-alive comments
while idle, cut with a JSON-RPC error past the size cap or the read timeout, and closed upstream the moment
the client goes away.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hmac
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from dataclasses import dataclass
from typing import Any, Protocol

from core.security import sha256_hex
from gateway.limits import Slots, TokenBuckets
from gateway.metering import Invocation, Meter
from gateway.routes import KeyGrant, Miss, Route, RouteTable
from gateway.sessions import SessionPins
from gateway.upstream import (
    ConnectTimeout,
    ReadTimeout,
    TimedOut,
    UpstreamConnection,
    UpstreamError,
    UpstreamPool,
    UpstreamResponse,
)

log = logging.getLogger("mcphost.gateway")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

PREFIX = "/mcp/"
# Request headers the server gets besides every `Mcp-*` one: what MCP and tracing define, nothing else.
FORWARD_REQUEST = frozenset(
    {b"accept", b"content-type", b"last-event-id", b"origin", b"user-agent", b"traceparent", b"tracestate"}
)
FORWARD_RESPONSE = frozenset(
    {b"content-type", b"cache-control", b"allow", b"retry-after", b"x-accel-buffering", b"content-language"}
)
KEY_QUERY_NAMES = ("api_key", "apikey", "key", "token", "access_token")
ALLOWED_METHODS = b"GET, POST, DELETE"
JSON_TYPE = (b"content-type", b"application/json")
WATCH_AFTER = 0.02  # seconds a forwarded request runs before the gateway watches for the client leaving
# Versions of the handshake era, whose servers ignore Mcp-Method and Mcp-Name: on such a request (or one
# without MCP-Protocol-Version) those headers are never trusted, as the 2026-07-28 transport advises.
HANDSHAKE_VERSIONS = frozenset({b"2024-11-05", b"2025-03-26", b"2025-06-18", b"2025-11-25"})
# The methods whose param the Mcp-Name header mirrors (2026-07-28 transport, standard request headers).
NAMED_BY = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
# JSON-RPC error codes of the gateway's refusals (JSON-RPC 2.0; HeaderMismatch from MCP 2026-07-28).
PARSE_ERROR, INVALID_REQUEST, INVALID_PARAMS, HEADER_MISMATCH = -32700, -32600, -32602, -32020


class BodyStalled(Exception):
    """The request body stopped arriving for longer than the channel's body timeout."""


class Disconnected(Exception):
    """The client went away."""


class Channel(Protocol):
    """How the handler reads its request's body and answers: `AsgiChannel` under any ASGI server, or the
    exchange of the gateway's own server (gateway.server), which does the same without ASGI messages."""

    async def read_body(self, limit: int) -> bytes | None:
        """The whole request body; None once it is larger than `limit`. Raises Disconnected."""
        ...

    async def respond(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """A whole answer (its headers carry its content-length)."""
        ...

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        """The head of a streamed answer."""
        ...

    async def body(self, data: bytes, more: bool = True) -> None:
        """Bytes of a streamed answer; `more=False` ends it."""
        ...

    def watch(self, on_gone: Callable[[], None]) -> None:
        """Call `on_gone` if the client goes away, until `unwatch`."""
        ...

    # Whether `respond_now` can answer outside the request's task (from another protocol's callback).
    immediate: bool

    def respond_now(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """`respond`, done at once (only when `immediate`)."""
        ...

    def unwatch(self) -> None: ...

    def adopt(self, answer: Coroutine[Any, Any, None]) -> None:
        """Run `answer` as the task that finishes this request's answer (only when `immediate`)."""
        ...


class AsgiChannel:
    """`Channel` over ASGI receive/send."""

    __slots__ = ("receive", "send", "body_timeout", "_timer", "_watcher")
    immediate = False  # an ASGI send is a coroutine: it cannot answer from a callback

    def __init__(self, receive: Receive, send: Send, body_timeout: float | None = None) -> None:
        self.receive = receive
        self.send = send
        self.body_timeout = body_timeout  # longest wait for each piece of the request body (None: no limit)
        self._timer: asyncio.TimerHandle | None = None
        self._watcher: asyncio.Task[None] | None = None

    async def read_body(self, limit: int) -> bytes | None:
        chunks: list[bytes] = []
        size = 0
        while True:
            if self.body_timeout is None:
                message = await self.receive()
            else:
                # The ASGI server has no such bound: a client that sends a head and then stops sending its body
                # would hold the request for ever. The clock restarts with each piece, as in gateway.server.
                try:
                    async with asyncio.timeout(self.body_timeout):
                        message = await self.receive()
                except TimeoutError:
                    raise BodyStalled from None
            if message["type"] == "http.disconnect":
                raise Disconnected
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    return None
                chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def respond(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        await self.send({"type": "http.response.start", "status": status, "headers": headers})
        await self.send({"type": "http.response.body", "body": body})

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        await self.send({"type": "http.response.start", "status": status, "headers": headers})

    def respond_now(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        raise RuntimeError("an ASGI channel answers only from its task")

    def adopt(self, answer: Coroutine[Any, Any, None]) -> None:
        answer.close()
        raise RuntimeError("an ASGI channel answers only from its task")

    async def body(self, data: bytes, more: bool = True) -> None:
        await self.send({"type": "http.response.body", "body": data, "more_body": more})

    def watch(self, on_gone: Callable[[], None]) -> None:
        # Most answers come back within milliseconds: a client gone by then costs one wasted answer at most,
        # so the watcher (a task of its own, reading ASGI messages) starts only once the request has taken
        # longer than that.
        self._timer = asyncio.get_running_loop().call_later(WATCH_AFTER, self._start_watching, on_gone)

    def _start_watching(self, on_gone: Callable[[], None]) -> None:
        self._watcher = asyncio.get_running_loop().create_task(self._watch(on_gone))

    async def _watch(self, on_gone: Callable[[], None]) -> None:
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                on_gone()
                return

    def unwatch(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._watcher is not None:
            self._watcher.cancel()


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


def _scan(
    headers: list[tuple[bytes, bytes]],
) -> tuple[
    list[tuple[bytes, bytes]], bytes | None, bytes | None, bytes | None, bytes | None, bytes | None, bytes | None
]:
    """A request's headers, read once: what goes to the server (every `Mcp-*` one and FORWARD_REQUEST), then
    Origin, the API key, Content-Length, Mcp-Session-Id, and Mcp-Method and Mcp-Name when the request is of
    the 2026 era (its MCP-Protocol-Version is not one of HANDSHAKE_VERSIONS), None otherwise."""
    origin = key = content_length = session_id = rpc_method = rpc_name = version = None
    forward: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        if name.startswith(b"mcp-"):
            forward.append((name, value))
            if name == b"mcp-session-id":
                session_id = value
            elif name == b"mcp-method":
                rpc_method = value
            elif name == b"mcp-name":
                rpc_name = value
            elif name == b"mcp-protocol-version":
                version = value
        elif name in FORWARD_REQUEST:
            forward.append((name, value))
            if name == b"origin":
                origin = value
        elif name == b"authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                key = key or token.strip()
        elif name == b"x-api-key":
            key = value.strip() or key
        elif name == b"content-length":
            content_length = value
    if rpc_method is not None and (version is None or version.strip() in HANDSHAKE_VERSIONS):
        rpc_method = rpc_name = None  # a server of that era reads the body alone
    return forward, origin, key, content_length, session_id, rpc_method, rpc_name


def _reply(status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> tuple[int, list, bytes]:
    return status, [JSON_TYPE, (b"content-length", str(len(body)).encode()), *(headers or [])], body


class Gateway:
    """The `/mcp/{slug}` handler. One per process; everything it holds is bounded."""

    def __init__(
        self,
        *,
        routes: RouteTable,
        upstream: UpstreamPool,
        meter: Meter,
        sessions: SessionPins,
        allowed_origins: frozenset[str],
        connect_timeout: float,
        read_timeout: float,
        keepalive: float,
        server_concurrency: int,
        key_concurrency: int,
        key_rate: float,
        key_burst: int,
        max_request_bytes: int,
        max_response_bytes: int,
        body_timeout: float | None = None,
    ) -> None:
        self.routes = routes
        self.upstream = upstream
        self.meter = meter
        self.sessions = sessions
        self.allowed_origins = frozenset(o.encode() for o in allowed_origins)
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.keepalive = keepalive
        self.server_slots = Slots(server_concurrency)
        self.key_slots = Slots(key_concurrency)
        self.buckets = TokenBuckets(key_rate, key_burst)
        self.max_request_bytes = max_request_bytes
        self.max_response_bytes = max_response_bytes
        self.body_timeout = body_timeout  # under ASGI: how long a request body may stop arriving before a 408
        self.in_flight = 0  # requests being forwarded now (the in-flight gauge reads it)
        self.forwarded_now = 0  # requests forwarded with no task (forward_now)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI application (under uvicorn)."""
        channel = AsgiChannel(receive, send, self.body_timeout)
        await self.handle(scope["method"], scope["path"], scope.get("query_string", b""), scope["headers"], channel)

    async def handle(
        self, method: str, path: str, query: bytes, headers: list[tuple[bytes, bytes]], out: Channel
    ) -> None:
        """One request to `path` (under PREFIX), answered through `out`."""
        started = time.perf_counter()
        inv = Invocation(http_method=method)
        try:
            await self._handle(method, path, query, headers, out, inv)
        except Disconnected:
            inv.outcome = "client_gone"
        finally:
            inv.duration_ms = (time.perf_counter() - started) * 1000
            self.meter.record(inv)

    async def _handle(
        self,
        method: str,
        path: str,
        query: bytes,
        headers: list[tuple[bytes, bytes]],
        out: Channel,
        inv: Invocation,
    ) -> None:
        slug = path[len(PREFIX) :]
        forward, origin, key, content_length, session_id, rpc_method, rpc_name = _scan(headers)

        if query and any(f"{n}=".encode() in query for n in KEY_QUERY_NAMES):
            return await self._refuse(
                out, inv, 400, "send the API key in the Authorization or X-API-Key header, never in the URL", "refused"
            )
        if origin is not None and not self._origin_allowed(origin):
            return await self._refuse(
                out, inv, 403, "this Origin may not call the gateway (GATEWAY_ALLOWED_ORIGINS)", "origin"
            )
        if method not in ("GET", "POST", "DELETE"):
            status, reply_headers, body = _reply(
                405, rpc_error_body(f"method {method} is not allowed here"), [(b"allow", ALLOWED_METHODS)]
            )
            inv.status, inv.outcome = 405, "refused"
            return await out.respond(status, reply_headers, body)

        cached = self.routes.cached(slug)
        route = cached if not isinstance(cached, Miss) else await self.routes.lookup(slug) if "/" not in slug else None
        if route is None:
            return await self._refuse(out, inv, 404, f"no MCP server at /mcp/{slug}", "not_found")
        inv.server_id = route.server_id
        grant = self._grant(route, key)
        if grant is None:
            return await self._refuse(
                out,
                inv,
                401,
                "missing or invalid API key for this server",
                "unauthorized",
                [(b"www-authenticate", b"Bearer")],
            )
        inv.key_name = grant.name
        if grant.expires_at is not None and grant.expires_at <= time.time():
            return await self._refuse(
                out,
                inv,
                401,
                f"API key {grant.name!r} has expired",
                "unauthorized",
                [(b"www-authenticate", b"Bearer")],
            )
        wait = self.buckets.take(grant.key_hash)
        if wait > 0:
            retry = str(max(1, int(wait + 0.999))).encode()
            return await self._refuse(
                out,
                inv,
                429,
                f"rate limit of key {grant.name!r} reached; retry later",
                "rate_limited",
                [(b"retry-after", retry)],
            )
        if not route.upstream_url:
            return await self._refuse(
                out, inv, 503, f"server '{slug}' is not running ({route.status}); deploy it first", "not_running"
            )

        body = b""
        if method == "POST":
            if content_length is not None and content_length.isdigit() and int(content_length) > self.max_request_bytes:
                return await self._refuse(
                    out, inv, 413, f"request body larger than {self.max_request_bytes} bytes", "too_large"
                )
            try:
                read = await out.read_body(self.max_request_bytes)
            except BodyStalled:
                return await self._refuse(
                    out,
                    inv,
                    408,
                    f"the request body stopped arriving for {self.body_timeout:g} s",
                    "body_stalled",
                    [(b"connection", b"close")],
                )
            if read is None:
                return await self._refuse(
                    out, inv, 413, f"request body larger than {self.max_request_bytes} bytes", "too_large"
                )
            body = read
        inv.request_bytes = len(body)
        trace = route.options.trace_payloads
        if method != "POST":
            call = Call()
        elif rpc_method is not None and grant.tools is None and not trace:
            # A 2026-era request names its method (and tool) in headers the server checks against the body:
            # metering needs nothing more, so the body is parsed only if an error must echo its id.
            call = _from_headers(rpc_method, rpc_name, body)
        else:
            # Whatever depends on the body is decided on what the server will read of it, and the headers
            # a 2026-era request routes by must say the same.
            call = describe(body)
            refusal = judge(call, grant.tools, grant.name, None if rpc_method is None else (rpc_method, rpc_name))
            if refusal is not None:
                inv.method, inv.tool = call.method, call.tool
                return await self._refuse(
                    out, inv, refusal.status, refusal.message, refusal.outcome, request_id=call.id, code=refusal.code
                )
        inv.method, inv.tool = call.method or (None if body else method), call.tool
        if trace:
            inv.trace = True
            inv.arguments = call.arguments

        server_limit = route.options.max_concurrency
        slot_key = grant.key_hash  # one per key; a str, whose hash is cached (a UUID's is not)
        if not self.server_slots.acquire(route.slug, server_limit):
            return await self._refuse(
                out,
                inv,
                429,
                f"too many requests in flight to '{slug}'; retry shortly",
                "server_busy",
                [(b"retry-after", b"1")],
                request_id=call.id,
            )
        if not self.key_slots.acquire(slot_key):
            self.server_slots.release(route.slug)
            return await self._refuse(
                out,
                inv,
                429,
                f"too many requests in flight with key {grant.name!r}; retry shortly",
                "key_busy",
                [(b"retry-after", b"1")],
                request_id=call.id,
            )
        self.in_flight += 1
        try:
            await self._forward(out, inv, route, grant, call, method, body, forward, session_id)
        finally:
            self.in_flight -= 1
            self.server_slots.release(route.slug)
            self.key_slots.release(slot_key)

    def forward_now(
        self, method: str, path: str, query: bytes, headers: list[tuple[bytes, bytes]], body: bytes, out: Channel
    ) -> bool:
        """Forward the most common request with no task and no await, from the callback that completed it: a
        whole POST (a 2026-era one, or one in a session while no revision of the server drains; not an
        `initialize`) to a cached route, with a key that has no tool allowlist, under every limit, sent on an
        idle pooled connection. Its answer goes back to the client from the upstream connection's callback,
        and the books are kept there too. Anything else is False, with nothing taken or sent: `handle` then
        takes the request from the start (and answers refusals itself). The checks are the ones `_handle`
        makes, in the same order; an answer that cannot be passed on whole (a stream, over the size cap, a
        timeout, a server that closed the connection) is handed to a task running `_forward`, as if it had
        sent the request itself."""
        started = time.perf_counter()
        if method != "POST" or query or not out.immediate:
            return False
        forward, origin, key, _, session_id, rpc_method, rpc_name = _scan(headers)
        if origin is not None and not self._origin_allowed(origin):
            return False
        route = self.routes.cached(path[len(PREFIX) :])
        if route is None or isinstance(route, Miss) or not route.upstream_url or route.options.trace_payloads:
            return False
        if session_id is not None and route.draining:
            return False  # the session may be pinned to an older revision: a lookup that may need the database
        grant = self._grant(route, key)
        if grant is None or grant.tools is not None or len(body) > self.max_request_bytes:
            return False
        if grant.expires_at is not None and grant.expires_at <= time.time():
            return False
        call = _from_headers(rpc_method, rpc_name, body) if rpc_method is not None else describe(body)
        if call.problem is not None:
            return False  # `handle` refuses it
        if call.method == "initialize":
            return False  # its answer opens a session, which the gateway pins
        conn = self.upstream.idle(route.upstream_url)
        if conn is None:
            return False
        slot_key = grant.key_hash
        if self.buckets.take(slot_key) > 0:  # a refused take takes nothing: `handle` refuses it the same
            self.upstream.release(conn)
            return False
        if not self.server_slots.acquire(route.slug, route.options.max_concurrency):
            self.upstream.release(conn)
            return False
        if not self.key_slots.acquire(slot_key):
            self.server_slots.release(route.slug)
            self.upstream.release(conn)
            return False
        self.in_flight += 1
        self.forwarded_now += 1
        # Sent before the books are opened: on a machine whose idle CPUs halt, every microsecond before this
        # write costs the call more than itself. Nothing can answer before the loop runs again.
        self.upstream.send(
            conn,
            method,
            route.upstream_url,
            forward,
            body,
            read_timeout=route.options.read_timeout_seconds or self.read_timeout,
        )
        inv = Invocation(http_method=method, server_id=route.server_id, key_name=grant.name)
        inv.method, inv.tool, inv.request_bytes = call.method or (None if body else method), call.tool, len(body)
        flight = _Flight(self, out, inv, route, grant, call, body, forward, session_id, conn, started)
        conn.on_complete = flight.complete
        out.watch(flight.gone)
        conn.head.add_done_callback(flight.headed)
        return True

    async def _resume(self, flight: _Flight) -> None:
        """The rest of a request `forward_now` sent, once its answer needs more than one callback."""
        try:
            await self._forward(
                flight.out,
                flight.inv,
                flight.route,
                flight.grant,
                flight.call,
                "POST",
                flight.body,
                flight.forward,
                flight.session_id,
                sent=flight.conn,
            )
        except Disconnected:
            flight.inv.outcome = "client_gone"
        finally:
            flight.end()

    def _origin_allowed(self, origin: bytes) -> bool:
        return origin.rstrip(b"/").lower() in self.allowed_origins

    def _grant(self, route: Route, key: bytes | None) -> KeyGrant | None:
        if not key or not key.isascii():
            return None
        digest = sha256_hex(key)
        grant = route.keys.get(digest)
        # The dict finds the candidate by the key's hash; the comparison that admits it is constant-time.
        if grant is None or not hmac.compare_digest(digest, grant.key_hash):
            return None
        return grant

    async def _forward(
        self,
        out: Channel,
        inv: Invocation,
        route: Route,
        grant: KeyGrant,
        call: Call,
        method: str,
        body: bytes,
        forward: list[tuple[bytes, bytes]],
        session_id: bytes | None,
        sent: UpstreamConnection | None = None,
    ) -> None:
        """Forward the request and relay the answer; with `sent`, the request already went out on that
        connection (`forward_now`) and this takes over waiting for its answer."""
        assert route.upstream_url is not None
        upstream_url, pinned = route.upstream_url, None
        if session_id is not None:
            pinned = await self.sessions.lookup(session_id, route)
            if pinned is not None:
                upstream_url = pinned.upstream_url
        options = route.options
        connect = options.connect_timeout_seconds or self.connect_timeout
        read_limit = options.read_timeout_seconds or self.read_timeout
        # An idle GET stream is kept, with keep-alives; a request waits at most the read timeout.
        read_timeout = None if method == "GET" else read_limit

        # With the loop given, current_task() skips looking the running loop up (a getpid system call).
        task = asyncio.current_task(upstream_loop := self.upstream.loop) or asyncio.current_task()
        assert task is not None
        loop = task.get_loop()
        if loop is not upstream_loop:
            self.upstream.loop = loop
        gone = False

        def on_gone() -> None:
            nonlocal gone
            if not gone:  # told once: the task is cancelled (and uncancelled) once
                gone = True
                task.cancel()

        out.watch(on_gone)
        splice = None
        if out.immediate and method != "GET" and grant.tools is None and not inv.trace:
            # The answer needs no rewriting: it goes to the client from the upstream connection's callback the
            # moment it is complete, and this task does the bookkeeping after (off the call's critical path).
            splice = functools.partial(self._splice, out, inv)
        upstream: UpstreamResponse | None = None
        try:
            try:
                upstream = await self.upstream.request(
                    method,
                    upstream_url,
                    forward,
                    body,
                    connect_timeout=connect,
                    read_timeout=read_timeout,
                    on_complete=splice,
                    sent=sent,
                )
            except (ConnectTimeout, ReadTimeout) as exc:
                phase = "connect to" if isinstance(exc, ConnectTimeout) else "answer from"
                limit = connect if phase == "connect to" else read_limit
                inv.outcome = "timeout"
                return await self._send_error(
                    out, inv, 504, f"no {phase} server '{route.slug}' within {limit:g} s", call.id
                )
            except UpstreamError as exc:
                if pinned is not None:
                    # The revision this session lived on is gone: the client must start a new session.
                    self.sessions.forget(session_id)
                    inv.outcome = "session_gone"
                    return await self._send_error(
                        out, inv, 404, "session ended with its revision; start a new session", call.id
                    )
                inv.outcome = "upstream_error"
                return await self._send_error(out, inv, 502, f"server '{route.slug}' did not answer: {exc}", call.id)
            inv.status = upstream.status_code
            new_session = upstream.header(b"mcp-session-id")
            if new_session and call.method == "initialize" and route.deployment_id is not None and pinned is None:
                self.sessions.pin(new_session, route, upstream_url)
            elif method == "DELETE" and session_id is not None and upstream.status_code < 300:
                self.sessions.end(session_id)
            content_type = upstream.header(b"content-type") or b""
            if upstream.spliced:
                if session_id is not None:
                    self.sessions.touch(session_id)
            elif content_type.startswith(b"text/event-stream"):
                if session_id is not None:
                    self.sessions.touch(session_id, streaming=True)
                try:
                    await self._relay_stream(
                        out, inv, upstream, _response_headers(upstream), grant, call, method, read_limit
                    )
                finally:
                    if session_id is not None:
                        self.sessions.touch(session_id, streaming=False)
            else:
                if session_id is not None:
                    self.sessions.touch(session_id)
                await self._relay_whole(out, inv, upstream, _response_headers(upstream), grant, call, route)
            if inv.outcome == "ok" and upstream.status_code >= 400:
                inv.outcome = "error"
        except asyncio.CancelledError:
            if not gone:
                raise
            task.uncancel()
            inv.outcome = "client_gone"
        except Disconnected:
            inv.outcome = "client_gone"
        finally:
            out.unwatch()
            if upstream is not None:
                upstream.close()

    def _splice(self, out: Channel, inv: Invocation, upstream: UpstreamResponse) -> bool:
        """Answer the client with the server's complete answer, as `_relay_whole` or `_relay_stream` would,
        from the upstream connection's callback; False (the task relays it) when it is over the size cap."""
        if upstream.buffered > self.max_response_bytes:
            return False
        headers = _response_headers(upstream)
        data = upstream.whole() or b""
        if not (upstream.header(b"content-type") or b"").startswith(b"text/event-stream"):
            headers.append((b"content-length", str(len(data)).encode()))
        inv.response_bytes = len(data)
        out.respond_now(upstream.status_code, headers, data)
        return True

    async def _relay_whole(
        self,
        out: Channel,
        inv: Invocation,
        upstream: UpstreamResponse,
        headers: list[tuple[bytes, bytes]],
        grant: KeyGrant,
        call: Call,
        route: Route,
    ) -> None:
        data = upstream.whole()  # usually the answer is all there already
        if data is None:
            # The rest must come within the read timeout too: a server that stops mid-answer is a hung one.
            read_limit = route.options.read_timeout_seconds or self.read_timeout
            deadline = upstream.loop.time() + read_limit
            chunks: list[bytes] = []
            size = 0
            while True:
                try:
                    chunk = await upstream.next_chunk(max(0.0, deadline - upstream.loop.time()))
                except UpstreamError as exc:
                    inv.outcome = "upstream_error"
                    return await self._send_error(
                        out, inv, 502, f"server '{route.slug}' broke off its answer: {exc}", call.id
                    )
                if chunk is None:
                    break
                if isinstance(chunk, TimedOut):
                    inv.outcome = "timeout"
                    return await self._send_error(
                        out, inv, 504, f"no whole answer from server '{route.slug}' within {read_limit:g} s", call.id
                    )
                size += len(chunk)
                if size > self.max_response_bytes:
                    break
                chunks.append(chunk)
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        else:
            size = len(data)
        if size > self.max_response_bytes:
            inv.outcome = "response_too_large"
            return await self._send_error(
                out, inv, 502, f"server's response is larger than {self.max_response_bytes} bytes", call.id
            )
        if grant.tools is not None and call.method == "tools/list" and data:
            try:
                data = json.dumps(filter_tools(json.loads(data), grant.tools), separators=(",", ":")).encode()
            except ValueError:
                pass
        if inv.trace and call.method == "tools/call":
            inv.result = data
        headers.append((b"content-length", str(len(data)).encode()))
        inv.response_bytes = len(data)
        await out.respond(upstream.status_code, headers, data)

    async def _relay_stream(
        self,
        out: Channel,
        inv: Invocation,
        upstream: UpstreamResponse,
        headers: list[tuple[bytes, bytes]],
        grant: KeyGrant,
        call: Call,
        method: str,
        read_limit: float,
    ) -> None:
        await out.start(upstream.status_code, headers)
        tool_filter = SseToolFilter(grant.tools) if grant.tools is not None and method == "POST" else None
        loop = upstream.loop
        last_data = loop.time()
        at_boundary = True  # only between events may a keep-alive comment go in
        traced = bytearray() if inv.trace and call.method == "tools/call" and method == "POST" else None
        size = 0
        try:
            while True:
                item: bytes | UpstreamError | None | TimedOut
                try:
                    item = await upstream.next_chunk(self.keepalive)
                except UpstreamError as exc:
                    item = exc
                if isinstance(item, TimedOut):
                    if method == "POST" and loop.time() - last_data >= read_limit:
                        inv.outcome = "timeout"
                        await out.body(
                            _sse_error(f"no answer from the server within {read_limit:g} s", call.id), more=False
                        )
                        return
                    if at_boundary:
                        await out.body(b": keep-alive\n\n")
                    continue
                if item is None:
                    tail = tool_filter.flush() if tool_filter is not None else b""
                    await out.body(tail, more=False)
                    return
                if isinstance(item, UpstreamError):
                    inv.outcome = "upstream_error"
                    message = f"the server's stream broke: {item}"
                    await out.body((b"" if at_boundary else b"\n\n") + _sse_error(message, call.id), more=False)
                    return
                last_data = loop.time()
                size += len(item)
                if method == "POST" and size > self.max_response_bytes:
                    inv.outcome = "response_too_large"
                    message = f"the server's response is larger than {self.max_response_bytes} bytes; cut"
                    await out.body((b"" if at_boundary else b"\n\n") + _sse_error(message, call.id), more=False)
                    return
                if traced is not None and len(traced) < 65536:
                    traced += item
                data = tool_filter.feed(item) if tool_filter is not None else item
                at_boundary = item.endswith(b"\n\n") or item.endswith(b"\r\n\r\n")
                if upstream.finished:
                    # The server's answer is complete (a POST's single event, usually): the end goes with it.
                    data += tool_filter.flush() if tool_filter is not None else b""
                    inv.response_bytes += len(data)
                    await out.body(data, more=False)
                    return
                inv.response_bytes += len(data)
                if data:
                    await out.body(data)
        finally:
            if traced is not None:
                inv.result = bytes(traced)

    async def _refuse(
        self,
        out: Channel,
        inv: Invocation,
        status: int,
        message: str,
        outcome: str,
        headers: list[tuple[bytes, bytes]] | None = None,
        request_id: Any = None,
        code: int = -32001,
    ) -> None:
        inv.status, inv.outcome = status, outcome
        status, all_headers, body = _reply(status, rpc_error_body(message, code=code, request_id=request_id), headers)
        inv.response_bytes = len(body)
        await out.respond(status, all_headers, body)

    async def _send_error(self, out: Channel, inv: Invocation, status: int, message: str, request_id: Any) -> None:
        inv.status = status
        code = -32001 if status < 500 else -32000
        status, headers, body = _reply(status, rpc_error_body(message, code=code, request_id=request_id))
        inv.response_bytes = len(body)
        await out.respond(status, headers, body)


class _Flight:
    """A request `Gateway.forward_now` sent, until its answer is passed on (or handed to a task)."""

    __slots__ = (
        "gateway",
        "out",
        "inv",
        "route",
        "grant",
        "call",
        "body",
        "forward",
        "session_id",
        "conn",
        "started",
        "state",
    )

    WAITING, DONE, HANDED = 0, 1, 2

    def __init__(
        self,
        gateway: Gateway,
        out: Channel,
        inv: Invocation,
        route: Route,
        grant: KeyGrant,
        call: Call,
        body: bytes,
        forward: list[tuple[bytes, bytes]],
        session_id: bytes | None,
        conn: UpstreamConnection,
        started: float,
    ) -> None:
        self.gateway, self.out, self.inv, self.route, self.grant = gateway, out, inv, route, grant
        self.call, self.body, self.forward, self.session_id = call, body, forward, session_id
        self.conn, self.started = conn, started
        self.state = self.WAITING

    def complete(self, upstream: UpstreamResponse) -> bool:
        """The whole answer arrived (the connection's on_complete): passed on as `_forward` would."""
        if self.state != self.WAITING or not self.gateway._splice(self.out, self.inv, upstream):
            return False  # over the size cap: `headed` hands it to a task, which answers as `_relay_whole` does
        self.state = self.DONE
        self.conn.stop_timer()
        inv = self.inv
        inv.status = upstream.status_code
        if upstream.status_code >= 400:
            inv.outcome = "error"
        upstream.close()  # the connection goes back to the pool
        if self.session_id is not None:
            self.gateway.sessions.touch(self.session_id)
        self.end()
        return True

    def headed(self, _: asyncio.Future[None]) -> None:
        """The answer's head arrived, or the request failed before it: unless `complete` took the whole answer
        already, a task takes over, as if `_forward` had sent the request."""
        if self.state != self.WAITING:
            return
        self.state = self.HANDED
        self.conn.on_complete = None
        self.out.unwatch()
        self.out.adopt(self.gateway._resume(self))

    def gone(self) -> None:
        """The client went away while the server worked: the server's connection is closed at once."""
        if self.state != self.WAITING:
            return
        self.state = self.DONE
        self.conn.on_complete = None
        self.conn.stop_timer()
        self.conn.close()
        self.inv.outcome = "client_gone"
        self.end()

    def end(self) -> None:
        gateway, inv = self.gateway, self.inv
        self.out.unwatch()
        gateway.in_flight -= 1
        gateway.server_slots.release(self.route.slug)
        gateway.key_slots.release(self.grant.key_hash)
        inv.duration_ms = (time.perf_counter() - self.started) * 1000
        gateway.meter.record(inv)


def _response_headers(upstream: UpstreamResponse) -> list[tuple[bytes, bytes]]:
    """What of the server's answer headers the client gets: what MCP defines, nothing else."""
    return [(n, v) for n, v in upstream.headers_raw if n in FORWARD_RESPONSE or n.startswith(b"mcp-")]


def _sse_error(message: str, request_id: Any) -> bytes:
    return b"event: message\ndata: " + rpc_error_body(message, code=-32000, request_id=request_id) + b"\n\n"
