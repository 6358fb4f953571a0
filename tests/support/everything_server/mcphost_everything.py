"""A test MCP server that speaks both spec revisions (2025-11-25 sessions, 2026-07-28 stateless requests)
over streamable HTTP, with tools for the gateway's tests: what the server saw of the request, slow and
large answers, its revision, and a tool whose arguments and result carry secrets (for redaction).

    mcphost-everything --http        # serves $HOST:$PORT (default 127.0.0.1:8000) at /mcp
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys

from mcp.server.mcpserver import Context, MCPServer, UserMessage
from mcp_types import (
    AudioContent,
    Completion,
    EmbeddedResource,
    ImageContent,
    TextContent,
    TextResourceContents,
)

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


# ---- the fixtures the MCP conformance suite calls ---------------------------------------------------

# A 1x1 PNG and a short silent WAV, base64.
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
WAV = "UklGRiQAAABXQVZFZm10IBAAAAABAAEAQB8AAEAfAAABAAgAZGF0YQAAAAA="


@app.tool()
def test_simple_text() -> str:
    """A plain text answer."""
    return "This is a simple text response for testing."


@app.tool()
def test_image_content() -> list[ImageContent]:
    """An image answer."""
    return [ImageContent(type="image", data=PNG, mime_type="image/png")]


@app.tool()
def test_audio_content() -> list[AudioContent]:
    """An audio answer."""
    return [AudioContent(type="audio", data=WAV, mime_type="audio/wav")]


def _embedded(uri: str, text: str) -> EmbeddedResource:
    return EmbeddedResource(type="resource", resource=TextResourceContents(uri=uri, mime_type="text/plain", text=text))


@app.tool()
def test_embedded_resource() -> list[EmbeddedResource]:
    """An embedded resource answer."""
    return [_embedded("test://embedded-resource", "This is an embedded resource content.")]


@app.tool()
def test_multiple_content_types() -> list[TextContent | ImageContent | EmbeddedResource]:
    """Text, an image and a resource in one answer."""
    return [
        TextContent(type="text", text="Multiple content types test:"),
        ImageContent(type="image", data=PNG, mime_type="image/png"),
        _embedded("test://mixed-content-resource", '{"test":"data","value":123}'),
    ]


@app.tool()
def test_error_handling() -> str:
    """Always fails (a tool error, not a protocol error)."""
    raise RuntimeError("This tool intentionally returns an error for testing")


@app.tool()
async def test_tool_with_progress(ctx: Context) -> str:
    """Reports progress 0, 50, 100 of 100."""
    for step in (0, 50, 100):
        await ctx.report_progress(step, 100, f"step {step}")
        await asyncio.sleep(0.05)
    return "Progress completed"


@app.tool()
async def test_tool_with_logging(ctx: Context) -> str:
    """Sends three log messages."""
    for text in ("Tool execution started", "Tool processing data", "Tool execution completed"):
        await ctx.info(text)
        await asyncio.sleep(0.05)
    return "Logging completed"


@app.resource("test://static-text", mime_type="text/plain")
def static_text() -> str:
    """A static text resource."""
    return "This is the content of the static text resource."


@app.resource("test://static-binary", mime_type="image/png")
def static_binary() -> bytes:
    """A static binary resource."""
    return base64.b64decode(PNG)


@app.resource("test://template/{id}/data", mime_type="application/json")
def template_data(id: str) -> str:
    """A resource template."""
    return json.dumps({"id": id, "templateTest": True, "data": f"Data for ID: {id}"})


@app.prompt()
def test_simple_prompt() -> str:
    """A prompt without arguments."""
    return "This is a simple prompt for testing."


@app.prompt()
def test_prompt_with_arguments(arg1: str, arg2: str) -> str:
    """A prompt with two arguments."""
    return f"Prompt with arguments: arg1='{arg1}', arg2='{arg2}'"


@app.prompt()
def test_prompt_with_embedded_resource(resourceUri: str) -> list[UserMessage]:  # noqa: N803 - the suite's name
    """A prompt with an embedded resource."""
    return [
        UserMessage(content=_embedded(resourceUri, "Embedded resource content for testing.")),
        UserMessage(content="Please process the embedded resource above."),
    ]


@app.prompt()
def test_prompt_with_image() -> list[UserMessage]:
    """A prompt with an image."""
    return [
        UserMessage(content=ImageContent(type="image", data=PNG, mime_type="image/png")),
        UserMessage(content="Please analyze the image above."),
    ]


@app.completion()
async def complete(ref: object, argument: object, context: object) -> Completion:
    values = ["paris", "park", "party"]
    prefix = getattr(argument, "value", "") or ""
    return Completion(values=[v for v in values if v.startswith(prefix)], total=3, has_more=False)


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
        # The test harness bound the socket and handed it over: no port is chosen twice. (Not uvicorn's own
        # `fd=`, which takes every descriptor for a Unix socket and so leaves Nagle on for TCP.)
        import socket

        import uvicorn

        inner = app.streamable_http_app(json_response="--json" in sys.argv[1:])
        server = uvicorn.Server(uvicorn.Config(CountRequests(inner), log_level="warning"))
        server.run(sockets=[socket.socket(fileno=int(fd))])
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
