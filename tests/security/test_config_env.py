"""Config env, the channel: what a tenant sets as its server's environment reaches that server alone, never
a process of the platform's (the stdio bridge, the sandbox launcher, bwrap and the shell before the uid
drop), and never decides what the sandbox shows.

Each attack is a real deployment on the process runtime with the sandbox on, by a non-administrator; the
host's file system is checked afterwards. The control runs the same attacks with the platform's helpers
given the server's env, as they once were, and shows them reaching root.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from core.tenancy import server_data_dir
from runtimes import process as process_runtime
from runtimes import sandbox, sandbox_plan
from runtimes.process import ProcessExecutor
from tests.support.components import require
from tests.support.hostile import NAME, VERSION, attack, build_wheel
from tests.support.stack import Stack, deploy

TIME = {"type": "package", "package": "mcp-server-time", "args": ["--local-timezone", "UTC"]}
HOSTILE = {"type": "package", "package": NAME, "version": VERSION}

PRELOAD_SOURCE = r"""
#include <stdio.h>
#include <unistd.h>
__attribute__((constructor)) static void mark(void) {
    FILE *f = fopen(MARKER, "a");
    if (f) { fprintf(f, "uid=%d\n", (int)getuid()); fclose(f); }
}
"""


@pytest.fixture
def markers(tmp_path: Path) -> Path:
    """A host directory where an attack that reached a platform process leaves its mark (the sandbox never
    shows it)."""
    folder = tmp_path / f"markers-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    folder.chmod(0o777)
    return folder


def _preload(markers: Path) -> bytes:
    """A shared object that, loaded into any process, appends that process's uid to a host file."""
    require(subprocess.run(["which", "gcc"], capture_output=True).returncode == 0, "gcc (apt-get install gcc)")
    c = markers / "mark.c"
    c.write_text(PRELOAD_SOURCE)
    so = markers / "mark.so"
    subprocess.run(
        ["gcc", "-shared", "-fPIC", f'-DMARKER="{markers / "preloaded"}"', "-o", str(so), str(c)], check=True
    )
    data = so.read_bytes()
    so.unlink()
    return data


async def _deploy(client: Any, source: dict[str, Any], env: dict[str, str], upload: bytes | None = None) -> Any:
    server = await client.post("/api/servers", json={"name": f"e-{uuid.uuid4().hex[:6]}", "source": source, "env": env})
    assert server.status_code == 201, server.text
    server = server.json()
    if upload is not None:
        response = await client.post(f"/api/servers/{server['id']}/files/lib/mark.so", content=upload)
        assert response.status_code == 201, response.text
    return server, await deploy(client, server["id"])


def _attacks(stack: Stack, server_id: str, markers: Path) -> dict[str, str]:
    data = server_data_dir(stack.settings.state_dir, server_id)
    return {
        # Python's warning filters import the module a category names; antigravity opens $BROWSER.
        "PYTHONWARNINGS": "all:0:antigravity.x:0:0",
        "BROWSER": f"/bin/sh -c 'id > {markers / 'browser'}' #%s",
        # A library of the tenant's own, by its host path (platform processes) and its sandbox path.
        "LD_PRELOAD": f"{data / 'lib' / 'mark.so'}:/data/lib/mark.so",
    }


@pytest.fixture
async def tenant(stack: Stack) -> AsyncIterator[Any]:
    require(sandbox.probe().ok, sandbox.probe().describe())
    client, _ = await stack.user()
    async with client:
        yield client


async def test_a_servers_env_never_reaches_a_platform_process(stack: Stack, tenant: Any, markers: Path) -> None:
    so = _preload(markers)
    server = (await tenant.post("/api/servers", json={"name": f"e-{uuid.uuid4().hex[:6]}", "source": TIME})).json()
    server_id = server["id"]
    env = _attacks(stack, server_id, markers)
    assert (await tenant.patch(f"/api/servers/{server_id}", json={"env": env})).status_code == 200
    assert (await tenant.post(f"/api/servers/{server_id}/files/lib/mark.so", content=so)).status_code == 201
    result = await deploy(tenant, server_id)
    assert result["status"] == "running", result
    # The server answers (its env did reach it: the preloaded library ran inside, as the server's uid,
    # where the host's marker directory does not exist).
    assert not (markers / "browser").exists(), (markers / "browser").read_text()
    assert not (markers / "preloaded").exists(), (markers / "preloaded").read_text()
    assert (await tenant.delete(f"/api/servers/{server_id}")).status_code == 202


async def test_control_helpers_given_the_servers_env_run_the_tenants_code_as_root(
    stack: Stack, tenant: Any, markers: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    so = _preload(markers)
    server = (await tenant.post("/api/servers", json={"name": f"e-{uuid.uuid4().hex[:6]}", "source": TIME})).json()
    env = _attacks(stack, server["id"], markers)
    # The protection switched off: helpers inherit the server's env and Python reads PYTHON* variables.
    monkeypatch.setattr(ProcessExecutor, "_helper_env", lambda self: self._base_env() | env)
    monkeypatch.setattr(process_runtime, "ISOLATED_PYTHON", (sys.executable,))
    assert (await tenant.patch(f"/api/servers/{server['id']}", json={"env": env})).status_code == 200
    assert (await tenant.post(f"/api/servers/{server['id']}/files/lib/mark.so", content=so)).status_code == 201
    await deploy(tenant, server["id"])
    assert "uid=0(root)" in (markers / "browser").read_text()
    assert "uid=0" in (markers / "preloaded").read_text().splitlines()
    assert (await tenant.delete(f"/api/servers/{server['id']}")).status_code == 202


async def test_a_servers_env_does_not_decide_what_its_sandbox_shows(stack: Stack, tenant: Any) -> None:
    build_wheel()
    state = stack.settings.state_dir
    canary = state / f"canary-{uuid.uuid4().hex[:6]}"
    canary.write_text("platform state")
    canary.chmod(0o644)
    try:
        env = {name: str(state) for name in ("SSL_CERT_DIR", "SSL_CERT_FILE", "PIP_FIND_LINKS", "NODE_EXTRA_CA_CERTS")}
        server, result = await _deploy(tenant, HOSTILE, env)
        assert result["status"] == "running", result
        url, key = f"{stack.base_url}/mcp/{server['slug']}", server["api_key"]
        got = await attack(url, key, "read_file", path=str(canary))
        assert got.startswith("DENIED") and "platform state" not in got, got
        assert (await tenant.delete(f"/api/servers/{server['id']}")).status_code == 202
    finally:
        canary.unlink(missing_ok=True)


def test_control_a_sandbox_planned_from_a_servers_env_would_show_the_state_directory(tmp_path: Path) -> None:
    assert str(tmp_path) in sandbox_plan.exposed_paths({"SSL_CERT_DIR": str(tmp_path)})


async def test_a_servers_args_are_never_read_by_a_shell(stack: Stack, tenant: Any, markers: Path) -> None:
    """Args, the channel: what a tenant puts in its server's arguments reaches that server's argv as it is."""
    marker = markers / "args"
    args = ["--local-timezone", f"UTC; id > {marker}", f"$(id > {marker})", f"`id > {marker}`"]
    server = (
        await tenant.post("/api/servers", json={"name": f"a-{uuid.uuid4().hex[:6]}", "source": {**TIME, "args": args}})
    ).json()
    await deploy(tenant, server["id"])  # the server may well refuse such a time zone: that is its own affair
    assert not marker.exists(), marker.read_text()
    assert (await tenant.delete(f"/api/servers/{server['id']}")).status_code == 202


def test_control_the_same_args_given_to_a_shell_run_its_commands(markers: Path) -> None:
    marker = markers / "args"
    args = ["--local-timezone", f"UTC; id > {marker}"]
    subprocess.run(["/bin/sh", "-c", "mcp-server-time " + " ".join(args)], capture_output=True, check=False)
    assert "uid=" in marker.read_text()
