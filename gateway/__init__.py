"""The MCP data plane: `/mcp/{slug}` proxy, route table, keys and scopes, limits, metering."""
