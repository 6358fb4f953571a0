"""Calling a hosted server through the gateway with the official MCP SDK client."""

from __future__ import annotations

from typing import Any

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client


async def call_tool(url: str, api_key: str, tool: str, arguments: dict[str, Any], *, header: str = "bearer") -> str:
    headers = {"Authorization": f"Bearer {api_key}"} if header == "bearer" else {"X-API-Key": api_key}
    async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
        async with Client(streamable_http_client(url, http_client=http), cache=None) as client:
            result = await client.call_tool(tool, arguments)
    assert not result.is_error, result
    return "".join(getattr(c, "text", "") for c in result.content)


async def list_tools(url: str, api_key: str) -> list[str]:
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {api_key}"}, timeout=30) as http:
        async with Client(streamable_http_client(url, http_client=http), cache=None) as client:
            return [t.name for t in (await client.list_tools()).tools]
