"""A server's gateway options, as stored in `servers.gateway` and accepted by the API."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, StrictBool


class GatewayOptions(BaseModel):
    """Unset fields take the installation's GATEWAY_* settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    connect_timeout_seconds: float | None = Field(
        default=None, gt=0, le=120, description="How long the gateway waits to connect to the server."
    )
    read_timeout_seconds: float | None = Field(
        default=None,
        gt=0,
        le=3600,
        description="How long a request may wait for the server's next bytes (a tool call's whole answer when "
        "the server replies with JSON); past it the client gets a JSON-RPC error. Idle GET streams are not cut.",
    )
    max_concurrency: int | None = Field(
        default=None, ge=1, le=10_000, description="Requests (streams included) in flight to this server at once."
    )
    trace_payloads: StrictBool = Field(
        default=False,
        description="Keep tool arguments and results in the invocation log (truncated, secret-looking values "
        "redacted).",
    )
