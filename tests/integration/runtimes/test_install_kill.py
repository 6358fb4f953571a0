"""An install that is cancelled, or whose worker is killed, leaves no installer running beside the next one.

The package index is a server of the test's own that answers a listing one byte at a time and never
finishes: pip waits on it for as long as the test likes, a real pip in its real (sandboxed) process tree.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.support.stack import Stack, WorkerProcess, make_settings, running, wait_deployment


def _host_address() -> str | None:
    """An IPv4 address of this host other than loopback: sandboxed installs reach the network through
    slirp4netns, which never lets them at the host's loopback."""
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family.name == "AF_INET" and not address.address.startswith("127."):
                return str(address.address)
    return None


@contextlib.asynccontextmanager
async def stalled_index(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[str, str]]:
    """An HTTP listing that trickles forever; yields its URL and the sandbox mode that can reach it."""
    host = _host_address()
    # pip reads plain-HTTP indexes only from hosts it is told to trust (installers inherit the setting).
    monkeypatch.setenv("PIP_TRUSTED_HOST", host or "127.0.0.1")
    mode = "required" if host else "off"

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 100000000\r\n\r\n")
            while True:
                writer.write(b" ")
                await writer.drain()
                await asyncio.sleep(1.0)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(trickle, host or "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://{host or '127.0.0.1'}:{port}/", mode
    finally:
        server.close()
        # Connections still open (their clients are killed by now) end with the server.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), timeout=5)


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def installers(package: str) -> dict[int, psutil.Process]:
    """Running pip processes installing `package` (inside a sandbox or not): `python -m pip install ...`,
    not the sandbox's own processes, whose arguments name the same command."""
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        is_pip = (
            len(cmdline) > 3 and Path(cmdline[0]).name.startswith("python") and cmdline[1:4] == ["-m", "pip", "install"]
        )
        if is_pip and package in cmdline and _alive(proc):
            found[proc.pid] = proc
    return found


async def wait_for_installer(package: str, timeout: float = 120) -> dict[int, psutil.Process]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := installers(package):
            return found
        await asyncio.sleep(0.05)
    pytest.fail(f"no pip process installing {package} appeared within {timeout:.0f} s")


async def wait_gone(procs: dict[int, psutil.Process], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in procs.values()):
        if time.monotonic() > deadline:
            pytest.fail(f"installer processes {sorted(p.pid for p in procs.values() if _alive(p))} still run")
        await asyncio.sleep(0.05)


def forget_environment(state_dir: Path, package: str) -> None:
    for path in (state_dir / "process" / "envs" / "pypi").glob(f"{package}-*"):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


async def create(client: httpx.AsyncClient, package: str) -> dict[str, Any]:
    source = {"type": "package", "package": package}
    response = await client.post("/api/servers", json={"name": f"stall-{uuid.uuid4().hex[:6]}", "source": source})
    assert response.status_code == 201, response.text
    return dict(response.json())


async def test_cancelling_a_deployment_kills_its_install(
    database_url: str, temporal_address: str, process_state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = f"mcphost-stall-{uuid.uuid4().hex[:8]}"
    async with stalled_index(monkeypatch) as (index, mode):
        settings = make_settings(
            database_url, temporal_address, process_state_dir, package_find_links=index, process_sandbox=mode
        )
        try:
            async with running(settings) as stack:
                client, _ = await stack.user()
                async with client:
                    server = await create(client, package)
                    accepted = (await client.post(f"/api/servers/{server['id']}/deployments")).json()
                    pips = await wait_for_installer(package)

                    cancel = await client.post(f"/api/deployments/{accepted['deployment_id']}/cancel")
                    assert cancel.status_code == 202, cancel.text
                    done = await wait_deployment(client, accepted["deployment_id"], timeout=120)
                    assert done["status"] == "cancelled", (done["error"], done["steps"])
                    steps = {s["step"]: s for s in done["steps"]}
                    assert steps["prepare"]["status"] == "failed" and "cancelled" in steps["prepare"]["message"]
                    await wait_gone(pips)
                    assert not installers(package)

                    again = await client.post(f"/api/deployments/{accepted['deployment_id']}/cancel")
                    assert again.status_code == 409 and "already ended" in again.json()["detail"]
                    detail = (await client.get(f"/api/servers/{server['id']}")).json()
                    assert detail["active_deployment_id"] is None
                    assert (await client.delete(f"/api/servers/{server['id']}")).status_code == 202
        finally:
            forget_environment(process_state_dir, package)


@pytest.fixture
async def api_and_worker(
    temporal_address: str, database_url: str, process_state_dir: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Stack, WorkerProcess, str]]:
    package = f"mcphost-stall-{uuid.uuid4().hex[:8]}"
    async with stalled_index(monkeypatch) as (index, mode):
        settings = make_settings(
            database_url, temporal_address, process_state_dir, package_find_links=index, process_sandbox=mode
        )
        platform = Stack(settings, in_process_worker=False)
        await platform.start()
        worker = WorkerProcess(settings, workdir / f"worker-{uuid.uuid4().hex[:6]}.log")
        worker.start()
        try:
            yield platform, worker, package
        finally:
            worker.stop()
            await platform.stop()
            for proc in installers(package).values():
                with contextlib.suppress(psutil.Error):
                    proc.kill()
            forget_environment(process_state_dir, package)


async def test_a_killed_workers_install_is_stopped_before_the_next_attempt(
    api_and_worker: tuple[Stack, WorkerProcess, str],
) -> None:
    stack, worker, package = api_and_worker
    client, _ = await stack.user()
    async with client:
        server = await create(client, package)
        accepted = (await client.post(f"/api/servers/{server['id']}/deployments")).json()
        first = await wait_for_installer(package)

        worker.kill()
        # A worker killed like this cannot stop its installer, which runs in a session of its own: it
        # lives on, and would install beside the next attempt if nothing stopped it.
        await asyncio.sleep(0)
        assert all(_alive(p) for p in first.values()), "the installer died with its worker; nothing to show"

        worker.start()
        deadline = time.monotonic() + 120
        overlap: list[int] = []
        while True:
            now = installers(package)
            fresh = {pid: p for pid, p in now.items() if pid not in first}
            if fresh:
                overlap = [p.pid for p in first.values() if _alive(p)]
                break
            if time.monotonic() > deadline:
                pytest.fail("the install was not attempted again after the worker came back")
            await asyncio.sleep(0.05)
        assert not overlap, f"the earlier installer {overlap} still ran when the next attempt started"
        assert not any(_alive(p) for p in first.values())

        cancel = await client.post(f"/api/deployments/{accepted['deployment_id']}/cancel")
        assert cancel.status_code == 202, cancel.text
        done = await wait_deployment(client, accepted["deployment_id"], timeout=120)
        assert done["status"] == "cancelled", done
        await wait_gone(fresh)
        assert (await client.delete(f"/api/servers/{server['id']}")).status_code == 202
