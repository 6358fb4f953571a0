"""How the gateway sits in an ASGI app: in front of everything else, so `/mcp/*` pays for no middleware,
routing, dependency injection or response classes, only for what the gateway itself does."""

from __future__ import annotations

from typing import Any

from gateway.channel import Receive, Scope, Send
from gateway.proxy import PREFIX


class WithGateway:
    """The ASGI app a server runs: `/mcp/...` goes straight to the app's gateway (`app.state.gateway`,
    set up by the app's lifespan); everything else, lifespan included, to the app itself."""

    def __init__(self, app: Any) -> None:
        self.app = app

    @property
    def state(self) -> Any:
        return self.app.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(PREFIX):
            await self.app.state.gateway.gateway(scope, receive, send)
            return
        await self.app(scope, receive, send)
