"""One client connection of the gateway's own server (gateway.server): requests parsed by httptools as they
arrive, pipelined ones answered in order, a small `POST` to `/mcp/` forwarded from the connection's callback
when it can be, anything else run as a task; reading paused and resumed for backpressure, refusals written
in place."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections import deque
from collections.abc import Coroutine
from typing import Any, Protocol

import httptools

from gateway.channel import Message
from gateway.exchange import BODY_HIGH_WATER, DISCARD_LIMIT, EAGER_BODY, MAX_HEAD_BYTES, STATUS_LINES, Exchange
from gateway.jsonrpc import rpc_error_body
from gateway.proxy import PREFIX, Gateway


class Server(Protocol):
    """What a connection uses of the server that accepted it (gateway.server.GatewayServer)."""

    native: Gateway | None
    keep_alive: float
    loop: asyncio.AbstractEventLoop
    connections: set[GatewayProtocol]
    tasks: set[asyncio.Task[None]]
    closing: bool
    settled: asyncio.Event | None

    async def dispatch(self, exchange: Exchange) -> None: ...


log = logging.getLogger("mcphost.gateway.server")


class GatewayProtocol(asyncio.Protocol):
    """One client connection."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.gone = False
        self.paused_reading = False
        self.paused_writing = False
        self._drain: asyncio.Future[None] | None = None
        self.current: Exchange | None = None  # the exchange being answered
        self.pending: deque[Exchange] = deque()  # pipelined exchanges, in order
        self.reading: Exchange | None = None  # the exchange whose request is being parsed
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self.idle_since: float | None = None  # when the connection began waiting for a request (None: busy)
        # When the request being read last got body bytes (None: no body awaited, or reading paused on purpose).
        self.body_since: float | None = None
        self._expect = False
        self._length: bytes | None = None
        self.discarding: Exchange | None = None  # answered early; the rest of its body is dropped as it comes
        self.discarded = 0
        self.eager: Exchange | None = None  # a request to try forwarding at once, once the data at hand is parsed

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
        exchange = Exchange(self, self._headers)
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
    def _start(self, exchange: Exchange, *, eager: bool = False) -> None:
        self.current = exchange
        if eager and exchange.method == "POST" and self.server.native is not None and exchange.path.startswith(PREFIX):
            self.eager = exchange
            return
        self._spawn(exchange)

    def _forward_now(self, exchange: Exchange) -> bool:
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

    def _spawn(self, exchange: Exchange, answer: Coroutine[Any, Any, None] | None = None) -> None:
        exchange.task = self.loop.create_task(self._run(exchange, answer))
        self.server.tasks.add(exchange.task)
        exchange.task.add_done_callback(self.server.tasks.discard)

    async def _run(self, exchange: Exchange, answer: Coroutine[Any, Any, None] | None = None) -> None:
        try:
            await (answer if answer is not None else self.server.dispatch(exchange))
        except Exception:
            log.exception("gateway request %s %s failed", exchange.method, exchange.path)
            if not exchange.started and not self.gone:
                body = json.dumps(
                    {"jsonrpc": "2.0", "id": None, "error": {"code": -32603, "message": "internal gateway error"}}
                ).encode()
                exchange.keep_alive = False
                await exchange.send(response_start(500, body))
                await exchange.send({"type": "http.response.body", "body": body})
                return
        if not exchange.finished and not self.gone:
            # The handler returned without finishing its answer: the client cannot tell where it ends.
            self.close()

    def exchange_done(self, exchange: Exchange) -> None:
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


def response_start(status: int, body: bytes, content_type: bytes = b"application/json") -> Message:
    return {
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())],
    }
