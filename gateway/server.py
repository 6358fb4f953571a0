"""The HTTP/1.1 server of `mcphost gateway`: the gateway's own, lean, in front of the same handler.

A general ASGI server spends, per request, about as much CPU as the gateway's whole handler: scope and
state dicts, an event and a response-cycle object, header validation by regular expression, and two
socket writes per answer (the head, then the body). This server does only what the gateway needs:

- requests parsed by httptools (the parser uvicorn uses), headers lower-cased and kept as bytes;
- each request runs as one task (but see below); `gateway.proxy.Gateway` is the same code under both servers: under
  uvicorn it answers through ASGI messages, here the request's exchange is its `Channel` and is called
  directly (no message dicts, and a client leaving is told to the request at once, with no watcher);
  any other handler gets ASGI `receive`/`send`; `/healthz` and `/metrics` are answered in place;
- a complete upstream answer the gateway passes on unchanged is written to the client from the upstream
  connection's callback (`Channel.respond_now`), before the request's task even resumes;
- a `POST` to `/mcp/` is not given a task at once: once its body is in (a small one, by its
  content-length, is waited for by the connection), `Gateway.forward_now` may forward it from this
  connection's callback and answer it from the upstream one, with no task at all; a request it declines
  gets its task then, and one it cannot finish alone is handed back to a task (`Channel.adopt`);
- an answer's head is held until its first body bytes and written with them in one call (a stream's
  head still leaves in the same loop iteration it was sent; a head with a content-length leaves with
  its body);
- bodies streamed both ways with backpressure: reading pauses while a request body waits unread, and a
  stream's `send` waits while the client is slow to take what was written;
- a client that goes away (or closes its sending side) is seen at once (`http.disconnect`); pipelined
  requests are answered in order; idle keep-alive connections are closed after `keep_alive` seconds (a
  head must arrive within that too, and a body that stops arriving for as long gets 408); oversized or
  malformed heads get 431/400 and the connection is closed; an answer given before its request's body
  arrived says `connection: close`, and the rest of the body is read and dropped first, so the client,
  still sending, reads it rather than a reset;
- on shutdown it stops accepting, lets requests in flight finish, with or without a task (up to a grace
  period), then closes.

`mcphost up` and `mcphost api` keep uvicorn, which serves the API and the gateway on one port.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from http import HTTPStatus
from typing import Any

import httptools
from prometheus_client import CONTENT_TYPE_LATEST

from gateway import metrics
from gateway.channel import Disconnected, Message
from gateway.jsonrpc import rpc_error_body
from gateway.proxy import PREFIX, Gateway

log = logging.getLogger("mcphost.gateway.server")

MAX_HEAD_BYTES = 64 * 1024  # request line and headers together
BODY_HIGH_WATER = 256 * 1024  # unread request body bytes past which reading from the client pauses
EAGER_BODY = 64 * 1024  # a request body up to this size (by its content-length) is awaited before the handler runs
DISCARD_LIMIT = 64 * 1024 * 1024  # body bytes of an already answered request read and dropped before closing


def _status_line(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase.encode()
    except ValueError:
        phrase = b""
    return b"HTTP/1.1 %d %s\r\n" % (status, phrase)


STATUS_LINES = {status: _status_line(status) for status in range(100, 600)}


class _Exchange:
    """One request and its answer on a connection."""

    __slots__ = (
        "conn",
        "method",
        "path",
        "query",
        "headers",
        "keep_alive",
        "http10",
        "unread",
        "body_size",
        "complete",
        "delivered",
        "waiter",
        "expect_continue",
        "started",
        "finished",
        "chunked",
        "head",
        "task",
        "on_gone",
        "length",
    )

    def __init__(self, conn: GatewayProtocol, headers: list[tuple[bytes, bytes]]) -> None:
        self.conn = conn
        self.method = ""
        self.path = ""
        self.query = b""
        self.headers = headers
        self.keep_alive = True
        self.http10 = False
        self.unread: deque[bytes] = deque()
        self.body_size = 0
        self.complete = False  # the whole request body has arrived
        self.delivered = False  # ... and was handed to the handler
        self.waiter: asyncio.Future[None] | None = None
        self.expect_continue = False
        self.started = False  # the answer's head was sent (or is held)
        self.finished = False  # the answer is complete
        self.chunked = False
        self.head: bytes | None = None  # the answer's head, held until its first body bytes
        self.task: asyncio.Task[None] | None = None
        self.on_gone: Callable[[], None] | None = None  # told when the client goes away (Channel.watch)
        self.length = EAGER_BODY + 1  # the body's content-length, when it has one

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    # -- ASGI
    async def receive(self) -> Message:
        conn = self.conn
        while not conn.gone and not self.delivered:
            if self.unread or self.complete:
                data = self.unread[0] if len(self.unread) == 1 else b"".join(self.unread)
                self.unread.clear()
                self.body_size = 0
                if not self.complete:
                    conn.resume_reading()
                if data or self.complete:
                    self.delivered = self.complete
                    return {"type": "http.request", "body": data, "more_body": not self.complete}
            if self.expect_continue:
                self._continue()
            await self._wait()
        # The whole body was handed out: the next message is the client leaving.
        while not conn.gone:
            await self._wait()
        return {"type": "http.disconnect"}

    def _continue(self) -> None:
        self.expect_continue = False
        self.conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.conn.body_since = self.conn.loop.time()  # the client was waiting for this before sending its body

    async def _wait(self) -> None:
        self.waiter = self.conn.loop.create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.begin(int(message["status"]), message.get("headers", ()))
            return
        if kind != "http.response.body":
            raise RuntimeError(f"unexpected ASGI message {kind!r}")
        more = bool(message.get("more_body", False))
        self.write_body(message.get("body", b""), more)
        if more and self.conn.paused_writing:
            await self.conn.drained()

    # -- the gateway's Channel (gateway.channel): the same as ASGI without building and reading messages
    async def read_body(self, limit: int) -> bytes | None:
        conn = self.conn
        chunks: list[bytes] = []
        size = 0
        while True:
            if conn.gone:
                raise Disconnected
            body = self.unread
            if body:
                size += self.body_size
                if size > limit:
                    return None
                chunks.extend(body)
                body.clear()
                self.body_size = 0
                if not self.complete:
                    conn.resume_reading()
            if self.complete:
                self.delivered = True
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
            if self.expect_continue:
                self._continue()
            await self._wait()

    immediate = True

    async def respond(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.respond_now(status, headers, body)

    def respond_now(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.begin(status, headers)
        self.write_body(body, False)

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.begin(status, headers)

    async def body(self, data: bytes, more: bool = True) -> None:
        self.write_body(data, more)
        if more and self.conn.paused_writing:
            await self.conn.drained()

    def watch(self, on_gone: Callable[[], None]) -> None:
        if self.conn.gone:
            on_gone()
        else:
            self.on_gone = on_gone

    def unwatch(self) -> None:
        self.on_gone = None

    def adopt(self, answer: Coroutine[Any, Any, None]) -> None:
        self.conn._spawn(self, answer)

    # -- the answer
    def begin(self, status: int, headers: Iterable[tuple[bytes, bytes]]) -> None:
        conn = self.conn
        if conn.gone or self.finished:
            return
        if self.started:
            raise RuntimeError("the response was already started")
        self.started = True
        parts = [STATUS_LINES.get(status) or _status_line(status)]
        length = False
        for name, value in headers:
            if b"\n" in value or b"\r" in value or b"\n" in name or b"\r" in name:
                # Headers relayed from a (hostile) server were parsed by httptools, which refuses line
                # breaks in them; this keeps any that slipped through from splitting the answer.
                continue
            if name == b"content-length":
                length = True
            parts += [name, b": ", value, b"\r\n"]
        if not length and self.method != "HEAD" and status not in (204, 304) and status >= 200:
            if self.http10:
                self.keep_alive = False  # no chunked encoding in HTTP/1.0: the end is the connection's
            else:
                self.chunked = True
                parts.append(b"transfer-encoding: chunked\r\n")
        if not self.complete:
            # Answered before the request's body arrived (a refusal): the connection ends with this answer.
            self.keep_alive = False
        if not self.keep_alive:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        self.head = b"".join(parts)
        if not length:
            # A stream's head: written with its first bytes when they follow at once, else at the end of
            # this iteration, so the client sees the stream open before its first event. A head with a
            # length (a whole answer) leaves with its body.
            conn.loop.call_soon(self._flush_head)

    def write_body(self, body: bytes, more: bool) -> None:
        conn = self.conn
        if conn.gone or self.finished:
            return
        if not self.started:
            raise RuntimeError("the response body was sent before its start")
        if self.method == "HEAD":
            body = b""
        if self.chunked:
            out = b"%x\r\n%b\r\n" % (len(body), body) if body else b""
            if not more:
                out += b"0\r\n\r\n"
        else:
            out = body
        if self.head is not None:
            out, self.head = self.head + out, None
        if out:
            conn.write(out)
        if not more:
            self.finished = True
            self.wake()
            conn.exchange_done(self)

    def _flush_head(self) -> None:
        if self.head is not None and not self.conn.gone:
            head, self.head = self.head, None
            self.conn.write(head)


Handler = Callable[[Any, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]


class GatewayProtocol(asyncio.Protocol):
    """One client connection."""

    def __init__(self, server: GatewayServer) -> None:
        self.server = server
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.gone = False
        self.paused_reading = False
        self.paused_writing = False
        self._drain: asyncio.Future[None] | None = None
        self.current: _Exchange | None = None  # the exchange being answered
        self.pending: deque[_Exchange] = deque()  # pipelined exchanges, in order
        self.reading: _Exchange | None = None  # the exchange whose request is being parsed
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self.idle_since: float | None = None  # when the connection began waiting for a request (None: busy)
        # When the request being read last got body bytes (None: no body awaited, or reading paused on purpose).
        self.body_since: float | None = None
        self._expect = False
        self._length: bytes | None = None
        self.discarding: _Exchange | None = None  # answered early; the rest of its body is dropped as it comes
        self.discarded = 0
        self.eager: _Exchange | None = None  # a request to try forwarding at once, once the data at hand is parsed

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a TCP transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except (OSError, AttributeError, TypeError):
                pass
        self.server.connections.add(self)
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.gone = True
        self.server.connections.discard(self)
        if self.server.settled is not None:
            self.server.settled.set()
        self._disarm_idle()
        for exchange in (self.current, self.reading, *self.pending):
            if exchange is not None:
                exchange.wake()
                if exchange.on_gone is not None:
                    exchange.on_gone()
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(400, "protocol upgrades are not served here")
        except httptools.HttpParserError:
            # A callback's exception reaches here wrapped by the parser: the head-size check is one.
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse(431, f"request head larger than {MAX_HEAD_BYTES} bytes")
            else:
                self._refuse(400, "invalid HTTP request")
        exchange = self.eager
        if exchange is not None:
            # A small body that did not come with its head follows at once (clients write the two apart):
            # it is waited for here rather than by a task, with no answer possible before it anyway.
            if not exchange.complete and exchange.length <= EAGER_BODY and not exchange.expect_continue:
                return
            self.eager = None
            if not (exchange.complete and self._forward_now(exchange)):
                self._spawn(exchange)

    def eof_received(self) -> bool | None:
        # The client closed its side: it is gone (as under uvicorn), and whatever it asked is abandoned at once,
        # upstream connections included. Returning None lets the transport close, which calls connection_lost.
        return None

    def pause_writing(self) -> None:
        self.paused_writing = True

    def resume_writing(self) -> None:
        self.paused_writing = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    # -- httptools callbacks
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._head_bytes = 0
        self._length = None

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value)
        if self._head_bytes > MAX_HEAD_BYTES:
            raise _HeadTooLarge
        name = name.lower()
        value = value.rstrip(b" \t")
        if name == b"content-length":
            self._length = value
        elif name == b"expect" and value.lower() == b"100-continue":
            self._expect = True
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        # The idle timer, armed while the connection waits for a request, also bounds how long its head may
        # take to arrive (a client dripping header bytes holds the connection no longer than an idle one).
        self._disarm_idle()
        exchange = _Exchange(self, self._headers)
        exchange.method = self.parser.get_method().decode("ascii", "replace")
        if b"?" in self._url or not self._url.startswith(b"/"):
            url = httptools.parse_url(self._url)
            exchange.path = url.path.decode("latin-1")
            exchange.query = url.query or b""
        else:
            exchange.path = self._url.decode("latin-1")
        exchange.http10 = self.parser.get_http_version() == "1.0"
        exchange.keep_alive = self.parser.should_keep_alive()
        exchange.expect_continue, self._expect = self._expect, False
        # A body is awaited from now on, unless the client waits for `100 Continue` first or reading is paused
        # (a pipelined request, waiting its turn).
        self.body_since = None if exchange.expect_continue or self.paused_reading else self.loop.time()
        if self._length is not None and self._length.isdigit() and len(self._length) < 10:
            exchange.length = int(self._length)
        self.reading = exchange
        if self.current is None:
            self._start(exchange, eager=True)
        else:
            self.pending.append(exchange)

    def on_body(self, body: bytes) -> None:
        exchange = self.reading
        if exchange is None:
            return
        if exchange is self.discarding:
            self.discarded += len(body)
            if self.discarded > DISCARD_LIMIT:
                self.close()
            return
        exchange.unread.append(body)
        exchange.body_size += len(body)
        if not self.paused_reading:
            self.body_since = self.loop.time()
        if exchange.body_size > BODY_HIGH_WATER:
            self._pause_reading()
        exchange.wake()

    def on_message_complete(self) -> None:
        self.body_since = None
        exchange = self.reading
        if exchange is None:
            return
        if exchange is self.discarding:
            self.reading = self.discarding = None
            self.close()
            return
        exchange.complete = True
        exchange.wake()
        self.reading = None
        if self.pending:
            self._pause_reading()  # pipelined requests wait their turn without reading more

    # -- exchanges
    def _start(self, exchange: _Exchange, *, eager: bool = False) -> None:
        self.current = exchange
        if eager and exchange.method == "POST" and self.server.native is not None and exchange.path.startswith(PREFIX):
            self.eager = exchange
            return
        self._spawn(exchange)

    def _forward_now(self, exchange: _Exchange) -> bool:
        native = self.server.native
        if native is None or self.gone or self.transport is None or self.transport.is_closing():
            return False
        unread = exchange.unread
        body = b"" if not unread else unread[0] if len(unread) == 1 else b"".join(unread)
        if not native.forward_now(exchange.method, exchange.path, exchange.query, exchange.headers, body, exchange):
            return False
        unread.clear()
        exchange.body_size = 0
        exchange.delivered = True
        return True

    def _spawn(self, exchange: _Exchange, answer: Coroutine[Any, Any, None] | None = None) -> None:
        exchange.task = self.loop.create_task(self._run(exchange, answer))
        self.server.tasks.add(exchange.task)
        exchange.task.add_done_callback(self.server.tasks.discard)

    async def _run(self, exchange: _Exchange, answer: Coroutine[Any, Any, None] | None = None) -> None:
        try:
            await (answer if answer is not None else self.server.dispatch(exchange))
        except Exception:
            log.exception("gateway request %s %s failed", exchange.method, exchange.path)
            if not exchange.started and not self.gone:
                body = json.dumps(
                    {"jsonrpc": "2.0", "id": None, "error": {"code": -32603, "message": "internal gateway error"}}
                ).encode()
                exchange.keep_alive = False
                await exchange.send(_start(500, body))
                await exchange.send({"type": "http.response.body", "body": body})
                return
        if not exchange.finished and not self.gone:
            # The handler returned without finishing its answer: the client cannot tell where it ends.
            self.close()

    def exchange_done(self, exchange: _Exchange) -> None:
        if exchange is not self.current:
            return
        self.current = None
        if self.server.settled is not None:
            self.server.settled.set()  # shutdown waits for answers under way
        if not exchange.complete:
            # Answered before its body arrived (a refusal, say 413): the rest of the body is read and dropped,
            # then the connection closes. Closing at once would reset it, and the client, still sending, would
            # never read the answer.
            self.discarding = exchange
            self.discarded = 0
            exchange.unread.clear()
            self._resume_reading()
            self._arm_idle()
            return
        if not exchange.keep_alive:
            self.close()
            return
        if self.pending:
            self._resume_reading()
            self._start(self.pending.popleft())
            return
        self._resume_reading()
        if self.reading is None:
            if self.server.closing:
                self.close()
            else:
                self._arm_idle()

    # -- transport helpers
    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.gone:
            self.transport.write(data)

    async def drained(self) -> None:
        if not self.paused_writing or self.gone:
            return
        self._drain = self.loop.create_future()
        await self._drain

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def resume_reading(self) -> None:
        if not self.pending:
            self._resume_reading()

    def _pause_reading(self) -> None:
        if not self.paused_reading and self.transport is not None:
            self.paused_reading = True
            self.transport.pause_reading()
            self.body_since = None  # the gateway holds the body back, not the client

    def _resume_reading(self) -> None:
        if self.paused_reading and self.transport is not None and not self.gone:
            self.paused_reading = False
            self.transport.resume_reading()
            if self.reading is not None:
                self.body_since = self.loop.time()

    def stalled(self) -> None:
        """A request body stopped arriving for keep_alive seconds: 408 if its answer has not begun, then close."""
        exchange = self.reading
        if exchange is not None and self.current is not None and exchange is not self.current:
            return  # a pipelined request: the answer under way goes out first; this one is refused in its turn
        self.eager = None
        if exchange is not None and not exchange.started and not self.gone:
            self._refuse(408, f"the request body stopped arriving for {self.server.keep_alive:g} s")
            exchange.started = exchange.finished = True  # nothing more may be written for it
        self.close()

    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD_BYTES:
            raise _HeadTooLarge

    def _refuse(self, status: int, message: str) -> None:
        body = rpc_error_body(message)  # shaped as every other refusal of the gateway's
        self.write(
            STATUS_LINES[status]
            + b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body)
            + body
        )
        self.close()

    # The server's sweeper closes connections idle for longer than keep_alive: a time stamp per request
    # instead of a timer armed and cancelled for each.
    def _arm_idle(self) -> None:
        self.idle_since = self.loop.time()

    def _disarm_idle(self) -> None:
        self.idle_since = None

    def shutdown(self) -> None:
        """Close now if idle; else after the answer under way."""
        if self.current is None and self.reading is None:
            self.close()


class _HeadTooLarge(Exception):
    pass


def _start(status: int, body: bytes, content_type: bytes = b"application/json") -> Message:
    return {
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())],
    }


class GatewayServer:
    """Serves `gateway` (the `/mcp/` handler) and the process's `/healthz` and `/metrics`."""

    def __init__(
        self,
        gateway: Gateway | Handler,
        *,
        health: Callable[[], dict[str, Any]] | None = None,
        keep_alive: float = 5.0,
    ) -> None:
        self.gateway = gateway
        # The gateway's handler is called directly, its exchange as the Channel; any other ASGI app via ASGI.
        self.native = gateway if isinstance(gateway, Gateway) else None
        self.health = health or (lambda: {"status": "ok"})
        self.keep_alive = keep_alive
        self.loop = asyncio.get_running_loop()
        self.connections: set[GatewayProtocol] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.closing = False
        self._servers: list[asyncio.Server] = []
        self._sweeper: asyncio.Task[None] | None = None
        self.settled: asyncio.Event | None = None  # while shutting down: set when an answer ends or a client goes

    async def listen(self, host: str | None = None, port: int = 0, *, sock: socket.socket | None = None) -> int:
        """Start accepting on host:port (or an already bound socket); returns the port."""
        if sock is not None:
            server = await self.loop.create_server(lambda: GatewayProtocol(self), sock=sock, backlog=1024)
        else:
            server = await self.loop.create_server(lambda: GatewayProtocol(self), host, port, backlog=1024)
        self._servers.append(server)
        if self._sweeper is None:
            self._sweeper = self.loop.create_task(self._sweep())
        return int(server.sockets[0].getsockname()[1])

    async def _sweep(self) -> None:
        """Close connections that waited for a request (or for the rest of its head) over keep_alive, and answer
        408 on those whose request body stopped arriving for as long."""
        interval = min(1.0, self.keep_alive / 4)
        while True:
            await asyncio.sleep(interval)
            now = self.loop.time()
            for conn in list(self.connections):
                if conn.idle_since is not None and now - conn.idle_since >= self.keep_alive:
                    conn.close()
                elif conn.body_since is not None and now - conn.body_since >= self.keep_alive:
                    conn.stalled()

    async def dispatch(self, exchange: _Exchange) -> None:
        path = exchange.path
        if path.startswith(PREFIX):
            if self.native is not None:
                await self.native.handle(exchange.method, path, exchange.query, exchange.headers, exchange)
                return
            scope = {
                "type": "http",
                "method": exchange.method,
                "path": path,
                "query_string": exchange.query,
                "headers": exchange.headers,
            }
            await self.gateway(scope, exchange.receive, exchange.send)
            return
        if path == "/healthz" and exchange.method == "GET":
            body = json.dumps(self.health()).encode()
            status, kind = 200, b"application/json"
        elif path == "/metrics" and exchange.method == "GET":
            body = metrics.render()
            status, kind = 200, CONTENT_TYPE_LATEST.encode()
        else:
            body = json.dumps({"detail": f"nothing at {path}; MCP servers are at {PREFIX}<slug>"}).encode()
            status, kind = 404, b"application/json"
        await _drain_request(exchange)
        await exchange.send(_start(status, body, kind))
        await exchange.send({"type": "http.response.body", "body": body})

    async def shutdown(self, grace: float = 30.0) -> None:
        """Stop accepting; let requests in flight finish for up to `grace` seconds; close everything."""
        self.closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        for server in self._servers:
            server.close()
        for conn in list(self.connections):
            conn.shutdown()
        deadline = self.loop.time() + grace
        while self.loop.time() < deadline:
            if self.tasks:
                await asyncio.wait(set(self.tasks), timeout=deadline - self.loop.time())
            elif any(conn.current is not None and not conn.gone for conn in self.connections):
                # Answers under way with no task of their own (forwarded from a callback): woken when one ends.
                self.settled = asyncio.Event()
                try:
                    await asyncio.wait_for(self.settled.wait(), deadline - self.loop.time())
                except TimeoutError:
                    break
            else:
                break
        for task in list(self.tasks):
            task.cancel()
        for conn in list(self.connections):
            conn.close()
        for server in self._servers:
            await server.wait_closed()


async def _drain_request(exchange: _Exchange) -> None:
    """Read (and drop) a request body, so the connection can carry the next request."""
    while not exchange.complete and not exchange.conn.gone:
        message = await exchange.receive()
        if message["type"] == "http.disconnect" or not message.get("more_body"):
            return
