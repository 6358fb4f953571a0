"""A small MCP server for container tests: streamable HTTP on $PORT, two tools."""

import os

from mcp.server.mcpserver import MCPServer

app = MCPServer("mcphost-test-echo")


@app.tool()
def echo(text: str) -> str:
    """Return the text, prefixed."""
    return f"echo: {text}"


@app.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


if __name__ == "__main__":
    app.run("streamable-http", host="0.0.0.0", port=int(os.environ.get("PORT", "8080")))
