"""The gateway's own HTTP/1.1 server (gateway/server.py, what `mcphost gateway` runs), over real sockets.

Handlers here are small ASGI functions, so each HTTP behaviour is seen alone: one write per answer,
pipelining, 100-continue, chunked bodies, limits on heads and idle connections, a client going away,
backpressure, early answers, HEAD, the built-in routes, errors and shutdown. The gateway itself through
this server is covered by test_gateway.py and test_conformance.py (their `lean` cases), and the
`mcphost gateway` command by test_gateway_process.py.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httptools
import httpx
import pytest

from gateway.exchange import MAX_HEAD_BYTES
from gateway.server import GatewayServer

Handler = Callable[[Any, Any, Any], Awaitable[None]]


async def answer(send: Any, status: int, body: bytes, *extra: tuple[bytes, bytes]) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def echo(scope: Any, receive: Any, send: Any) -> None:
    """Answers with what it was asked: method, path, query, headers and the whole body."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    seen = {
        "method": scope["method"],
        "path": scope["path"],
        "query": scope["query_string"].decode(),
        "headers": {k.decode(): v.decode() for k, v in scope["headers"]},
        "body": body.decode(),
    }
    await answer(send, 200, json.dumps(seen).encode())


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[int]]]:
    servers: list[GatewayServer] = []

    async def start(handler: Handler, **options: Any) -> int:
        server = GatewayServer(handler, **options)
        servers.append(server)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        return await server.listen(sock=sock)

    yield start
    for server in servers:
        await server.shutdown(grace=2)


class Raw:
    """A client on a bare socket: bytes out exactly as given, answers parsed by httptools."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.buffer = b""

    @classmethod
    async def connect(cls, port: int) -> Raw:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def response(self, *, head: bool = False) -> tuple[int, dict[bytes, bytes], bytes, int]:
        """The next answer: status, headers, body and how many reads it took to arrive whole."""
        got: dict[str, Any] = {"headers": {}, "body": b"", "done": False}

        class Callbacks:
            def on_header(self, name: bytes, value: bytes) -> None:
                got["headers"][name.lower()] = value

            def on_body(self, body: bytes) -> None:
                got["body"] += body

            def on_headers_complete(self) -> None:
                if head:
                    got["done"] = True

            def on_message_complete(self) -> None:
                got["done"] = True

        parser = httptools.HttpResponseParser(Callbacks())
        reads = 0
        data, self.buffer = self.buffer, b""
        while True:
            # Small reads go in a byte at a time, so parsing stops where an answer ends and whatever follows
            # (the next pipelined answer) is kept for the next call; large ones are one answer's body.
            step = 1 if len(data) < 4096 else len(data)
            while data:
                parser.feed_data(data[:step])
                data = data[step:]
                if got["done"]:
                    self.buffer = data
                    return parser.get_status_code(), got["headers"], got["body"], reads
            data = await asyncio.wait_for(self.reader.read(65536), 10)
            reads += 1
            if not data:
                raise ConnectionError("closed before a whole answer")

    async def closed(self) -> bool:
        """Whether the server closes the connection (EOF) within a few seconds."""
        try:
            while await asyncio.wait_for(self.reader.read(65536), 10):
                pass
        except (ConnectionError, TimeoutError):
            return False
        return True

    async def aclose(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass


def request(method: str, path: str, body: bytes = b"", *headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "host: test", f"content-length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def test_an_answer_leaves_in_one_write_with_its_head(serve: Any) -> None:
    port = await serve(echo)
    client = await Raw.connect(port)
    try:
        client.send(request("POST", "/mcp/x?a=1", b'{"jsonrpc":"2.0"}', "mcp-method: tools/call"))
        status, headers, body, _ = await client.response()
        assert status == 200 and headers[b"content-length"] == str(len(body)).encode()
        seen = json.loads(body)
        assert seen["path"] == "/mcp/x" and seen["query"] == "a=1" and seen["body"] == '{"jsonrpc":"2.0"}'
        assert seen["headers"]["mcp-method"] == "tools/call"
        # Head and body in one segment: the client's first read holds the whole answer.
        for _ in range(20):
            client.send(request("POST", "/mcp/x", b"{}"))
            assert (await client.response())[3] == 1
    finally:
        await client.aclose()


async def test_pipelined_requests_are_answered_in_order(serve: Any) -> None:
    async def slow_first(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        if scope["path"].endswith("/1"):
            await asyncio.sleep(0.3)
        await answer(send, 200, scope["path"].encode())

    port = await serve(slow_first)
    client = await Raw.connect(port)
    try:
        client.send(b"".join(request("POST", f"/mcp/{n}", b"{}") for n in (1, 2, 3)))
        bodies = [(await client.response())[2] for _ in range(3)]
        assert bodies == [b"/mcp/1", b"/mcp/2", b"/mcp/3"]
    finally:
        await client.aclose()


async def test_expect_100_continue_and_a_chunked_body(serve: Any) -> None:
    port = await serve(echo)
    client = await Raw.connect(port)
    try:
        head = "POST /mcp/x HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\nexpect: 100-continue\r\n\r\n"
        client.send(head.encode())
        interim = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), 10)
        assert interim.startswith(b"HTTP/1.1 100 Continue")
        client.send(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        status, _, body, _ = await client.response()
        assert status == 200 and json.loads(body)["body"] == "hello world"
    finally:
        await client.aclose()


async def test_oversized_and_malformed_heads_are_refused_and_closed(serve: Any) -> None:
    port = await serve(echo)
    big = await Raw.connect(port)
    try:
        big.send(request("GET", "/mcp/x", b"", "x-filler: " + "a" * (MAX_HEAD_BYTES + 10)))
        status, headers, _, _ = await big.response()
        assert status == 431 and headers[b"connection"] == b"close"
        assert await big.closed()
    finally:
        await big.aclose()
    bad = await Raw.connect(port)
    try:
        bad.send(b"NOT HTTP AT ALL\r\n\r\n")
        status, _, _, _ = await bad.response()
        assert status == 400
        assert await bad.closed()
    finally:
        await bad.aclose()


async def test_idle_connections_and_dripping_heads_are_closed(serve: Any) -> None:
    port = await serve(echo, keep_alive=0.5)
    idle = await Raw.connect(port)
    try:
        idle.send(request("POST", "/mcp/x", b"{}"))
        assert (await idle.response())[0] == 200
        assert await idle.closed()  # nothing more asked: closed after keep_alive
    finally:
        await idle.aclose()
    drip = await Raw.connect(port)
    try:
        closed = asyncio.create_task(drip.closed())
        for piece in (b"POST /mcp/x HTTP/1.1\r\n", b"host: t\r\n", b"x-a: 1\r\n", b"x-b: 2\r\n"):
            if closed.done():
                break
            drip.send(piece)
            await asyncio.sleep(0.2)
        assert await closed  # a head still incomplete after keep_alive is not waited for
    finally:
        await drip.aclose()


async def test_a_stalled_request_body_gets_408_while_a_slow_one_goes_through(serve: Any) -> None:
    port = await serve(echo, keep_alive=1.0)
    stalled = await Raw.connect(port)
    try:  # a head promising 10 body bytes, then 3 of them and nothing more
        stalled.send(b'POST /mcp/x HTTP/1.1\r\nhost: t\r\ncontent-length: 10\r\n\r\n{"a')
        status, headers, body, _ = await stalled.response()
        assert status == 408 and headers[b"connection"] == b"close"
        assert "stopped arriving for 1 s" in json.loads(body)["error"]["message"]
        assert await stalled.closed()
    finally:
        await stalled.aclose()
    slow = await Raw.connect(port)
    try:  # a body that keeps coming, a piece every 0.2 s for longer than keep_alive in all, is waited for
        payload = b'{"text": "a body sent slowly"}'
        slow.send(b"POST /mcp/x HTTP/1.1\r\nhost: t\r\ncontent-length: %d\r\n\r\n" % len(payload))
        for start in range(0, len(payload), 4):
            await asyncio.sleep(0.2)
            slow.send(payload[start : start + 4])
        status, _, body, _ = await slow.response()
        assert status == 200 and json.loads(body)["body"] == payload.decode()
    finally:
        await slow.aclose()


async def test_a_pipelined_request_whose_body_stalls_lets_the_answer_before_it_finish(serve: Any) -> None:
    async def slow_first(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] == "/mcp/slow":
            await asyncio.sleep(2.0)  # longer than keep_alive, while the next request's body stalls
        await echo(scope, receive, send)

    port = await serve(slow_first, keep_alive=0.5)
    client = await Raw.connect(port)
    try:
        stalled = b'POST /mcp/x HTTP/1.1\r\nhost: t\r\ncontent-length: 10\r\n\r\n{"a'
        client.send(request("POST", "/mcp/slow", b"{}") + stalled)
        status, _, body, _ = await client.response()
        assert status == 200 and json.loads(body)["path"] == "/mcp/slow"
        status, headers, _, _ = await client.response()
        assert status == 408 and headers[b"connection"] == b"close"
        assert await client.closed()
    finally:
        await client.aclose()


async def test_a_client_waiting_for_100_continue_is_not_held_to_the_body_bound(serve: Any) -> None:
    async def reads_late(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(2.0)  # longer than keep_alive before it asks for the body
        await echo(scope, receive, send)

    port = await serve(reads_late, keep_alive=1.0)
    waiting = await Raw.connect(port)
    try:
        waiting.send(b"POST /mcp/x HTTP/1.1\r\nhost: t\r\ncontent-length: 2\r\nexpect: 100-continue\r\n\r\n")
        interim = await asyncio.wait_for(waiting.reader.readuntil(b"\r\n\r\n"), 10)
        assert interim.startswith(b"HTTP/1.1 100 Continue")
        waiting.send(b"{}")
        status, _, body, _ = await waiting.response()
        assert status == 200 and json.loads(body)["body"] == "{}"
    finally:
        await waiting.aclose()


async def test_a_client_going_away_is_seen_at_once(serve: Any) -> None:
    seen: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def waits(scope: Any, receive: Any, send: Any) -> None:
        await receive()  # the body
        message = await receive()  # then nothing until the client leaves
        seen.set_result(message["type"])

    port = await serve(waits)
    for how in ("close", "half-close"):
        if seen.done():
            seen = asyncio.get_running_loop().create_future()
        client = await Raw.connect(port)
        client.send(request("POST", "/mcp/x", b"{}"))
        await asyncio.sleep(0.1)
        if how == "close":
            await client.aclose()
        else:
            client.writer.write_eof()
        assert await asyncio.wait_for(seen, 5) == "http.disconnect"
        await client.aclose()


async def test_a_slow_reader_holds_the_stream_back_instead_of_filling_memory(serve: Any) -> None:
    sent = {"bytes": 0}
    finished = asyncio.Event()

    async def streams(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        chunk = b"x" * 65536
        for _ in range(400):  # 25 MiB
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            sent["bytes"] += len(chunk)
        await send({"type": "http.response.body", "body": b""})
        finished.set()

    port = await serve(streams)
    client = await Raw.connect(port)
    try:
        client.send(request("GET", "/mcp/stream"))

        async def stalls() -> int:
            last = -1
            while sent["bytes"] != last:
                last = sent["bytes"]
                await asyncio.sleep(0.3)
            return last

        held = await asyncio.wait_for(stalls(), 20)
        # The client reads nothing: the handler's send waits once the socket and a bounded buffer are full.
        assert held < 16 * 1024 * 1024 and not finished.is_set()
        status, headers, body, _ = await client.response()
        assert status == 200 and headers[b"transfer-encoding"] == b"chunked"
        assert len(body) == 400 * 65536 and finished.is_set()
    finally:
        await client.aclose()


async def test_a_stream_head_leaves_before_its_first_event(serve: Any) -> None:
    release = asyncio.Event()

    async def later(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await release.wait()
        await send({"type": "http.response.body", "body": b"data: {}\n\n"})

    port = await serve(later)
    client = await Raw.connect(port)
    try:
        client.send(request("GET", "/mcp/x"))
        status, headers, _, _ = await client.response(head=True)
        assert status == 200 and headers[b"content-type"] == b"text/event-stream"
        release.set()
        rest = await asyncio.wait_for(client.reader.readuntil(b"0\r\n\r\n"), 10)
        assert b"data: {}" in rest
    finally:
        await client.aclose()


async def test_an_early_answer_is_read_by_a_client_still_sending(serve: Any) -> None:
    async def refuses(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(0.05)  # as a route lookup would: the body keeps coming meanwhile
        await answer(send, 413, b'{"error":"too large"}')

    port = await serve(refuses)
    async with httpx.AsyncClient(timeout=30) as http:
        for _ in range(2):  # the second request must not get the connection the first one ended
            response = await http.post(f"http://127.0.0.1:{port}/mcp/x", content=b"x" * 6_000_000)
            assert response.status_code == 413 and response.headers["connection"] == "close"


async def test_head_requests_get_no_body(serve: Any) -> None:
    port = await serve(echo)
    client = await Raw.connect(port)
    try:
        client.send(request("HEAD", "/mcp/x"))
        status, headers, _, _ = await client.response(head=True)
        assert status == 200 and int(headers[b"content-length"]) > 0
        client.send(request("POST", "/mcp/next", b"{}"))  # nothing of a body came between the two
        status, _, body, _ = await client.response()
        assert status == 200 and json.loads(body)["path"] == "/mcp/next"
    finally:
        await client.aclose()


async def test_health_metrics_and_unknown_paths(serve: Any) -> None:
    port = await serve(echo, health=lambda: {"status": "ok", "routes_listening": True})
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        health = await http.get("/healthz")
        assert health.status_code == 200 and health.json() == {"status": "ok", "routes_listening": True}
        metrics = await http.get("/metrics")
        assert metrics.status_code == 200 and "mcphost_gateway_requests" in metrics.text
        assert metrics.headers["content-type"].startswith("text/plain")
        missing = await http.post("/api/servers", json={})
        assert missing.status_code == 404 and "/mcp/<slug>" in missing.json()["detail"]


async def test_a_failing_handler_gets_a_500_and_an_unfinished_one_a_closed_connection(serve: Any) -> None:
    async def fails(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"].endswith("/raise"):
            raise RuntimeError("boom")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})

    port = await serve(fails)
    client = await Raw.connect(port)
    try:
        client.send(request("POST", "/mcp/raise", b"{}"))
        status, headers, body, _ = await client.response()
        assert status == 500 and json.loads(body)["error"]["code"] == -32603
        assert await client.closed()
    finally:
        await client.aclose()
    unfinished = await Raw.connect(port)
    try:
        unfinished.send(request("POST", "/mcp/half", b"{}"))
        assert await unfinished.closed()  # the client cannot tell where the answer ends: no keep-alive
    finally:
        await unfinished.aclose()


async def test_shutdown_lets_requests_in_flight_finish_and_stops_accepting(serve: Any) -> None:
    started = asyncio.Event()

    async def takes_a_while(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        started.set()
        await asyncio.sleep(0.5)
        await answer(send, 200, b"{}")

    server = GatewayServer(takes_a_while)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = await server.listen(sock=sock)
    client = await Raw.connect(port)
    idle = await Raw.connect(port)
    try:
        client.send(request("POST", "/mcp/x", b"{}"))
        await asyncio.wait_for(started.wait(), 5)
        stopping = asyncio.create_task(server.shutdown(grace=10))
        status, _, _, _ = await client.response()
        assert status == 200
        assert await idle.closed()
        await asyncio.wait_for(stopping, 10)
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)
    finally:
        await client.aclose()
        await idle.aclose()


async def test_a_header_with_a_line_break_cannot_split_the_answer(serve: Any) -> None:
    async def injects(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await answer(send, 200, b"{}", (b"x-note", b"fine\r\nx-injected: 1"), (b"x-kept", b"yes"))

    port = await serve(injects)
    client = await Raw.connect(port)
    try:
        client.send(request("POST", "/mcp/x", b"{}"))
        status, headers, body, _ = await client.response()
        assert status == 200 and body == b"{}" and headers[b"x-kept"] == b"yes"
        assert b"x-injected" not in headers and b"x-note" not in headers
    finally:
        await client.aclose()
