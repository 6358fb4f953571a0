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

This module holds the listening server (accepting, the idle sweeper, dispatch, shutdown); a client connection
is in gateway.connection, one request and its answer in gateway.exchange.

`mcphost up` and `mcphost api` keep uvicorn, which serves the API and the gateway on one port.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

from gateway import metrics
from gateway.channel import Message
from gateway.connection import GatewayProtocol, response_start
from gateway.exchange import Exchange
from gateway.proxy import PREFIX, Gateway

Handler = Callable[[Any, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]


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

    async def dispatch(self, exchange: Exchange) -> None:
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
        await exchange.send(response_start(status, body, kind))
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


async def _drain_request(exchange: Exchange) -> None:
    """Read (and drop) a request body, so the connection can carry the next request."""
    while not exchange.complete and not exchange.conn.gone:
        message = await exchange.receive()
        if message["type"] == "http.disconnect" or not message.get("more_body"):
            return
