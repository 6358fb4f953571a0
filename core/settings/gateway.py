"""The MCP gateway (/mcp/<slug>): the browser origins it admits, its timeouts, concurrency and rate
limits, body sizes, caches and pools, session drains, shutdown grace, and what it keeps of calls."""

from __future__ import annotations

import re

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings


class GatewaySettings(BaseSettings):
    """Limits, timeouts and records of the MCP gateway."""

    gateway_allowed_origins: str = Field(
        default="",
        description="Browser origins (scheme://host[:port], comma-separated) allowed to call the gateway, besides "
        "the platform's own (PUBLIC_URL's, and its port on loopback); a request with any other Origin is 403. "
        "Requests without Origin pass.",
    )
    gateway_connect_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    gateway_read_timeout_seconds: float = Field(
        default=300.0, gt=0, le=3600, description="Longest wait for a server's next bytes on a request."
    )
    gateway_sse_keepalive_seconds: float = Field(
        default=15.0,
        gt=0,
        le=300,
        description="SSE comment sent to the client when its stream has been idle this long.",
    )
    gateway_server_concurrency: int = Field(default=128, ge=1, description="Requests in flight to one server at once.")
    gateway_key_concurrency: int = Field(default=64, ge=1, description="Requests in flight with one key at once.")
    gateway_key_rate_per_second: float = Field(default=100.0, gt=0, description="Sustained requests a second per key.")
    gateway_key_burst: int = Field(default=200, ge=1, description="Requests a key may send at once above that rate.")
    gateway_max_request_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    gateway_max_response_bytes: int = Field(
        default=32 * 1024 * 1024, ge=1024, description="Largest response to one POST; past it the stream is cut."
    )
    gateway_route_cache_size: int = Field(default=10_000, ge=10, description="Routes (slugs) each process caches.")
    gateway_pool_size: int = Field(
        default=64, ge=1, description="Idle upstream connections each process keeps open per server for reuse."
    )
    gateway_drain_seconds: float = Field(
        default=300.0, ge=0, description="How long a session-era client keeps its revision after a redeploy."
    )
    gateway_session_idle_seconds: float = Field(
        default=60.0,
        gt=0,
        description="A session with no request and no open stream for this long no longer holds a drain open.",
    )
    gateway_client_idle_seconds: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        description=(
            "How long a request body to /mcp/* may stop arriving before a 408 (under every server); under"
            " mcphost gateway also how long a client connection may wait for its next request (or its head)."
        ),
    )
    gateway_shutdown_grace_seconds: float = Field(
        default=30.0, ge=0, le=3600, description="mcphost gateway: how long SIGTERM lets requests in flight finish."
    )
    gateway_invocation_retention_days: float = Field(default=7.0, gt=0)
    gateway_usage_retention_days: float = Field(default=90.0, gt=0)
    gateway_trace_max_bytes: int = Field(
        default=2048, ge=64, description="Longest argument or result text an opted-in invocation log keeps."
    )

    @field_validator("gateway_allowed_origins")
    @classmethod
    def _origins(cls, value: str) -> str:
        for origin in (o.strip() for o in value.split(",")):
            if origin and not re.fullmatch(r"https?://[A-Za-z0-9.\[\]:-]+/?", origin):
                raise ValueError(
                    f"{origin!r} is not an origin such as https://app.example.com or http://localhost:5173"
                )
        return value
