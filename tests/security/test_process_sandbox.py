"""Server code, the channel, on the process runtime: what a sandboxed server sees of the host (only what
the sandbox lists) and which system calls it may make (not those the seccomp filter refuses).

The hostile server lists folders and makes the refused calls itself; the control makes the same calls as
an unprivileged uid without the filter, where the ones that matter succeed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from runtimes import sandbox, sandbox_plan
from tests.support.components import require
from tests.support.hostile import NAME, SOURCE, VERSION, attack, build_wheel
from tests.support.stack import Stack, deploy

HOSTILE = {"type": "package", "package": NAME, "version": VERSION}


@pytest.fixture(scope="module")
async def hostile(stack: Stack) -> AsyncIterator[tuple[str, str]]:
    require(sandbox.probe().ok, sandbox.probe().describe())
    build_wheel()
    client, _ = await stack.user()
    async with client:
        server = (
            await client.post("/api/servers", json={"name": f"sb-{uuid.uuid4().hex[:6]}", "source": HOSTILE})
        ).json()
        result = await deploy(client, server["id"])
        assert result["status"] == "running", result
        yield f"{stack.base_url}/mcp/{server['slug']}", server["api_key"]
        assert (await client.delete(f"/api/servers/{server['id']}")).status_code == 202


async def _listing(hostile: tuple[str, str], path: str) -> Any:
    got = await attack(*hostile, "list_dir", path=path)
    return got if got.startswith("DENIED") else json.loads(got)


async def test_the_server_sees_only_what_the_sandbox_lists(stack: Stack, hostile: tuple[str, str]) -> None:
    # Besides the system: the way down to the server's package environment and to what the operator
    # named for installs (a local wheel directory, a trust store), nothing beside them.
    bound = [*sandbox_plan.exposed_paths(dict(os.environ)), str(stack.settings.state_dir)]
    tops = {path.split("/")[1] for path in bound}
    root = set(await _listing(hostile, "/"))
    assert root <= {*sandbox_plan.SYSTEM_DIRS, *tops, "etc", "dev", "proc", "data", "tmp", "var", "home"}, root
    for gone in {"sys", "run", "srv", "opt", "work", "mnt", "media", "boot"} - tops:
        assert gone not in root
    assert set(await _listing(hostile, "/etc")) <= set(sandbox_plan.SYSTEM_ETC)
    assert await _listing(hostile, "/var") == ["tmp"]
    # Every deployment's cgroup used to be listed under /sys/fs/cgroup.
    assert str(await _listing(hostile, "/sys/fs/cgroup")).startswith("DENIED")
    # Of the platform's state directory, only the way down to its own package environment: one name a level.
    path, names = str(stack.settings.state_dir), await _listing(hostile, str(stack.settings.state_dir))
    while names and not (path.endswith("/pypi") or path.endswith("/npm")):
        assert isinstance(names, list) and len(names) == 1, (path, names)
        path = f"{path}/{names[0]}"
        names = await _listing(hostile, path)
    assert isinstance(names, list) and len(names) == 1 and names[0].startswith(NAME), names
    assert await _listing(hostile, "/home/mcp") == []


async def test_the_calls_a_server_never_needs_are_refused(hostile: tuple[str, str]) -> None:
    got = json.loads(await attack(*hostile, "syscalls"))
    assert set(got.values()) == {"EPERM"}, got


def test_control_the_same_calls_without_the_filter_succeed() -> None:
    """Made by an unprivileged uid on the host (no filter): a user namespace and the keyrings are there."""
    require(sandbox.probe().ok, sandbox.probe().describe())
    done = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, str(SOURCE), "--syscalls"],
        capture_output=True,
        text=True,
        check=True,
    )
    got = json.loads(done.stdout)
    assert got["unshare_user"] == "OK" and got["keyctl"] == "OK", got
