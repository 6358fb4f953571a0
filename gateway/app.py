"""The gateway alone (`mcphost gateway`): `/mcp/{slug}`, `/healthz` and `/metrics`, no control plane.

Operators run as many of these as the traffic needs, apart from the API; they share the database (routes,
keys, metering) with it and follow its changes by Postgres NOTIFY.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from core.db import make_engine, make_sessionmaker
from core.settings import Settings
from gateway import metrics
from gateway.asgi import WithGateway
from gateway.state import GatewayState

log = logging.getLogger("mcphost.gateway")


def metrics_response() -> Response:
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)


def create_gateway_app(settings: Settings) -> WithGateway:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings.database_url)
        state = GatewayState(settings, make_sessionmaker(engine))
        app.state.gateway = state
        await state.start()
        try:
            yield
        finally:
            await state.stop()
            await engine.dispose()

    app = FastAPI(title="MCP Host gateway", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> JSONResponse:
        state: GatewayState = app.state.gateway
        return JSONResponse({"status": "ok", "routes_listening": state.routes.listening})

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return metrics_response()

    return WithGateway(app)


async def serve_gateway(settings: Settings, host: str, port: int, *, fd: int | None = None) -> None:
    """Run the gateway on its own HTTP server (gateway.server) on host:port, or on the listening socket `fd`,
    until SIGTERM or SIGINT; then let requests in flight finish (GATEWAY_SHUTDOWN_GRACE_SECONDS)."""
    grace = settings.gateway_shutdown_grace_seconds
    from gateway.server import GatewayServer

    engine = make_engine(settings.database_url)
    state = GatewayState(settings, make_sessionmaker(engine))
    await state.start()
    try:
        server = GatewayServer(
            state.gateway,
            health=lambda: {"status": "ok", "routes_listening": state.routes.listening},
            keep_alive=settings.gateway_client_idle_seconds,
        )
        if fd is not None:
            listening = socket.socket(fileno=fd)
            host = listening.getsockname()[0]
            bound = await server.listen(sock=listening)
        else:
            bound = await server.listen(host, port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info("MCP gateway listening on http://%s:%d (/mcp/<slug>, /healthz, /metrics)", host, bound)
        await stop.wait()
        log.info("shutting down: letting requests in flight finish (up to %g s)", grace)
        await server.shutdown(grace)
    finally:
        await state.stop()
        await engine.dispose()
