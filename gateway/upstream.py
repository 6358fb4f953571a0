"""The gateway's HTTP/1.1 client for upstream MCP servers: pooled keep-alive connections, one write per
request, responses parsed by httptools (the parser uvicorn uses) and handed on chunk by chunk.

A general client (httpx) spends most of the gateway's time per call on what a proxy does not need:
URL merging, cookie jars, redirects, auth flows, header normalisation. This one does only what the
gateway needs: header bytes in and out unchanged, streamed bodies with backpressure, connect and read
timeouts, and a connection closed at once when the request is abandoned.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httptools

log = logging.getLogger("mcphost.gateway.upstream")

HIGH_WATER = 1024 * 1024  # buffered response bytes past which reading from the server pauses
MAX_HEADER_BYTES = 64 * 1024  # a server (hosted, untrusted) may not make the gateway hold more headers than this


class UpstreamError(Exception):
    """The server could not be reached, or broke the connection."""


class ConnectTimeout(UpstreamError):
    pass


class ReadTimeout(UpstreamError):
    pass


class TimedOut:
    """What `next_chunk` returns when its wait ran out."""


TIMED_OUT = TimedOut()


def _expire(wakeup: asyncio.Future[Any]) -> None:
    if not wakeup.done():
        wakeup.set_result(TIMED_OUT)


class UpstreamConnection(asyncio.Protocol):
    def __init__(self, pool: UpstreamPool, key: tuple[str, int]) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.closed = False
        # Looked up once: asyncio.get_running_loop() costs a system call (getpid) on every call.
        self.loop = asyncio.get_running_loop()
        self.timer: asyncio.TimerHandle | None = None  # the read timeout of the request under way
        self._reset()

    def _reset(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.headers: list[tuple[bytes, bytes]] = []
        self.header_bytes = 0
        self.head: asyncio.Future[None] = self.loop.create_future()
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.done = False
        self.keep_alive = False
        self.error: BaseException | None = None
        self.wakeup: asyncio.Future[Any] | None = None
        self.received = 0
        # Called with the connection when the whole answer has arrived, before the waiting request resumes; it
        # returns True when it took the answer (then `spliced`), so the client can have it with no task wakeup.
        self.on_complete: Callable[[UpstreamResponse], bool] | None = None
        self.spliced = False
        self.response: UpstreamResponse | None = None

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a TCP transport (asyncio's or uvloop's)

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"invalid HTTP from the server: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.done:
            self._fail(UpstreamError("the server closed the connection"))

    # -- httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value)
        if self.header_bytes > MAX_HEADER_BYTES:
            self._fail(UpstreamError(f"the server sent more than {MAX_HEADER_BYTES} bytes of headers"))
            self.close()
            return
        self.headers.append((name.lower(), value))  # names lower-cased once, here; values untouched

    def on_headers_complete(self) -> None:
        if not self.head.done():
            self.head.set_result(None)

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and self.transport is not None:
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.done = True
        self.keep_alive = self.parser.should_keep_alive()
        if self.on_complete is not None:
            take, self.on_complete = self.on_complete, None
            self.response = UpstreamResponse(self, self.parser.get_status_code())
            try:
                self.spliced = take(self.response)
            except Exception:  # never into the parser; the request's task then finds the answer taken, or not
                log.exception("handing on a complete answer failed")
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        self.error = exc
        self.on_complete = None
        if not self.head.done():
            self.head.set_exception(exc)
            self.head.exception()  # retrieved by whoever awaits it; never "never retrieved"
        self._wake()

    def head_timed_out(self, seconds: float) -> None:
        self.on_complete = None  # the request is answered with a timeout: nothing may answer it again
        if not self.head.done():
            self.head.set_exception(ReadTimeout(f"no answer within {seconds:g} s"))
            self.head.exception()  # retrieved: whoever awaits it still gets it

    def send(
        self, data: bytes, read_timeout: float | None, on_complete: Callable[[UpstreamResponse], bool] | None
    ) -> None:
        """Write a request (one write) and wait up to `read_timeout` seconds for its answer's head."""
        self.stop_timer()
        assert self.transport is not None
        # Written first: the server starts on it while this connection is made ready for the answer, which
        # cannot arrive before the loop runs again.
        self.transport.write(data)
        self._reset()
        self.on_complete = on_complete
        # A timer handle, not asyncio.timeout(): the same deadline for a fraction of the bookkeeping.
        if read_timeout is not None:
            self.timer = self.loop.call_later(read_timeout, self.head_timed_out, read_timeout)

    def stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _wake(self) -> None:
        if self.wakeup is not None and not self.wakeup.done():
            self.wakeup.set_result(None)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


def _encode(method: str, host: bytes, path: bytes, headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    lines = [method.encode(), b" ", path, b" HTTP/1.1\r\nhost: ", host, b"\r\n"]
    for name, value in headers:
        lines += [name, b": ", value, b"\r\n"]
    if body or method == "POST":
        lines += [b"content-length: ", str(len(body)).encode(), b"\r\n"]
    lines += [b"\r\n", body]
    return b"".join(lines)


class UpstreamResponse:
    def __init__(self, connection: UpstreamConnection, status: int) -> None:
        self._conn = connection
        self.status_code = status
        self.headers_raw = connection.headers
        self._closed = False

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._conn.loop

    @property
    def buffered(self) -> int:
        """Body bytes arrived and not handed out yet."""
        return self._conn.buffered

    @property
    def spliced(self) -> bool:
        """The answer was taken whole by the request's `on_complete` as it arrived."""
        return self._conn.spliced

    @property
    def finished(self) -> bool:
        """The whole body arrived and was handed out."""
        return self._conn.done and not self._conn.chunks

    def whole(self) -> bytes | None:
        """The whole body, taken at once, if all of it has arrived; else None (read it with next_chunk)."""
        conn = self._conn
        if not conn.done:
            return None
        chunks = conn.chunks
        data = b"" if not chunks else chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        if conn.buffered > HIGH_WATER and conn.transport is not None and not conn.closed:
            conn.transport.resume_reading()
        conn.buffered = 0
        return data

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers_raw:
            if key == name:
                return value
        return None

    async def next_chunk(self, timeout: float | None = None) -> bytes | None | TimedOut:
        """The next piece of the body as it arrived, None at its end, or TIMED_OUT when nothing came within
        `timeout` seconds (the connection stays usable: call again). Safe to cancel."""
        conn = self._conn
        while True:
            if conn.chunks:
                chunk = conn.chunks.popleft()
                conn.buffered -= len(chunk)
                if conn.buffered <= HIGH_WATER // 2 and conn.transport is not None and not conn.closed:
                    conn.transport.resume_reading()
                return chunk
            if conn.done:
                return None
            if conn.error is not None:
                raise conn.error
            wakeup = conn.wakeup = conn.loop.create_future()
            if timeout is None:
                await wakeup
                continue
            timer = wakeup.get_loop().call_later(timeout, _expire, wakeup)
            try:
                await wakeup
            finally:
                timer.cancel()
            if wakeup.result() is TIMED_OUT and not conn.chunks and not conn.done and conn.error is None:
                return TIMED_OUT

    def close(self) -> None:
        """Give the connection back when the whole answer was read and the server keeps it open; else close
        it, so a server still streaming to an abandoned request sees it gone at once."""
        if self._closed:
            return
        self._closed = True
        conn = self._conn
        if conn.done and conn.keep_alive and not conn.closed and conn.error is None:
            conn.pool.release(conn)
        else:
            conn.close()


class UpstreamPool:
    def __init__(self, *, max_idle_per_host: int = 64) -> None:
        self.max_idle_per_host = max_idle_per_host
        self._idle: dict[tuple[str, int], list[UpstreamConnection]] = {}
        self._targets: dict[str, tuple[tuple[str, int], bytes, bytes]] = {}
        # The loop requests run on, learnt from the first; asyncio.current_task(loop) then costs no system call.
        self.loop: asyncio.AbstractEventLoop | None = None

    def _target(self, url: str) -> tuple[tuple[str, int], bytes, bytes]:
        target = self._targets.get(url)
        if target is None:
            parts = urlsplit(url)
            if parts.scheme != "http" or not parts.hostname:
                raise UpstreamError(f"unsupported upstream URL {url!r}")
            port = parts.port or 80
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            if len(self._targets) > 10_000:
                self._targets.clear()
            target = self._targets[url] = ((parts.hostname, port), parts.netloc.encode(), path.encode())
        return target

    async def _connect(self, key: tuple[str, int], timeout: float) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(lambda: UpstreamConnection(self, key), key[0], key[1])
        except TimeoutError:
            raise ConnectTimeout(f"no connection within {timeout:g} s") from None
        except OSError as exc:
            raise UpstreamError(f"cannot connect: {exc.strerror or exc}") from None
        sock = conn.transport.get_extra_info("socket") if conn.transport is not None else None
        if sock is not None:
            try:  # asyncio sets it already; uvloop's socket stand-in may not take options at all
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except (OSError, AttributeError, TypeError):
                pass
        return conn

    def release(self, conn: UpstreamConnection) -> None:
        """Give an idle connection back to the pool (closed instead when the pool for its server is full)."""
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) >= self.max_idle_per_host:
            conn.close()
            return
        idle.append(conn)

    def _take_idle(self, key: tuple[str, int]) -> UpstreamConnection | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    def idle(self, url: str) -> UpstreamConnection | None:
        """An idle pooled connection to `url`'s server, taken from the pool (give it back with `release`, or
        send on it with `send`); None when there is none (or the URL is not one it can reach)."""
        try:
            return self._take_idle(self._target(url)[0])
        except UpstreamError:
            return None

    def send(
        self,
        conn: UpstreamConnection,
        method: str,
        url: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        *,
        read_timeout: float | None,
        on_complete: Callable[[UpstreamResponse], bool] | None = None,
    ) -> None:
        """Send the request on `conn` (from `idle`) at once, with no await. Its answer goes to `on_complete` if
        it arrives whole; `request(..., sent=conn)` takes over waiting for it otherwise (and sends it again on a
        fresh connection if this one turns out to have been closed by the server)."""
        _, host, path = self._target(url)
        conn.send(_encode(method, host, path, headers, body), read_timeout, on_complete)

    async def request(
        self,
        method: str,
        url: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        *,
        connect_timeout: float,
        read_timeout: float | None,
        on_complete: Callable[[UpstreamResponse], bool] | None = None,
        sent: UpstreamConnection | None = None,
    ) -> UpstreamResponse:
        key, host, path = self._target(url)
        for attempt in (0, 1):
            conn = sent if attempt == 0 else None
            reused = True
            if conn is None:
                conn = self._take_idle(key)
                reused = conn is not None
                if conn is None:
                    conn = await self._connect(key, connect_timeout)
                conn.send(_encode(method, host, path, headers, body), read_timeout, on_complete)
            try:
                await conn.head
            except ReadTimeout:
                conn.close()
                raise
            except UpstreamError:
                conn.close()
                # A kept-alive connection the server had closed meanwhile: nothing was processed, so the
                # request goes again, once, on a fresh connection.
                if reused and attempt == 0 and conn.received == 0:
                    continue
                raise
            except BaseException:
                conn.close()
                raise
            finally:
                conn.stop_timer()
                # From here the request reads the answer itself: whatever did not arrive with its head is no
                # longer handed to on_complete.
                conn.on_complete = None
            return conn.response or UpstreamResponse(conn, conn.parser.get_status_code())
        raise UpstreamError("the server closed the connection")  # pragma: no cover - loop always returns

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
