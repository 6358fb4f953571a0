"""The FastAPI application: factory, lifespan (one engine, one Temporal client, one upstream pool per
process) and the mapping of domain errors to HTTP responses."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from api import openapi
from api.deps import AppState
from api.events import DeploymentEvents, ServerEvents
from api.routes import (
    artifacts,
    auth,
    deployments,
    evaluations,
    files,
    gateway_docs,
    governance,
    health,
    keys,
    promotions,
    remediation,
    secrets,
    servers,
    streams,
    trust,
    usage,
    webhooks,
)
from core.accesslog import install_access_log_redaction
from core.db import make_engine, make_sessionmaker
from core.errors import DomainError, RateLimited
from core.ratelimit import retry_after_seconds
from core.settings import Settings
from gateway.app import metrics_response
from gateway.asgi import WithGateway
from gateway.state import GatewayState
from records.setup_tokens import ensure_setup_token
from runtimes import build_executors

log = logging.getLogger("mcphost.api")


def create_app(settings: Settings) -> WithGateway:
    """The API with the MCP gateway in front of it (`.app` is the FastAPI application)."""
    install_access_log_redaction()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings.database_url)
        sessionmaker = make_sessionmaker(engine)
        state = AppState(
            settings=settings,
            engine=engine,
            sessionmaker=sessionmaker,
            gateway=GatewayState(settings, sessionmaker),
            executors=build_executors(settings),
            deployment_events=DeploymentEvents(settings.database_url),
            server_events=ServerEvents(settings.database_url),
        )
        app.state.mcphost = state
        app.state.gateway = state.gateway
        await state.gateway.start()
        assert state.deployment_events is not None
        await state.deployment_events.start()
        assert state.server_events is not None
        await state.server_events.start()
        try:
            await ensure_setup_token(settings, sessionmaker)
        except Exception as exc:  # the database away, or not migrated yet: the next start makes the token
            log.warning("could not check whether this installation has an administrator: %s", exc)
        try:
            await state.temporal()
        except DomainError as exc:
            log.warning("%s; will retry on first use", exc.message)
        try:
            yield
        finally:
            await state.gateway.stop()
            await state.deployment_events.stop()
            await state.server_events.stop()
            for executor in state.executors.values():
                await executor.close()
            await engine.dispose()

    app = FastAPI(
        title="MCP Host",
        version="0.1.0",
        description="Build, deploy, serve and govern Model Context Protocol servers.",
        lifespan=lifespan,
    )
    openapi.install(app)

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
    # Before servers: /api/servers/stream must not be taken for a server id.
    app.include_router(streams.router)
    app.include_router(servers.router)
    app.include_router(deployments.router)
    app.include_router(artifacts.router)
    app.include_router(files.router)
    app.include_router(keys.router)
    app.include_router(secrets.router)
    app.include_router(usage.router)
    app.include_router(webhooks.router)
    app.include_router(evaluations.router)
    app.include_router(governance.router)
    app.include_router(promotions.router)
    app.include_router(trust.router)
    app.include_router(remediation.router)
    app.include_router(gateway_docs.router)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        """Prometheus metrics of this process (gateway traffic and limits)."""
        return metrics_response()

    # The MCP data plane is served in front of all of the above (see gateway.asgi).
    return WithGateway(app)
