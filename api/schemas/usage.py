"""Gateway invocations and usage per minute."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class InvocationPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    created_at: datetime
    key_name: str | None
    http_method: str
    method: str | None = Field(description="JSON-RPC method")
    tool: str | None
    status: int = Field(description="HTTP status the client got")
    outcome: str = Field(
        description="ok, error, timeout, client_gone, upstream_error, rate_limited, server_busy, key_busy, "
        "too_large, response_too_large, forbidden_tool, malformed (a body the gateway cannot read as the server "
        "would), header_mismatch (Mcp-Method/Mcp-Name contradict the body), unauthorized, not_running, session_gone"
    )
    duration_ms: float
    request_bytes: int
    response_bytes: int
    arguments: str | None = Field(description="Only with gateway.trace_payloads: redacted, truncated JSON")
    result: str | None = Field(description="Only with gateway.trace_payloads: redacted, truncated JSON")


class UsagePublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    minute: datetime
    key_name: str
    method: str
    tool: str
    calls: int
    errors: int
    request_bytes: int
    response_bytes: int
    duration_ms: float = Field(description="Sum over the calls")
