"""A hostile server, deployed by a non-administrator on the process runtime, tries every way out of its
sandbox and fails; the same server with the sandbox off gets through, which shows the attacks are real.

The server (tests/support/hostile_server) is a wheel installed from the local wheel directory like any
PyPI server; each of its tools tries one attack and reports what it got.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy.engine import make_url

from core.tenancy import server_data_dir
from runtimes import sandbox, sandbox_limits
from runtimes.process import ProcessExecutor
from tests.support.components import require
from tests.support.hostile import NAME, VERSION, assert_no_privileges_and_bounded, attack, attack_may_die, build_wheel
from tests.support.mcp_client import call_tool
from tests.support.stack import Stack, deploy, make_settings, running

HOSTILE = {"type": "package", "package": NAME, "version": VERSION}
TIME = {"type": "package", "package": "mcp-server-time", "args": ["--local-timezone", "UTC"]}


@pytest.fixture(scope="module")
def hostile_wheel() -> Path:
    return build_wheel()


@pytest.fixture(scope="module")
def canaries(stack: Stack) -> dict[str, str]:
    """Secrets in the platform's state directory: one readable only by the platform, one by anybody (so
    that only hiding, not file modes, can keep it from a server)."""
    state = stack.settings.state_dir
    values = {}
    for name, mode in (("canary_key", 0o600), ("canary_public", 0o644)):
        value = f"{name}-{uuid.uuid4().hex}"
        path = state / name
        path.write_text(value)
        path.chmod(mode)
        values[str(path)] = value
    return values


async def _servers(stack: Stack) -> tuple[Any, dict[str, Any], dict[str, Any], Any]:
    owner, _ = await stack.user()
    victim_owner, _ = await stack.user()
    hostile = (
        await owner.post(
            "/api/servers",
            json={"name": f"h-{uuid.uuid4().hex[:6]}", "source": HOSTILE, "memory_limit": 160, "cpu_limit": 0.5},
        )
    ).json()
    victim = (
        await victim_owner.post("/api/servers", json={"name": f"v-{uuid.uuid4().hex[:6]}", "source": TIME})
    ).json()
    for client, server in ((owner, hostile), (victim_owner, victim)):
        result = await deploy(client, server["id"])
        assert result["status"] == "running", result
    return owner, hostile, victim, victim_owner


def _targets(stack: Stack, victim_url: str) -> dict[str, tuple[str, int]]:
    db = make_url(stack.settings.database_url)
    temporal_host, _, temporal_port = stack.settings.temporal_address.rpartition(":")
    upstream = urlsplit(victim_url)
    return {
        "postgres": (db.host or "127.0.0.1", db.port or 5432),
        "temporal": (temporal_host, int(temporal_port)),
        "api": ("127.0.0.1", stack.settings.bind_port),
        "other server": (upstream.hostname or "127.0.0.1", upstream.port or 80),
        "host via slirp": ("10.0.2.2", db.port or 5432),
    }


async def test_the_reported_attack_is_refused_before_anything_runs(stack: Stack) -> None:
    client, _ = await stack.user()
    async with client:
        for command in ("python", "python3", "node", "sh", "bash", "/usr/bin/python3"):
            source = {**TIME, "command": command, "args": ["-c", "print(open('/etc/passwd').read())"]}
            response = await client.post("/api/servers", json={"name": f"x-{uuid.uuid4().hex[:6]}", "source": source})
            assert response.status_code == 422, response.text
            assert "entry point" in response.text
        # A name that is not an entry point of the package is refused at deploy, listing the real ones.
        source = {**TIME, "command": "not-a-script"}
        server = (
            await client.post("/api/servers", json={"name": f"x-{uuid.uuid4().hex[:6]}", "source": source})
        ).json()
        result = await deploy(client, server["id"])
        assert result["status"] == "failed"
        assert "mcp-server-time" in result["error"] and "entry points" in result["error"], result["error"]


async def test_hostile_server_gets_nothing_and_the_platform_keeps_serving(
    stack: Stack, hostile_wheel: Path, canaries: dict[str, str]
) -> None:
    require(sandbox.probe().ok, sandbox.probe().describe())
    owner, hostile, victim, victim_owner = await _servers(stack)
    url = f"{stack.base_url}/mcp/{hostile['slug']}"
    key = hostile["api_key"]
    executor = ProcessExecutor(stack.settings.state_dir / "process")
    [victim_instance] = await executor.instances(victim["id"])
    state = stack.settings.state_dir

    # Files: the platform's keys and state, other servers' data and package environments.
    for path, value in canaries.items():
        got = await attack(url, key, "read_file", path=path)
        assert got.startswith("DENIED") and value not in got, got
    for path in ("/etc/shadow", str(state / "process" / "logs" / f"{victim_instance.deployment_id}.log")):
        assert (await attack(url, key, "read_file", path=path)).startswith("DENIED")
    victim_data = server_data_dir(state, victim["id"])
    victim_data.mkdir(parents=True, exist_ok=True)
    (victim_data / "private.txt").write_text("victim's own")
    assert (await attack(url, key, "read_file", path=str(victim_data / "private.txt"))).startswith("DENIED")
    assert (await attack(url, key, "write_file", path=str(victim_data / "planted"), text="x")).startswith("DENIED")
    [victim_env] = list((state / "process" / "envs" / "pypi").glob("mcp-server-time-*"))[:1]
    got = await attack(url, key, "write_file", path=str(victim_env / "bin" / "planted"), text="x")
    assert got.startswith("DENIED") and not (victim_env / "bin" / "planted").exists()
    # Its own package environment is read-only to it too.
    [own_env] = list((state / "process" / "envs" / "pypi").glob(f"{NAME}-*"))[:1]
    assert (await attack(url, key, "write_file", path=str(own_env / "bin" / "planted"), text="x")).startswith("DENIED")
    # Its own /data is its own: what it writes lands in its data directory, what its owner uploads it reads.
    assert await attack(url, key, "write_file", path="/data/mine.txt", text="kept") == "WROTE"
    assert (server_data_dir(state, hostile["id"]) / "mine.txt").read_text() == "kept"
    upload = await owner.post(f"/api/servers/{hostile['id']}/files/notes/today.txt", content=b"from the owner")
    assert upload.status_code == 201, upload.text
    assert await attack(url, key, "read_file", path="/data/notes/today.txt") == "READ: from the owner"

    # Its limits are in force: the cgroup of its deployment carries them (or, without cgroups, rlimits do).
    deployment_id = (await owner.get(f"/api/servers/{hostile['id']}")).json()["active_deployment_id"]
    limits = sandbox_limits.cgroup_mode()
    if limits == "cgroup-v1":
        group = Path("/sys/fs/cgroup")
        assert (group / "cpu/mcphost" / deployment_id / "cpu.cfs_quota_us").read_text().strip() == "50000"
        memory = (group / "memory/mcphost" / deployment_id / "memory.limit_in_bytes").read_text().strip()
        assert memory == str(160 * 1024 * 1024)
    elif limits == "cgroup-v2":
        group = Path("/sys/fs/cgroup/mcphost") / deployment_id
        assert (group / "cpu.max").read_text().split()[0] == "50000"
        assert (group / "memory.max").read_text().strip() == str(160 * 1024 * 1024)

    # Processes: none of the platform's are visible, so neither their environment nor command line.
    seen = json.loads(await attack(url, key, "scan_processes", needle="HOME=/root"))
    assert seen["found"] == [] and seen["visible_processes"] < 20, seen
    assert json.loads(await attack(url, key, "scan_processes", needle="pytest"))["found"] == []

    # The other server's bridge answers only under the secret path the platform keeps: a local user (or
    # anything else that reaches the host's loopback) finds nothing at the port alone.
    upstream = urlsplit(victim_instance.url)
    assert len(upstream.path.strip("/").split("/")) == 2
    async with httpx.AsyncClient() as raw:
        guess = await raw.post(
            f"http://127.0.0.1:{upstream.port}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"}
        )
    assert guess.status_code == 404 and upstream.path not in guess.text

    # Network: no way to the platform's services or another server, from its loopback or via the host.
    for what, (host, port) in _targets(stack, victim_instance.url).items():
        got = await attack_may_die(url, key, "connect", host=host, port=port)
        assert got.startswith("FAILED"), f"{what} at {host}:{port}: {got}"

    # Privileges and resources: no root, no capabilities; a fork bomb and memory past the limit are stopped.
    await assert_no_privileges_and_bounded(url, key, pids_limit=stack.settings.sandbox_pids_limit, allocate_mib=400)
    logs = (await owner.get(f"/api/servers/{hostile['id']}/logs", params={"tail": 400})).json()["data"]
    assert any("memory limit of 160 MiB" in line["message"] for line in logs), logs[-10:]

    # The platform and the other tenant's server are unharmed, and the hostile server still answers.
    async with stack.client() as anon:
        assert (await anon.get("/api/health")).status_code == 200
    answer = await call_tool(
        f"{stack.base_url}/mcp/{victim['slug']}", victim["api_key"], "get_current_time", {"timezone": "UTC"}
    )
    assert json.loads(answer)["timezone"] == "UTC"
    assert await attack(url, key, "read_file", path="/data/mine.txt") == "READ: kept"
    # /data outlives a redeploy.
    assert (await deploy(owner, hostile["id"]))["status"] == "running"
    assert await attack(url, key, "read_file", path="/data/notes/today.txt") == "READ: from the owner"
    for client, server in ((owner, hostile), (victim_owner, victim)):
        assert (await client.delete(f"/api/servers/{server['id']}")).status_code == 202
        await client.aclose()


@pytest.fixture
async def unsandboxed(stack: Stack) -> AsyncIterator[Stack]:
    settings = make_settings(
        stack.settings.database_url,
        stack.settings.temporal_address,
        stack.settings.state_dir,
        process_sandbox="off",
    )
    async with running(settings) as platform:
        yield platform


async def test_without_the_sandbox_the_same_attacks_succeed(
    unsandboxed: Stack, hostile_wheel: Path, canaries: dict[str, str]
) -> None:
    """The control: PROCESS_SANDBOX=off (a single-user install) runs servers with the platform's rights."""
    owner, hostile, victim, victim_owner = await _servers(unsandboxed)
    url = f"{unsandboxed.base_url}/mcp/{hostile['slug']}"
    key = hostile["api_key"]
    public = next(p for p in canaries if p.endswith("canary_public"))
    assert canaries[public] in await attack(url, key, "read_file", path=public)
    assert json.loads(await attack(url, key, "scan_processes", needle="pytest"))["found"] != []
    executor = ProcessExecutor(unsandboxed.settings.state_dir / "process")
    [victim_instance] = await executor.instances(victim["id"])
    targets = _targets(unsandboxed, victim_instance.url)
    for what in ("postgres", "api", "other server"):
        host, port = targets[what]
        assert await attack(url, key, "connect", host=host, port=port) == "CONNECTED", what
    for client, server in ((owner, hostile), (victim_owner, victim)):
        assert (await client.delete(f"/api/servers/{server['id']}")).status_code == 202
        await client.aclose()


async def test_an_http_server_is_reached_through_its_forwarded_port_and_nothing_more(
    stack: Stack, hostile_wheel: Path
) -> None:
    """A package that serves streamable HTTP itself listens inside its own network namespace; the platform
    forwards one loopback port to it (slirp4netns), and it is as contained as a bridged one."""
    require(sandbox.probe().ok, sandbox.probe().describe())
    owner, _ = await stack.user()
    async with owner:
        source = {**HOSTILE, "transport": "http", "args": ["--http"]}
        server = (
            await owner.post("/api/servers", json={"name": f"hh-{uuid.uuid4().hex[:6]}", "source": source})
        ).json()
        result = await deploy(owner, server["id"])
        assert result["status"] == "running", result
        url, key = f"{stack.base_url}/mcp/{server['slug']}", server["api_key"]
        [instance] = await ProcessExecutor(stack.settings.state_dir / "process").instances(server["id"])
        assert urlsplit(instance.url).hostname == "127.0.0.1"
        assert await attack(url, key, "write_file", path="/data/x", text="y") == "WROTE"
        assert json.loads(await attack(url, key, "scan_processes", needle="pytest"))["found"] == []
        db = make_url(stack.settings.database_url)
        assert (await attack(url, key, "connect", host="127.0.0.1", port=db.port or 5432)).startswith("FAILED")
        assert (await attack(url, key, "connect", host="10.0.2.2", port=stack.settings.bind_port)).startswith("FAILED")
        assert (await owner.delete(f"/api/servers/{server['id']}")).status_code == 202
