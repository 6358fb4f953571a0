"""PyPI package sources on the docker runtime (CONTAINER_RUNTIME=docker), on the real engine (podman's
Docker Engine API): the package is built into an image from the test base image, with its wheels fetched
on the host, and runs as a confined container. The hostile server tries the same ways out as on the
process runtime (test_hostile.py) and gets nowhere."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest
from sqlalchemy.engine import make_url

from core.package_image import ENTRY_POINTS_FILE
from core.tenancy import server_data_dir
from runtimes.base import LABEL_SERVER
from runtimes.docker_spec import network_name
from tests.support.components import Podman, labelled_containers
from tests.support.hostile import NAME, VERSION, assert_no_privileges_and_bounded, attack, attack_may_die, build_wheel
from tests.support.mcp_client import call_tool
from tests.support.stack import Stack, deploy, make_settings, running

pytestmark = pytest.mark.timeout(900)

TIME = {"type": "package", "package": "mcp-server-time", "args": ["--local-timezone", "UTC"]}
HOSTILE = {"type": "package", "package": NAME, "version": VERSION}
MEMORY_MIB = 256


@pytest.fixture(scope="module")
async def docker_stack(
    database_url: str, temporal_address: str, process_state_dir: Path, docker_engine: Podman, base_image: str
) -> AsyncIterator[Stack]:
    settings = make_settings(
        database_url,
        temporal_address,
        process_state_dir,
        docker_host=docker_engine.url,
        container_runtime="docker",
        package_python_image=base_image,
        build_python_version="3.11",
    )
    async with running(settings) as platform:
        yield platform


@pytest.fixture
def canaries(docker_stack: Stack) -> Iterator[dict[str, str]]:
    """Secrets in the platform's state directory, one of them readable by anybody on the host."""
    values = {}
    for name, mode in (("canary_docker_key", 0o600), ("canary_docker_public", 0o644)):
        value = f"{name}-{uuid.uuid4().hex}"
        path = docker_stack.settings.state_dir / name
        path.write_text(value)
        path.chmod(mode)
        values[str(path)] = value
    yield values
    for name in values:
        Path(name).unlink(missing_ok=True)


def containers_of(engine: docker.DockerClient, server_id: str) -> list[Any]:
    return labelled_containers(engine, f"{LABEL_SERVER}={server_id}")


async def create(client: httpx.AsyncClient, source: dict[str, Any], **fields: Any) -> dict[str, Any]:
    response = await client.post(
        "/api/servers", json={"name": f"pkg-{uuid.uuid4().hex[:6]}", "source": source, **fields}
    )
    assert response.status_code == 201, response.text
    server: dict[str, Any] = response.json()
    return server


async def delete(client: httpx.AsyncClient, engine: docker.DockerClient, server_id: str) -> None:
    """Delete a server and wait, bounded, until none of its containers is left."""
    assert (await client.delete(f"/api/servers/{server_id}")).status_code == 202
    deadline = time.monotonic() + 60
    while containers_of(engine, server_id) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert containers_of(engine, server_id) == []


async def runtime_logs(client: httpx.AsyncClient, server_id: str, needle: str, timeout: float = 30) -> list[str]:
    """The server's log lines, once one of them has `needle` (or the last ones seen, when none does)."""
    deadline = time.monotonic() + timeout
    while True:
        response = await client.get(f"/api/servers/{server_id}/logs", params={"tail": 400})
        lines = [line["message"] for line in response.json()["data"]]
        if any(needle in line for line in lines) or time.monotonic() > deadline:
            return lines
        await asyncio.sleep(0.3)


async def test_a_pypi_package_runs_as_a_container(docker_stack: Stack, engine: docker.DockerClient) -> None:
    client, account = await docker_stack.user()
    assert account["role"] == "user"
    async with client:
        server = await create(client, TIME)
        result = await deploy(client, server["id"], timeout=600)
        assert result["status"] == "running", result
        assert result["runtime"] == "docker"
        prepare = next(step for step in result["steps"] if step["step"] == "prepare")
        assert "runs mcp-server-time" in (prepare["message"] or ""), prepare

        answer = await call_tool(
            f"{docker_stack.base_url}/mcp/{server['slug']}", server["api_key"], "get_current_time", {"timezone": "UTC"}
        )
        assert json.loads(answer)["timezone"] == "UTC"

        [container] = containers_of(engine, server["id"])
        assert container.image.tags[0].startswith("localhost/mcphost/pkg-")
        uid = await docker_stack.sandbox_uid(server["id"])
        assert container.attrs["Config"]["User"] == f"{uid}:{uid}"
        assert container.attrs["HostConfig"]["PidsLimit"] == docker_stack.settings.sandbox_pids_limit
        bindings = [b for port in container.attrs["HostConfig"]["PortBindings"].values() for b in port or []]
        assert bindings and all(b["HostIp"] == "127.0.0.1" for b in bindings)
        # The image records the package's entry points; the server runs one of them behind the bridge.
        assert "/opt/venv/bin/mcp-server-time" in container.attrs["Config"]["Cmd"]
        assert container.exec_run(["cat", ENTRY_POINTS_FILE]).output == b'["mcp-server-time"]'

        # npm packages are not run in containers: said at once, not at deploy.
        for fields in ({}, {"runtime": "docker"}):
            refused = await client.post(
                "/api/servers",
                json={"name": "npm-x", "source": {"type": "package", "registry": "npm", "package": "x"}, **fields},
            )
            assert refused.status_code == 422, refused.text
            assert "npm packages run on the process runtime" in refused.text
        await delete(client, engine, server["id"])


async def test_an_undeclared_command_fails_the_deploy_listing_the_entry_points(
    docker_stack: Stack, engine: docker.DockerClient
) -> None:
    client, _ = await docker_stack.user()
    async with client:
        server = await create(client, {**TIME, "command": "not-a-script"})
        result = await deploy(client, server["id"], timeout=600)
        assert result["status"] == "failed", result
        error = result["error"]
        assert "'not-a-script'" in error and "its entry points: mcp-server-time" in error, error
        assert containers_of(engine, server["id"]) == []
        await delete(client, engine, server["id"])


def _gateway(container: Any, server_id: str) -> str:
    """The host's address on the server's network, where a container would find what the host serves."""
    container.reload()
    gateway: str = container.attrs["NetworkSettings"]["Networks"][network_name(server_id)]["Gateway"]
    assert gateway
    return gateway


async def test_the_hostile_server_gets_nothing_in_its_container(
    docker_stack: Stack, engine: docker.DockerClient, canaries: dict[str, str]
) -> None:
    build_wheel()
    settings = docker_stack.settings
    owner, _ = await docker_stack.user()
    victim_owner, _ = await docker_stack.user()
    async with owner, victim_owner:
        victim = await create(victim_owner, TIME)
        hostile = await create(owner, HOSTILE, memory_limit=MEMORY_MIB, cpu_limit=0.5)
        for client, server in ((victim_owner, victim), (owner, hostile)):
            result = await deploy(client, server["id"], timeout=600)
            assert result["status"] == "running", result
            assert result["runtime"] == "docker"
        url = f"{docker_stack.base_url}/mcp/{hostile['slug']}"
        key = hostile["api_key"]
        [container] = containers_of(engine, hostile["id"])
        [victim_container] = containers_of(engine, victim["id"])

        # Files: the platform's state directory is not there at all, nor another server's data.
        for path, value in canaries.items():
            got = await attack(url, key, "read_file", path=path)
            assert got.startswith("DENIED") and value not in got, got
        victim_data = server_data_dir(settings.state_dir, victim["id"])
        victim_data.mkdir(parents=True, exist_ok=True)
        got = await attack(url, key, "write_file", path=str(victim_data / "planted"), text="x")
        assert got.startswith("DENIED") and not (victim_data / "planted").exists(), got
        # Nor may it change its own package environment.
        assert (await attack(url, key, "write_file", path="/opt/venv/bin/planted", text="x")).startswith("DENIED")

        # Processes: only its own container's.
        seen = json.loads(await attack(url, key, "scan_processes", needle="pytest"))
        assert seen["found"] == [] and seen["visible_processes"] < 20, seen

        # Network: the platform's services and the other server's published port, neither on the container's
        # own loopback nor through the host's side of its network.
        db = make_url(settings.database_url)
        temporal_host, _, temporal_port = settings.temporal_address.rpartition(":")
        victim_port = int(victim_container.attrs["NetworkSettings"]["Ports"]["8080/tcp"][0]["HostPort"])
        ports = {
            "postgres": db.port or 5432,
            "temporal": int(temporal_port),
            "api": settings.bind_port,
            "other server": victim_port,
        }
        assert temporal_host in ("127.0.0.1", "localhost") and (db.host or "127.0.0.1") in ("127.0.0.1", "localhost")
        gateway = _gateway(container, hostile["id"])
        for what, port in ports.items():
            for host in ("127.0.0.1", gateway):
                got = await attack_may_die(url, key, "connect", host=host, port=port)
                assert got.startswith("FAILED"), f"{what} at {host}:{port}: {got}"

        # Privileges and resources: as on the process runtime.
        await assert_no_privileges_and_bounded(
            url, key, pids_limit=settings.sandbox_pids_limit, allocate_mib=MEMORY_MIB * 2
        )
        needle = f"memory limit of {MEMORY_MIB} MiB"
        logs = await runtime_logs(owner, hostile["id"], needle)
        assert any(needle in line for line in logs), logs[-15:]

        # /data is its own: what its owner uploads it reads, and still after a redeploy.
        upload = await owner.post(f"/api/servers/{hostile['id']}/files/note.txt", content=b"from the owner")
        assert upload.status_code == 201, upload.text
        assert await attack(url, key, "read_file", path="/data/note.txt") == "READ: from the owner"
        again = await deploy(owner, hostile["id"], timeout=600)
        assert again["status"] == "running", again
        [replacement] = containers_of(engine, hostile["id"])
        assert replacement.id != container.id
        assert await attack(url, key, "read_file", path="/data/note.txt") == "READ: from the owner"

        # The other tenant's server never noticed.
        assert victim_container.id == containers_of(engine, victim["id"])[0].id
        answer = await call_tool(
            f"{docker_stack.base_url}/mcp/{victim['slug']}", victim["api_key"], "get_current_time", {"timezone": "UTC"}
        )
        assert json.loads(answer)["timezone"] == "UTC"
        for client, server in ((owner, hostile), (victim_owner, victim)):
            await delete(client, engine, server["id"])
