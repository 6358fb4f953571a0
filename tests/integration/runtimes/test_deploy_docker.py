"""Deployments on the docker runtime through podman's Docker Engine API, with an MCP server image built
here from a debootstrapped base (no image can be pulled on these machines)."""

from __future__ import annotations

import uuid
from typing import Any

import docker
import pytest

from runtimes.base import LABEL_DEPLOYMENT, LABEL_SERVER
from tests.support.components import Podman, labelled_containers
from tests.support.mcp_client import call_tool, list_tools
from tests.support.stack import Stack, deploy


@pytest.fixture(scope="module")
def echo_image(docker_engine: Podman) -> str:
    return docker_engine.ensure_echo_image()


def _containers(engine: Podman, server_id: str) -> list[Any]:
    client = docker.DockerClient(base_url=engine.url)
    try:
        return labelled_containers(client, f"{LABEL_SERVER}={server_id}")
    finally:
        client.close()


async def test_image_server_deploys_and_answers_through_the_gateway(
    stack: Stack, docker_engine: Podman, echo_image: str
) -> None:
    client, _ = await stack.user()
    async with client:
        server = (
            await client.post(
                "/api/servers",
                json={
                    "name": f"echo-{uuid.uuid4().hex[:6]}",
                    "source": {"type": "image", "image": echo_image},
                    "env": {"GREETING": "hi"},
                },
            )
        ).json()
        result = await deploy(client, server["id"])
        assert result["status"] == "running", result
        assert result["runtime"] == "docker"

        gateway = f"{stack.base_url}/mcp/{server['slug']}"
        assert sorted(await list_tools(gateway, server["api_key"])) == ["add", "allocate", "echo"]
        assert await call_tool(gateway, server["api_key"], "echo", {"text": "through the gateway"}) == (
            "echo: through the gateway"
        )
        assert await call_tool(gateway, server["api_key"], "add", {"a": 2, "b": 40}) == "42"

        containers = _containers(docker_engine, server["id"])
        assert len(containers) == 1
        container = containers[0]
        assert container.labels[LABEL_DEPLOYMENT] == result["id"]
        assert container.status == "running"
        env = dict(item.split("=", 1) for item in container.attrs["Config"]["Env"])
        assert env["GREETING"] == "hi" and env["PORT"] == "8080"
        bindings = container.attrs["HostConfig"]["PortBindings"]["8080/tcp"]
        assert bindings[0]["HostIp"] == "127.0.0.1"  # reachable only through the gateway

        logs = (await client.get(f"/api/servers/{server['id']}/logs")).json()["data"]
        assert any(line["source"] == "runtime" for line in logs)

        # Redeploy replaces the container; stop removes it.
        second = await deploy(client, server["id"])
        assert second["status"] == "running"
        remaining = _containers(docker_engine, server["id"])
        assert [c.labels[LABEL_DEPLOYMENT] for c in remaining] == [second["id"]]
        assert (await client.post(f"/api/servers/{server['id']}/stop")).status_code == 202
        for _ in range(150):
            if (await client.get(f"/api/servers/{server['id']}")).json()["status"] == "stopped":
                break
            import asyncio

            await asyncio.sleep(0.2)
        assert _containers(docker_engine, server["id"]) == []


async def test_missing_image_fails_with_a_readable_reason(stack: Stack, docker_engine: Podman) -> None:
    client, _ = await stack.user()
    async with client:
        server = (
            await client.post(
                "/api/servers",
                json={
                    "name": f"gone-{uuid.uuid4().hex[:6]}",
                    "source": {"type": "image", "image": "localhost/mcphost-no-such-image:1"},
                },
            )
        ).json()
        result = await deploy(client, server["id"])
    assert result["status"] == "failed"
    assert "mcphost-no-such-image" in result["error"]
    assert [s["step"] for s in result["steps"] if s["status"] == "failed"] == ["prepare"]
    assert _containers(docker_engine, server["id"]) == []
