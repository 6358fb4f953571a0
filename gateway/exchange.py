"""One request and its answer on a connection of the gateway's own server (gateway.server): the request's
body as it arrives, the answer's head and body as they are written, spoken both as ASGI (`receive`/`send`)
and as the gateway's `Channel`; with the limits on what a request may send and the status lines."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from http import HTTPStatus
from typing import Any, Protocol

from gateway.channel import Disconnected, Message


class Connection(Protocol):
    """What an exchange uses of its client connection (gateway.connection.GatewayProtocol)."""

    loop: asyncio.AbstractEventLoop
    gone: bool
    paused_writing: bool
    body_since: float | None

    def write(self, data: bytes) -> None: ...

    async def drained(self) -> None: ...

    def resume_reading(self) -> None: ...

    def exchange_done(self, exchange: Exchange) -> None: ...

    def _spawn(self, exchange: Exchange, answer: Coroutine[Any, Any, None] | None = None) -> None: ...


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


class Exchange:
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

    def __init__(self, conn: Connection, headers: list[tuple[bytes, bytes]]) -> None:
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
