"""A small MCP server for container tests: streamable HTTP on $PORT, a few tools."""

import os

from mcp.server.mcpserver import MCPServer

app = MCPServer("mcphost-test-echo")
_held: list[bytes] = []


@app.tool()
def echo(text: str) -> str:
    """Return the text, prefixed."""
    return f"echo: {text}"


@app.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@app.tool()
def allocate(mib: int) -> str:
    """Take and keep this many MiB of memory (every page written, so it really is in use)."""
    _held.append(b"\x01" * (mib * 1024 * 1024))
    return f"holding {sum(len(b) for b in _held) // (1024 * 1024)} MiB"


if __name__ == "__main__":
    app.run("streamable-http", host="0.0.0.0", port=int(os.environ.get("PORT", "8080")))
