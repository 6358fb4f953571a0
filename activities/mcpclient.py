"""The MCP client the platform itself speaks to a tenant's server with: the health check, the supervisor's
probe and evaluation calls.

The client runs on a worker, where the loopback and the platform's networks reach other tenants' servers,
the API and the database, and what a server answers is hostile input. So it talks to the address the
platform recorded for the instance and to nothing else: a redirect is never followed (the SDK on its own
follows one that stays on the endpoint's origin, whatever the HTTP client says, so the transport refuses
every 3xx before the SDK sees it), no request leaves for another URL, proxy settings in the environment do
not apply, and the bytes a server may send in one conversation are bounded. A refusal ends the conversation
as a `RefusedAnswer` saying why, not as whatever the SDK makes of it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

# Far above what a tool list or a tool's answer needs (capabilities are cut to 512 KiB, answers are scored on
# their first 64 KiB), far below what would strain a worker shared by many servers.
MAX_ANSWER_BYTES = 16 * 1024 * 1024

# Callers bound a whole conversation themselves; these only keep a lost connection from waiting forever.
_TIMEOUT = httpx2.Timeout(30.0, read=300.0)
_SHOWN_URL = 150


class RefusedAnswer(Exception):
    """The server answered something the platform does not accept: a redirect, an answer too large."""


def _shown(url: httpx2.URL) -> str:
    """A URL for a message: no userinfo, query or fragment (they can carry secrets), and not too long."""
    text = str(url.copy_with(userinfo=b"", query=None, fragment=None))
    return text if len(text) <= _SHOWN_URL else text[:_SHOWN_URL] + "..."


def _redirect(request: httpx2.Request, response: httpx2.Response) -> str:
    location = response.headers.get("location")
    where = hint = ""
    if location is not None:
        try:
            target = request.url.join(location)
        except httpx2.InvalidURL:
            where = " (redirect to an invalid location)"
        else:
            where = f" (redirect to {_shown(target)})"
            if (target.scheme, target.host, target.port) == (request.url.scheme, request.url.host, request.url.port):
                # Usually a trailing slash the server's framework adds: the fix is on the deployment's side.
                hint = f": if the server answers at {target.path[:_SHOWN_URL]}, give its source that path"
    return f"the server answered {response.status_code}{where}; the platform does not follow redirects{hint}"


class PlatformTransport(httpx2.AsyncBaseTransport):
    """Sends only to the recorded URL, refuses 3xx answers and compressed ones, and counts what is read."""

    def __init__(self, url: str, *, max_answer_bytes: int = MAX_ANSWER_BYTES) -> None:
        self.url = httpx2.URL(url)
        self.max_answer_bytes = max_answer_bytes
        self.received = 0
        # The first refusal: later errors are often its consequences (a session torn down), not the cause.
        self.refused: str | None = None
        self.inner = httpx2.AsyncHTTPTransport(trust_env=False)

    def refuse(self, reason: str) -> RefusedAnswer:
        if self.refused is None:
            self.refused = reason
        return RefusedAnswer(reason)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if request.url != self.url:
            raise self.refuse(f"the platform sends nothing to {_shown(request.url)}, only to {_shown(self.url)}")
        response = await self.inner.handle_async_request(request)
        if 300 <= response.status_code < 400:
            await response.aclose()
            raise self.refuse(_redirect(request, response))
        encoding = response.headers.get("content-encoding", "").strip().lower()
        if encoding not in ("", "identity"):
            # A compressed answer would be counted before it expands: a few KiB can decode into GiB.
            await response.aclose()
            raise self.refuse(f"the server answered in {encoding[:40]!r} encoding, which the platform did not ask for")
        assert isinstance(response.stream, httpx2.AsyncByteStream)
        response.stream = _Counted(response.stream, self)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


class _Counted(httpx2.AsyncByteStream):
    def __init__(self, inner: httpx2.AsyncByteStream, transport: PlatformTransport) -> None:
        self.inner = inner
        self.transport = transport

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.inner:
            self.transport.received += len(chunk)
            if self.transport.received > self.transport.max_answer_bytes:
                limit = self.transport.max_answer_bytes / (1024 * 1024)
                raise self.transport.refuse(f"the server's answers went past {limit:g} MiB; the platform reads no more")
            yield chunk

    async def aclose(self) -> None:
        await self.inner.aclose()


@asynccontextmanager
async def platform_mcp_client(url: str) -> AsyncIterator[Client]:
    """An MCP conversation with the server at `url` (its recorded address), in `auto` mode (the 2026
    `server/discover` probe, then the `initialize` handshake for servers from before). Raises
    `RefusedAnswer` when the server answered something the platform refuses."""
    transport = PlatformTransport(url)
    http = httpx2.AsyncClient(
        transport=transport,
        follow_redirects=False,
        trust_env=False,
        timeout=_TIMEOUT,
        headers={"Accept-Encoding": "identity"},
    )
    async with http:
        try:
            async with Client(streamable_http_client(url, http_client=http), mode="auto", cache=None) as client:
                yield client
        except Exception as exc:
            # The SDK turns a transport's exception into an exception group, a JSON-RPC error or a lost
            # stream, depending on where it came: the reason is the refusal, whichever it was.
            if transport.refused is not None:
                raise RefusedAnswer(transport.refused) from exc
            raise
