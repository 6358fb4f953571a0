"""The MCP gateway: `/mcp/{slug}` forwards streamable-HTTP MCP traffic to the serving revision.

The server's API key is required in a header and never forwarded. Routes are cached per process and
dropped when Postgres NOTIFYs a change (with a short TTL as a safety net if the listener is down).
Responses, SSE streams included, are relayed as they arrive, without buffering.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.background import BackgroundTask

from api.deps import StateDep
from api.listen import PgListener
from core.db import ROUTES_CHANNEL
from core.models import Deployment, Server
from core.security import token_matches

log = logging.getLogger("mcphost.gateway")

MAX_BODY = 4 * 1024 * 1024
FORWARD_REQUEST_HEADERS = (
    "accept",
    "content-type",
    "mcp-session-id",
    "mcp-protocol-version",
    "last-event-id",
    "user-agent",
    "accept-encoding",
)
FORWARD_RESPONSE_HEADERS = (
    "content-type",
    "mcp-session-id",
    "mcp-protocol-version",
    "cache-control",
    "content-encoding",
    "x-accel-buffering",
)


@dataclass(frozen=True)
class Route:
    server_id: uuid.UUID
    slug: str
    api_key_hash: str
    upstream_url: str | None
    status: str


class RouteTable:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], database_url: str, *, ttl: float = 30.0):
        self.sessionmaker = sessionmaker
        self.database_url = database_url
        self.ttl = ttl
        self._cache: dict[str, tuple[float, Route | None]] = {}
        # Bumped by every invalidation. A lookup that read the row before a change was notified must not
        # cache what it read after the notification has already emptied the slot.
        self._generation = 0
        self._listener = PgListener(
            database_url, ROUTES_CHANNEL, lambda slug: self.invalidate(slug or None), self.invalidate
        )

    @property
    def listening(self) -> bool:
        """Whether changes made by other processes reach this table now (else it falls back to a short TTL)."""
        return self._listener.connected

    async def lookup(self, slug: str) -> Route | None:
        ttl = self.ttl if self._listener.connected else 2.0
        cached = self._cache.get(slug)
        if cached is not None and time.monotonic() - cached[0] < ttl:
            return cached[1]
        generation = self._generation
        async with self.sessionmaker() as session:
            row = (
                await session.execute(
                    select(Server.id, Server.slug, Server.api_key_hash, Server.status, Deployment.upstream_url)
                    .outerjoin(Deployment, Deployment.id == Server.active_deployment_id)
                    .where(Server.slug == slug)
                )
            ).first()
        route = (
            Route(server_id=row[0], slug=row[1], api_key_hash=row[2], status=row[3], upstream_url=row[4])
            if row
            else None
        )
        if generation == self._generation:
            self._cache[slug] = (time.monotonic(), route)
        return route

    def invalidate(self, slug: str | None = None) -> None:
        self._generation += 1
        if slug is None:
            self._cache.clear()
        else:
            self._cache.pop(slug, None)

    async def start(self) -> None:
        await self._listener.start()

    async def stop(self) -> None:
        await self._listener.stop()


def _rpc_error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        {
            "jsonrpc": "2.0",
            "id": None,
            "error": {"code": -32000 if status >= 500 else -32001, "message": message},
        },
        status_code=status,
        headers=headers,
    )


def presented_key(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key.strip()
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def _describe_call(body: bytes) -> dict[str, Any]:
    """JSON-RPC method (and tool name) of a request, for usage metrics. Never the arguments."""
    try:
        message = json.loads(body)
    except ValueError:
        return {"method": None}
    messages = message if isinstance(message, list) else [message]
    first = messages[0] if messages and isinstance(messages[0], dict) else {}
    details: dict[str, Any] = {"method": first.get("method")}
    params = first.get("params")
    if first.get("method") == "tools/call" and isinstance(params, dict):
        details["tool"] = params.get("name")
    if len(messages) > 1:
        details["batch"] = len(messages)
    return details


router = APIRouter(tags=["gateway"])


@router.api_route("/mcp/{slug}", methods=["GET", "POST", "DELETE"], include_in_schema=True)
async def proxy(slug: str, request: Request, state: StateDep) -> Response:
    """Streamable-HTTP MCP endpoint of a hosted server. Send the server's API key as
    `Authorization: Bearer <key>` or `X-API-Key: <key>`."""
    if any(k in request.query_params for k in ("api_key", "apikey", "key", "token", "access_token")):
        return _rpc_error(400, "send the API key in the Authorization or X-API-Key header, never in the URL")
    route = await state.routes.lookup(slug)
    key = presented_key(request)
    if route is None:
        return _rpc_error(404, f"no MCP server at /mcp/{slug}")
    if key is None or not token_matches(key, route.api_key_hash):
        return _rpc_error(401, "missing or invalid API key for this server", {"WWW-Authenticate": "Bearer"})
    if not route.upstream_url:
        return _rpc_error(503, f"server '{slug}' is not running ({route.status}); deploy it first")

    body = b""
    if request.method == "POST":
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY:
                return _rpc_error(413, f"request body larger than {MAX_BODY} bytes")
            chunks.append(chunk)
        body = b"".join(chunks)
    headers = {k: v for k, v in request.headers.items() if k.lower() in FORWARD_REQUEST_HEADERS}
    client: httpx.AsyncClient = request.app.state.upstream
    started = time.perf_counter()
    upstream_request = client.build_request(request.method, route.upstream_url, headers=headers, content=body)
    try:
        upstream = await client.send(upstream_request, stream=True)
    except httpx.HTTPError as exc:
        state.usage.record(route.server_id, "gateway_error", error=type(exc).__name__, **_describe_call(body))
        return _rpc_error(502, f"server '{slug}' did not answer: {type(exc).__name__}")
    response_headers = {k: v for k, v in upstream.headers.items() if k.lower() in FORWARD_RESPONSE_HEADERS}
    details = _describe_call(body) if body else {"method": request.method}
    state.usage.record(
        route.server_id,
        "gateway_request",
        status=upstream.status_code,
        latency_ms=round((time.perf_counter() - started) * 1000, 2),
        **details,
    )
    return StreamingResponse(
        upstream.aiter_raw(),
        status_code=upstream.status_code,
        headers=response_headers,
        background=BackgroundTask(upstream.aclose),
    )
