"""A client-side helper for tools that cannot send headers (the conformance suite): it adds the server's
API key to every request and relays everything else both ways as it comes, like the client would have."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import httpx
import uvicorn

HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"te", b"upgrade", b"host", b"content-length"}


class KeyProxy:
    def __init__(self, target: str, key: str) -> None:
        self.target = target
        self.key = key
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(60, read=None))
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[Any] | None = None
        self.port = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = [(k, v) for k, v in scope["headers"] if k not in HOP]
        headers.append((b"authorization", f"Bearer {self.key}".encode()))
        request = self.client.build_request(scope["method"], self.target, headers=headers, content=body)
        upstream = await self.client.send(request, stream=True)
        try:
            out = [(k, v) for k, v in upstream.headers.raw if k.lower() not in HOP]
            await send({"type": "http.response.start", "status": upstream.status_code, "headers": out})
            async for chunk in upstream.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await upstream.aclose()

    async def start(self) -> KeyProxy:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._server = uvicorn.Server(
            uvicorn.Config(self, log_level="warning", lifespan="off", timeout_graceful_shutdown=1)
        )
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            await asyncio.sleep(0.02)
        return self

    @property
    def url(self) -> str:
        return f"http://localhost:{self.port}/mcp"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            await self._task
        await self.client.aclose()
