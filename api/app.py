"""The FastAPI application: factory, lifespan (one engine, one Temporal client, one upstream pool per
process) and the mapping of domain errors to HTTP responses."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from api import gateway
from api.deps import AppState
from api.events import DeploymentEvents
from api.routes import artifacts, auth, deployments, files, health, servers
from api.usage import UsageRecorder
from core.accesslog import install_access_log_redaction
from core.db import make_engine, make_sessionmaker
from core.errors import DomainError, RateLimited
from core.ratelimit import retry_after_seconds
from core.settings import Settings
from runtimes import build_executors

log = logging.getLogger("mcphost.api")


def create_app(settings: Settings) -> FastAPI:
    install_access_log_redaction()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings.database_url)
        sessionmaker = make_sessionmaker(engine)
        state = AppState(
            settings=settings,
            engine=engine,
            sessionmaker=sessionmaker,
            routes=gateway.RouteTable(sessionmaker, settings.database_url),
            usage=UsageRecorder(sessionmaker),
            executors=build_executors(settings),
            deployment_events=DeploymentEvents(settings.database_url),
        )
        app.state.mcphost = state
        # Upstream MCP servers are local; SSE streams may stay open for a long time, so no read timeout.
        app.state.upstream = httpx.AsyncClient(
            timeout=httpx.Timeout(connect=5.0, read=None, write=30.0, pool=10.0),
            limits=httpx.Limits(max_connections=500, max_keepalive_connections=100),
            follow_redirects=False,
            trust_env=False,
        )
        await state.routes.start()
        assert state.deployment_events is not None
        await state.deployment_events.start()
        state.usage.start()
        try:
            await state.temporal()
        except DomainError as exc:
            log.warning("%s; will retry on first use", exc.message)
        try:
            yield
        finally:
            await state.usage.stop()
            await state.routes.stop()
            await state.deployment_events.stop()
            await app.state.upstream.aclose()
            for executor in state.executors.values():
                await executor.close()
            await engine.dispose()

    app = FastAPI(
        title="MCP Host",
        version="0.1.0",
        description="Build, deploy, serve and govern Model Context Protocol servers.",
        lifespan=lifespan,
    )

    @app.exception_handler(DomainError)
    async def domain_error(_request: Request, exc: DomainError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        if isinstance(exc, RateLimited):
            headers = {"Retry-After": str(retry_after_seconds(exc.retry_after))}
        return JSONResponse({"detail": exc.message, "code": exc.code}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(ValidationError)
    async def validation_error(_request: Request, exc: ValidationError) -> JSONResponse:
        # Pydantic errors raised inside handlers (not request parsing) are still the caller's input.
        errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        return JSONResponse({"detail": errors, "code": "invalid_input"}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def request_validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()
        ]
        return JSONResponse({"detail": errors, "code": "invalid_input"}, status_code=422)

    app.include_router(health.router)
    app.include_router(auth.router)
    app.include_router(servers.router)
    app.include_router(deployments.router)
    app.include_router(artifacts.router)
    app.include_router(files.router)
    app.include_router(gateway.router)
    return app
