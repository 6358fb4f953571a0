"""The upstream side of the `/mcp/{slug}` handler (gateway.proxy): forwarding a request to the server and
relaying its answer to the client's `Channel`. JSON answers whole (capped, a tools/list result filtered to
the key's allowlist), SSE streams as they arrive (keep-alive comments while idle, cut with a JSON-RPC
error past the size cap or the read timeout), and a complete answer that needs no rewriting straight from
the upstream connection's callback; `_Flight` carries a request `Gateway.forward_now` sent with no task.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from typing import Any

from gateway.channel import Channel, Disconnected
from gateway.jsonrpc import Call, SseToolFilter, _reply, filter_tools, rpc_error_body
from gateway.limits import Slots
from gateway.metering import Invocation, Meter
from gateway.routes import KeyGrant, Route
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

FORWARD_RESPONSE = frozenset(
    {b"content-type", b"cache-control", b"allow", b"retry-after", b"x-accel-buffering", b"content-language"}
)


class Relay:
    """What `Gateway` does once a request may be forwarded: a base of `Gateway`, whose attributes these are."""

    upstream: UpstreamPool
    sessions: SessionPins
    meter: Meter
    server_slots: Slots
    key_slots: Slots
    in_flight: int
    connect_timeout: float
    read_timeout: float
    keepalive: float
    max_response_bytes: int

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

    async def _send_error(self, out: Channel, inv: Invocation, status: int, message: str, request_id: Any) -> None:
        inv.status = status
        code = -32001 if status < 500 else -32000
        status, headers, body = _reply(status, rpc_error_body(message, code=code, request_id=request_id))
        inv.response_bytes = len(body)
        await out.respond(status, headers, body)


class _Flight:
    """A request `Gateway.forward_now` sent, until its answer is passed on (or handed to a task);
    `gateway` is that Gateway, seen as its Relay base."""

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
        gateway: Relay,
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
