"""Everything one process's gateway holds, built from the settings; started and stopped by its app."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.settings import Settings
from gateway import metrics
from gateway.metering import Meter
from gateway.proxy import Gateway
from gateway.routes import RouteTable
from gateway.sessions import SessionPins
from gateway.upstream import UpstreamPool


class GatewayState:
    def __init__(self, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self.settings = settings
        self.routes = RouteTable(sessionmaker, settings.database_url, max_entries=settings.gateway_route_cache_size)
        self.meter = Meter(
            sessionmaker,
            trace_max_bytes=settings.gateway_trace_max_bytes,
            invocation_retention_days=settings.gateway_invocation_retention_days,
            usage_retention_days=settings.gateway_usage_retention_days,
        )
        self.sessions = SessionPins(sessionmaker)
        self.meter.also_flush.append(self.sessions.flush)
        # One pool of upstream connections for every server: a server's share of it is bounded by its
        # concurrency slots, so one tenant's streams cannot take the connections another's calls need.
        self.upstream = UpstreamPool(max_idle_per_host=settings.gateway_pool_size)
        self.gateway = Gateway(
            routes=self.routes,
            upstream=self.upstream,
            meter=self.meter,
            sessions=self.sessions,
            allowed_origins=settings.allowed_origins,
            connect_timeout=settings.gateway_connect_timeout_seconds,
            read_timeout=settings.gateway_read_timeout_seconds,
            keepalive=settings.gateway_sse_keepalive_seconds,
            server_concurrency=settings.gateway_server_concurrency,
            key_concurrency=settings.gateway_key_concurrency,
            key_rate=settings.gateway_key_rate_per_second,
            key_burst=settings.gateway_key_burst,
            max_request_bytes=settings.gateway_max_request_bytes,
            max_response_bytes=settings.gateway_max_response_bytes,
            body_timeout=settings.gateway_client_idle_seconds,
        )
        metrics.ROUTES_CACHED.set_function(lambda: len(self.routes))
        metrics.IN_FLIGHT.set_function(lambda: self.gateway.in_flight)

    async def start(self) -> None:
        await self.routes.start()
        self.meter.start()

    async def stop(self) -> None:
        await self.meter.stop()
        await self.routes.stop()
        await self.upstream.aclose()
