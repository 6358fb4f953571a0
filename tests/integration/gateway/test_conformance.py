"""The official MCP conformance suite against a dual-era server, directly and through the gateway: for
both spec revisions, every scenario ends the same way through the gateway as it does directly. Then the
MCP Inspector CLI lists the server's tools through the gateway.

The suite cannot send headers, so a small client-side helper (tests/support/key_proxy.py) adds the API
key to what it sends to the gateway; it relays everything else unchanged.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.integration.gateway.test_gateway import Hosted, host
from tests.support import node_tools
from tests.support.components import require
from tests.support.everything import DirectServer
from tests.support.key_proxy import KeyProxy
from tests.support.stack import Stack

# Scenarios the dual-era test server itself passes; each must pass through the gateway too.
MUST_PASS = {
    "2026-07-28": {
        "tools-list",
        "tools-call-simple-text",
        "tools-call-image",
        "tools-call-audio",
        "tools-call-embedded-resource",
        "tools-call-mixed-content",
        "tools-call-error",
        "tools-call-with-progress",
        "server-sse-multiple-streams",
        "resources-list",
        "resources-read-text",
        "resources-read-binary",
        "resources-templates-read",
        "sep-2164-resource-not-found",
        "prompts-list",
        "prompts-get-simple",
        "prompts-get-with-args",
        "prompts-get-embedded-resource",
        "prompts-get-with-image",
        "completion-complete",
        "dns-rebinding-protection",
        "caching",
    },
    "2025-11-25": {
        "server-initialize",
        "ping",
        "tools-list",
        "tools-call-simple-text",
        "tools-call-image",
        "tools-call-error",
        "tools-call-with-progress",
        "server-sse-multiple-streams",
        "resources-read-text",
        "resources-templates-read",
        "prompts-get-with-args",
        "completion-complete",
        "dns-rebinding-protection",
        "server-session-lifecycle",
    },
}


@pytest.fixture(scope="module")
def tools() -> None:
    missing = node_tools.install()
    require(missing is None, missing or "")


@pytest.fixture(scope="module")
def server() -> Iterator[DirectServer]:
    direct = DirectServer().start()
    yield direct
    direct.stop()


@pytest.fixture(params=["uvicorn", "lean"])
async def through_gateway(
    request: pytest.FixtureRequest, stack: Stack, server: DirectServer
) -> AsyncIterator[tuple[Hosted, KeyProxy]]:
    """The gateway under uvicorn (`mcphost up`) and on its own server (`mcphost gateway`)."""
    front = stack.base_url if request.param == "uvicorn" else await stack.lean_gateway()
    owner, _ = await stack.user()
    async with owner:
        hosted = await host(stack, owner, server, front)
        proxy = await KeyProxy(hosted.url, hosted.key).start()
        gateway = stack.state.gateway.gateway
        saved = gateway.allowed_origins
        # What an operator lists in GATEWAY_ALLOWED_ORIGINS for a browser client at this address.
        gateway.allowed_origins = saved | {f"http://localhost:{proxy.port}".encode()}
        try:
            yield hosted, proxy
        finally:
            gateway.allowed_origins = saved
            await proxy.stop()


@pytest.mark.parametrize("requirements", ["2025-11-25", "2026-07-28"])
async def test_the_gateway_passes_what_the_server_passes(
    tools: None,
    server: DirectServer,
    through_gateway: tuple[Hosted, KeyProxy],
    requirements: str,
    tmp_path: Path,
) -> None:
    _, proxy = through_gateway
    direct = await node_tools.conformance(f"http://localhost:{server.port}/mcp", requirements, tmp_path / "direct")
    gated = await node_tools.conformance(proxy.url, requirements, tmp_path / "gateway")
    assert set(direct) == set(gated) and len(direct) > 20, (sorted(direct), sorted(gated))
    passed_direct = {name for name, o in direct.items() if o.failed == 0}
    passed_gated = {name for name, o in gated.items() if o.failed == 0}
    assert MUST_PASS[requirements] <= passed_direct, sorted(MUST_PASS[requirements] - passed_direct)
    assert passed_gated == passed_direct, {
        "only directly": sorted(passed_direct - passed_gated),
        "only through the gateway": sorted(passed_gated - passed_direct),
    }
    for name, outcome in direct.items():
        assert (gated[name].passed, gated[name].failed) == (outcome.passed, outcome.failed), name


async def test_the_inspector_cli_lists_tools_through_the_gateway(
    tools: None, stack: Stack, server: DirectServer
) -> None:
    owner, _ = await stack.user()
    async with owner:
        hosted = await host(stack, owner, server)
        code, out = await node_tools.run(
            "mcp-inspector",
            "--cli",
            hosted.url,
            "--transport",
            "http",
            "--method",
            "tools/list",
            "--header",
            f"Authorization: Bearer {hosted.key}",
            timeout=120,
        )
        assert code == 0, out[-2000:]
        listed = json.loads(out[out.index("{") :])
        names = {tool["name"] for tool in listed["tools"]}
        assert {"echo", "add", "test_simple_text"} <= names, names
        # Without the key the same command fails: the Inspector really went through the gateway's check.
        code, out = await node_tools.run(
            "mcp-inspector", "--cli", hosted.url, "--transport", "http", "--method", "tools/list", timeout=120
        )
        assert code != 0, out[-2000:]
