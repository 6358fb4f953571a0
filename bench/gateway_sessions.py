"""The load generator's clients for bench/gateway.py and bench/gateway_cpu.py: RawSession (one request per
write, parsed by httptools, as wrk or h2load would) and HttpxSession (a real MCP client's cost)."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any
from urllib.parse import urlsplit

import httptools
import httpx

MODERN, LEGACY = "2026-07-28", "2025-11-25"
ACCEPT = "application/json, text/event-stream"
META = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "bench", "version": "1"},
}


class _Reply:
    """httptools callbacks gathering one response."""

    def __init__(self) -> None:
        self.headers: dict[bytes, bytes] = {}
        self.body: list[bytes] = []
        self.complete = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


class RawSession:
    """One client as a load generator is (wrk, h2load): each request written in one piece on its own
    keep-alive connection, the answer parsed by httptools, nothing else done. The same calls as
    HttpxSession for a fraction of the CPU, so on a small machine the client does not take the cores the
    server and the gateway need."""

    def __init__(self, url: str, era: str, key: str | None) -> None:
        parts = urlsplit(url)
        self.era, self.host, self.port, self.path = era, parts.hostname or "127.0.0.1", parts.port or 80, parts.path
        self.fixed = f"host: {parts.netloc}\r\naccept: {ACCEPT}\r\ncontent-type: application/json\r\n"
        if key:
            self.fixed += f"authorization: Bearer {key}\r\n"
        self.next_id = 0
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, body: bytes = b"", extra: str = "") -> tuple[int, _Reply]:
        assert self.reader is not None and self.writer is not None
        head = f"{method} {self.path} HTTP/1.1\r\n{self.fixed}{extra}content-length: {len(body)}\r\n\r\n"
        self.writer.write(head.encode() + body)
        reply = _Reply()
        parser = httptools.HttpResponseParser(reply)
        while not reply.complete:
            data = await self.reader.read(65536)
            if not data:
                raise RuntimeError("the connection closed mid-answer")
            parser.feed_data(data)
        return parser.get_status_code(), reply

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.era == MODERN:
            self.fixed += f"mcp-protocol-version: {MODERN}\r\nmcp-method: tools/call\r\nmcp-name: echo\r\n"
            return
        init = {
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}},
        }
        status, reply = await self.request("POST", json.dumps(init).encode())
        if status != 200 or b"mcp-session-id" not in reply.headers:
            raise RuntimeError(f"initialize failed: {status}")
        self.fixed += (
            f"mcp-session-id: {reply.headers[b'mcp-session-id'].decode()}\r\nmcp-protocol-version: {LEGACY}\r\n"
        )
        status, _ = await self.request("POST", b'{"jsonrpc":"2.0","method":"notifications/initialized"}')
        if status >= 300:
            raise RuntimeError(f"notifications/initialized failed: {status}")

    async def call(self) -> None:
        self.next_id += 1
        params: dict[str, Any] = {"name": "echo", "arguments": {"text": "bench"}}
        if self.era == MODERN:
            params["_meta"] = META
        body = {"jsonrpc": "2.0", "id": self.next_id, "method": "tools/call", "params": params}
        status, reply = await self.request("POST", json.dumps(body).encode())
        text = b"".join(reply.body)
        if status != 200 or b"echo: bench" not in text:
            raise RuntimeError(f"call failed: {status} {text[:200]!r}")

    async def close(self) -> None:
        if self.writer is None:
            return
        if self.era == LEGACY:
            await self.request("DELETE")
        self.writer.close()
        await self.writer.wait_closed()


class HttpxSession:
    """One client on httpx, as the MCP SDKs' clients are: its own connection; a 2025 session is initialized
    first."""

    def __init__(self, url: str, era: str, key: str | None) -> None:
        self.url, self.era = url, era
        self.headers = {"accept": ACCEPT, "content-type": "application/json"}
        if key:
            self.headers["authorization"] = f"Bearer {key}"
        # TCP_NODELAY: httpx writes headers and body apart, which Nagle would hold for the peer's delayed ACK.
        transport = httpx.AsyncHTTPTransport(
            limits=httpx.Limits(max_connections=1), socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
        )
        self.http = httpx.AsyncClient(timeout=30, transport=transport)
        self.next_id = 0

    async def open(self) -> None:
        if self.era == MODERN:
            self.headers.update({"mcp-protocol-version": MODERN, "mcp-method": "tools/call", "mcp-name": "echo"})
            return
        init = {
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}},
        }
        opened = await self.http.post(self.url, json=init, headers=self.headers)
        opened.raise_for_status()
        self.headers.update({"mcp-session-id": opened.headers["mcp-session-id"], "mcp-protocol-version": LEGACY})
        note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        (await self.http.post(self.url, json=note, headers=self.headers)).raise_for_status()

    async def call(self) -> None:
        self.next_id += 1
        params: dict[str, Any] = {"name": "echo", "arguments": {"text": "bench"}}
        if self.era == MODERN:
            params["_meta"] = META
        body = {"jsonrpc": "2.0", "id": self.next_id, "method": "tools/call", "params": params}
        response = await self.http.post(self.url, json=body, headers=self.headers)
        if response.status_code != 200 or "echo: bench" not in response.text:
            raise RuntimeError(f"call failed: {response.status_code} {response.text[:200]}")

    async def close(self) -> None:
        if "mcp-session-id" in self.headers:
            await self.http.delete(self.url, headers=self.headers)
        await self.http.aclose()


CLIENTS: dict[str, Any] = {"raw": RawSession, "httpx": HttpxSession}
