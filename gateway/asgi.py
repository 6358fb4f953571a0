"""How the gateway sits in an ASGI app: in front of everything else, so `/mcp/*` pays for no routing,
dependency injection or response classes, only for what the gateway itself does."""

from __future__ import annotations

from typing import Any

from gateway.proxy import PREFIX, Receive, Scope, Send
from gateway.state import GatewayState


class GatewayDispatch:
    """ASGI middleware: `/mcp/...` goes to the app's gateway (`app.state.gateway`); the rest to the app."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(PREFIX):
            state: GatewayState = scope["app"].state.gateway
            await state.gateway(scope, receive, send)
            return
        await self.app(scope, receive, send)
