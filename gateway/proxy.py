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

The parts: gateway.channel (the client's side: `Channel`, `AsgiChannel`), gateway.jsonrpc (what a request
is and whether the key may send it: `describe`, `judge`, the tool filters), gateway.relay (forwarding and
relaying answers: `Relay`, a base of `Gateway`); this module checks a request and ties them together.
"""

from __future__ import annotations

import hmac
import logging
import time
from typing import Any

from core.security import sha256_hex
from gateway.channel import AsgiChannel, BodyStalled, Channel, Disconnected, Receive, Scope, Send
from gateway.jsonrpc import Call, _from_headers, _reply, describe, judge, rpc_error_body
from gateway.limits import Slots, TokenBuckets
from gateway.metering import Invocation, Meter
from gateway.relay import Relay, _Flight
from gateway.routes import KeyGrant, Miss, Route, RouteTable
from gateway.sessions import SessionPins
from gateway.upstream import UpstreamPool

log = logging.getLogger("mcphost.gateway")

PREFIX = "/mcp/"
# Request headers the server gets besides every `Mcp-*` one: what MCP and tracing define, nothing else.
FORWARD_REQUEST = frozenset(
    {b"accept", b"content-type", b"last-event-id", b"origin", b"user-agent", b"traceparent", b"tracestate"}
)
KEY_QUERY_NAMES = ("api_key", "apikey", "key", "token", "access_token")
ALLOWED_METHODS = b"GET, POST, DELETE"
# Versions of the handshake era, whose servers ignore Mcp-Method and Mcp-Name: on such a request (or one
# without MCP-Protocol-Version) those headers are never trusted, as the 2026-07-28 transport advises.
HANDSHAKE_VERSIONS = frozenset({b"2024-11-05", b"2025-03-26", b"2025-06-18", b"2025-11-25"})


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


class Gateway(Relay):
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
