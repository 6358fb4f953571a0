"""The gateway alone (`mcphost gateway`): `/mcp/{slug}`, `/healthz` and `/metrics`, no control plane.

Operators run as many of these as the traffic needs, apart from the API; they share the database (routes,
keys, metering) with it and follow its changes by Postgres NOTIFY.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from core.db import make_engine, make_sessionmaker
from core.settings import Settings
from gateway.asgi import WithGateway
from gateway.state import GatewayState


def metrics_response() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


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
