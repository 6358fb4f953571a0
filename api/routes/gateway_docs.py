"""The gateway's entry in the OpenAPI document. Requests never reach this route: `gateway.asgi` serves
`/mcp/*` in front of the API's router; this only describes what it answers."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

router = APIRouter(tags=["gateway"])

_RPC_ERROR = {
    "application/json": {
        "schema": {
            "type": "object",
            "properties": {
                "jsonrpc": {"const": "2.0"},
                "id": {},
                "error": {"type": "object", "properties": {"code": {"type": "integer"}, "message": {"type": "string"}}},
            },
        }
    }
}
RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The server's answer: JSON, or an SSE stream (text/event-stream)"},
    202: {"description": "A notification or response accepted by the server"},
    400: {
        "description": "The API key was put in the URL; a body the gateway cannot read exactly as the server "
        "would (not one JSON object in UTF-8, a batch, a repeated key, NaN, a byte-order mark); or (-32020) an "
        "Mcp-Method or Mcp-Name header that contradicts the body",
        "content": _RPC_ERROR,
    },
    401: {"description": "Missing, invalid, revoked or expired API key", "content": _RPC_ERROR},
    403: {"description": "The request's Origin is not allowed (GATEWAY_ALLOWED_ORIGINS)", "content": _RPC_ERROR},
    404: {"description": "No such server, or (from the server) an ended session", "content": _RPC_ERROR},
    405: {"description": "Method not allowed (from the gateway or the server, with Allow)", "content": _RPC_ERROR},
    408: {
        "description": "The request body stopped arriving for GATEWAY_CLIENT_IDLE_SECONDS; the connection is closed",
        "content": _RPC_ERROR,
    },
    413: {"description": "Request body over GATEWAY_MAX_REQUEST_BYTES", "content": _RPC_ERROR},
    429: {"description": "Rate or concurrency limit of the key or server; see Retry-After", "content": _RPC_ERROR},
    502: {"description": "The server did not answer, or its answer was over the size cap", "content": _RPC_ERROR},
    503: {"description": "The server is not running", "content": _RPC_ERROR},
    504: {"description": "The server did not answer within its timeout", "content": _RPC_ERROR},
}


@router.post("/mcp/{slug}", operation_id="mcp_post", responses=RESPONSES, response_class=Response)
@router.get("/mcp/{slug}", operation_id="mcp_get", responses=RESPONSES, response_class=Response)
@router.delete("/mcp/{slug}", operation_id="mcp_delete", responses=RESPONSES, response_class=Response)
async def mcp_gateway(slug: str) -> Response:
    """Streamable-HTTP MCP endpoint of a hosted server (spec 2025-11-25 sessions and 2026-07-28 stateless
    requests alike). Send one of the server's API keys as `Authorization: Bearer <key>` or
    `X-API-Key: <key>`; keys in the URL are refused and no key is forwarded to the server."""
    return Response(status_code=404)  # pragma: no cover - served by gateway.asgi.GatewayDispatch
