"""A test MCP server that speaks both spec revisions (2025-11-25 sessions, 2026-07-28 stateless requests)
over streamable HTTP, with tools for the gateway's tests: what the server saw of the request, slow and
large answers, its revision, and a tool whose arguments and result carry secrets (for redaction).

    mcphost-everything --http        # serves $HOST:$PORT (default 127.0.0.1:8000) at /mcp
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

from mcp.server.mcpserver import Context, MCPServer

app = MCPServer("mcphost-everything")


@app.tool()
def echo(text: str) -> str:
    """Return the text, prefixed."""
    return f"echo: {text}"


@app.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@app.tool()
def revision() -> str:
    """Which deployment of this server answers (TEST_REVISION of its environment)."""
    return os.environ.get("TEST_REVISION", "unset")


@app.tool()
async def sleep(seconds: float) -> str:
    """Answer after this many seconds."""
    await asyncio.sleep(seconds)
    return f"slept {seconds:g} s"


@app.tool()
def big(kib: int) -> str:
    """A text of this many KiB."""
    return "x" * (kib * 1024)


@app.tool()
def login(username: str, password: str, note: str = "") -> str:
    """Pretend to log in; the answer carries a token (the invocation log must not keep either)."""
    return f"welcome {username}; your token is sk-live-{'a1b2c3d4' * 4} ({note})"


@app.tool()
def request_headers(ctx: Context) -> str:
    """The HTTP headers this server received with the request, as JSON."""
    headers = ctx.headers or {}
    return json.dumps({k.lower(): v for k, v in headers.items()}, sort_keys=True)


@app.prompt()
def greeting(name: str) -> str:
    """A greeting prompt."""
    return f"Say hello to {name}."


@app.resource("test://static")
def static_resource() -> str:
    """A fixed text resource."""
    return "static resource"


class CountRequests:
    """ASGI wrapper: counts the HTTP requests that reach the server; GET /_requests tells how many."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.count = 0

    async def __call__(self, scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
        if scope["type"] == "http" and scope["path"] == "/_requests":
            body = str(self.count).encode()
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})  # type: ignore[operator]
            await send({"type": "http.response.body", "body": body})  # type: ignore[operator]
            return
        if scope["type"] == "http":
            self.count += 1
        await self.inner(scope, receive, send)  # type: ignore[operator]


def main() -> None:
    fd = os.environ.get("MCPHOST_TEST_FD")
    if fd is not None:
        # The test harness bound the socket and handed it over: no port is chosen twice.
        import uvicorn

        inner = app.streamable_http_app(json_response="--json" in sys.argv[1:])
        uvicorn.run(CountRequests(inner), fd=int(fd), log_level="warning")
        return
    if "--http" in sys.argv[1:]:
        app.run(
            "streamable-http",
            host=os.environ.get("HOST", "127.0.0.1"),
            port=int(os.environ.get("PORT", "8000")),
            json_response="--json" in sys.argv[1:],
        )
    else:
        app.run("stdio")


if __name__ == "__main__":
    main()
