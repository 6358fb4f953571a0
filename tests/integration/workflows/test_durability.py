"""Kill the worker (SIGKILL) in the middle of a deployment; a new worker finishes it, once."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import create_async_engine

from core.models import Deployment
from runtimes.process import ProcessExecutor
from tests.support.mcp_client import call_tool
from tests.support.stack import Stack, WorkerProcess, settings_env, wait_deployment, wait_for

TIME = {"type": "package", "package": "mcp-server-time", "args": ["--local-timezone", "UTC"]}


async def _running(executor: ProcessExecutor, server_id: str) -> list[str]:
    return [
        i.deployment_id for i in await executor.instances(server_id) if (await executor.status(i)).state == "running"
    ]


@pytest.mark.parametrize("kill_at", ["spawned", "health_check"])
async def test_worker_killed_mid_deployment_still_ends_running_once(
    api_only: tuple[Stack, WorkerProcess], kill_at: str
) -> None:
    stack, worker = api_only
    executor = ProcessExecutor(stack.settings.state_dir / "process")
    client, _ = await stack.user()
    async with client:
        server = (await client.post("/api/servers", json={"name": f"d-{uuid.uuid4().hex[:6]}", "source": TIME})).json()
        accepted = (await client.post(f"/api/servers/{server['id']}/deployments")).json()

        # Wait for the chosen moment, then kill the worker like a crash would.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if kill_at == "spawned":
                if await executor.instances(server["id"]):
                    break  # the server process exists; the launch may not even be recorded yet
            else:
                detail = (await client.get(f"/api/deployments/{accepted['deployment_id']}")).json()
                steps = {s["step"]: s["status"] for s in detail["steps"]}
                if steps.get("health_check") == "started":
                    break
            await asyncio.sleep(0.02)
        else:
            pytest.fail(f"never reached {kill_at}")
        worker.kill()
        at_kill = (await client.get(f"/api/deployments/{accepted['deployment_id']}")).json()
        assert at_kill["status"] == "deploying", "the deployment finished before the kill; the test proved nothing"

        worker.start()
        done = await wait_deployment(client, accepted["deployment_id"], timeout=180)
        assert done["status"] == "running", done

        # Exactly one process for the server, and it is the deployment's.
        assert await _running(executor, server["id"]) == [accepted["deployment_id"]]
        engine = create_async_engine(stack.settings.database_url)
        async with engine.connect() as conn:
            rows = await conn.execute(
                select(Deployment.status, func.count())
                .where(Deployment.server_id == uuid.UUID(server["id"]))
                .group_by(Deployment.status)
            )
            counts = dict(rows.all())
        await engine.dispose()
        assert counts == {"running": 1}
        gateway = f"{stack.base_url}/mcp/{server['slug']}"
        assert json.loads(await call_tool(gateway, server["api_key"], "get_current_time", {"timezone": "UTC"}))

        assert (await client.delete(f"/api/servers/{server['id']}")).status_code == 202
        for _ in range(300):
            if (await client.get(f"/api/servers/{server['id']}")).status_code == 404:
                break
            await asyncio.sleep(0.2)
        assert await _running(executor, server["id"]) == []


# Loaded by the worker below before anything else: it stops the worker between starting a server's process
# and recording it, and says that it got there, so the test can kill it at exactly that moment.
_HOLD_BEFORE_RECORD = """
import os, time
import runtimes.process as process

def _held(self, instance):
    with open(os.environ["MCPHOST_TEST_STARTED"], "w") as fh:
        fh.write(instance.ref.partition(":")[0])
    time.sleep(3600)

process.ProcessExecutor._record = _held
"""


@dataclass
class HeldWorker(WorkerProcess):
    hook: Path | None = None
    started: Path | None = None

    def start(self) -> None:
        assert self.hook is not None and self.started is not None
        env = settings_env(self.settings) | {"PYTHONPATH": str(self.hook), "MCPHOST_TEST_STARTED": str(self.started)}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "worker"], env=env, stdout=log, stderr=subprocess.STDOUT
            )


async def test_a_worker_killed_before_recording_a_launch_leaves_no_second_server(
    api_only: tuple[Stack, WorkerProcess], tmp_path: Path
) -> None:
    stack, worker = api_only
    worker.stop()
    (tmp_path / "sitecustomize.py").write_text(_HOLD_BEFORE_RECORD)
    started = tmp_path / "started"
    held = HeldWorker(stack.settings, worker.log_path, hook=tmp_path, started=started)
    held.start()
    executor = ProcessExecutor(stack.settings.state_dir / "process")
    client, _ = await stack.user()
    async with client:
        server = (await client.post("/api/servers", json={"name": f"d-{uuid.uuid4().hex[:6]}", "source": TIME})).json()
        accepted = (await client.post(f"/api/servers/{server['id']}/deployments")).json()
        deployment_id = accepted["deployment_id"]
        orphan = int(await wait_for(lambda: _read(started), "the launch to start its process", timeout=180))
        held.kill()
        assert psutil.pid_exists(orphan) and await executor.instances(server["id"]) == []

        worker.start()
        done = await wait_deployment(client, deployment_id, timeout=180)
        assert done["status"] == "running", done
        assert not psutil.pid_exists(orphan) or psutil.Process(orphan).status() == psutil.STATUS_ZOMBIE
        # Every process of the deployment is the recorded instance or one it started.
        [instance] = await executor.instances(server["id"])
        leader = int(instance.ref.partition(":")[0])
        family = {leader, *(p.pid for p in psutil.Process(leader).children(recursive=True))}
        assert {p.pid for p in executor._unrecorded(deployment_id)} <= family

        assert (await client.delete(f"/api/servers/{server['id']}")).status_code == 202
        for _ in range(300):
            if (await client.get(f"/api/servers/{server['id']}")).status_code == 404:
                break
            await asyncio.sleep(0.2)
        assert executor._unrecorded(deployment_id) == []


async def _read(path: Path) -> str | None:
    try:
        return path.read_text() or None
    except FileNotFoundError:
        return None
