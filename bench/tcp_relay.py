"""A bare TCP relay: every byte from a client to one upstream address and back, nothing parsed.

`bench/gateway.py` runs it as a third path beside "direct" and "gateway": the cost any separate proxy
process has on the machine (one more process to schedule, two more loopback hops per call) before it
does any HTTP, authentication or metering. The gateway can come close to it, never beat it.

    python bench/tcp_relay.py LISTEN_PORT UPSTREAM_PORT
"""

from __future__ import annotations

import asyncio
import sys

try:
    import uvloop
except ImportError:  # pragma: no cover - uvicorn[standard] brings it
    uvloop = None  # type: ignore[assignment]


class _Upstream(asyncio.Protocol):
    def __init__(self, client: asyncio.Transport) -> None:
        self.client = client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.client.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.close()


class _Client(asyncio.Protocol):
    def __init__(self, port: int) -> None:
        self.port = port
        self.pending: list[bytes] | None = []
        self.upstream: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        upstream, _ = await loop.create_connection(lambda: _Upstream(self.transport), "127.0.0.1", self.port)
        for data in self.pending or []:
            upstream.write(data)
        self.pending, self.upstream = None, upstream

    def data_received(self, data: bytes) -> None:
        if self.upstream is None:
            assert self.pending is not None
            self.pending.append(data)
        else:
            self.upstream.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None:
            self.upstream.close()


async def serve(listen_port: int, upstream_port: int) -> None:
    server = await asyncio.get_running_loop().create_server(lambda: _Client(upstream_port), "127.0.0.1", listen_port)
    await server.serve_forever()


if __name__ == "__main__":
    runner = uvloop.run if uvloop is not None else asyncio.run
    runner(serve(int(sys.argv[1]), int(sys.argv[2])))
