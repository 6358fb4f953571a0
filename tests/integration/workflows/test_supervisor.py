"""SupervisorWorkflow on the real stack: a killed server process is replaced and serves again through the
gateway, the restart is recorded once, repeated crashes mark the server degraded, and supervision ends
when the server is stopped."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psutil
from temporalio.service import RPCError

from runtimes.process import ProcessExecutor
from tests.integration.api.test_lifecycle import create_time_server, current_time
from tests.support.sse import EventStream
from tests.support.stack import Stack, WorkerProcess, deploy, make_settings, running, wait_for
from workflows.supervisor import SupervisorWorkflow


async def events(client: httpx.AsyncClient, sid: str, names: str) -> list[dict[str, Any]]:
    response = await client.get(f"/api/servers/{sid}/metrics", params={"event": names})
    assert response.status_code == 200, response.text
    return list(response.json()["data"])


def answers(handle: Any) -> Any:
    """A probe for wait_for: the supervisor's state once it runs (the deployment reads `running` a moment
    before its workflow has started the supervisor)."""

    async def probe() -> Any:
        try:
            return await handle.query(SupervisorWorkflow.state)
        except RPCError:
            return None

    return probe


async def kill_instance(stack: Stack, sid: str) -> str:
    """SIGKILL the serving process and everything it started, as a crash would; returns its ref."""
    executor = ProcessExecutor(stack.settings.state_dir / "process")
    live = [i for i in await executor.instances(sid) if (await executor.status(i)).state == "running"]
    assert len(live) == 1, live
    root = psutil.Process(int(live[0].ref.split(":")[0]))
    for proc in [*root.children(recursive=True), root]:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    return live[0].ref


async def running_count(stack: Stack, sid: str) -> int:
    executor = ProcessExecutor(stack.settings.state_dir / "process")
    return len([i for i in await executor.instances(sid) if (await executor.status(i)).state == "running"])


async def test_a_killed_server_is_restarted_recorded_once_and_degraded_when_it_keeps_crashing(
    database_url: str, temporal_address: str, process_state_dir: Path
) -> None:
    settings = make_settings(
        database_url,
        temporal_address,
        process_state_dir,
        supervisor_interval_seconds=0.5,
        supervisor_failure_threshold=3,
        supervisor_window_seconds=600,
        supervisor_backoff_max_seconds=4,
    )
    async with running(settings) as stack:
        client, _ = await stack.user()
        async with client:
            server = await create_time_server(client)
            sid = server["id"]
            done = await deploy(client, sid)
            assert done["status"] == "running", done
            temporal = await stack.state.temporal()
            supervisor = temporal.get_workflow_handle_for(SupervisorWorkflow.run, f"supervise-{done['id']}")
            state = await wait_for(answers(supervisor), "the supervisor's first answer")
            assert state.restarts == 0

            async with EventStream(client, f"/api/servers/{sid}/metrics/stream") as live:
                killed = await kill_instance(stack, sid)
                # The supervisor's events arrive on the open stream as they are recorded.
                await live.until(lambda n, d: d["event"] == "unhealthy")
                await live.until(lambda n, d: d["event"] == "restart")
            restarts = await wait_for(lambda: events(client, sid, "restart"), "a restart event")
            assert (await current_time(stack, server))["timezone"] == "UTC"
            assert await running_count(stack, sid) == 1
            state = await supervisor.query(SupervisorWorkflow.state)
            assert state.restarts == 1 and state.instance_ref != killed
            # Once: one restart, and the failure that caused it.
            await wait_for(lambda: events(client, sid, "recovered"), "a recovered event")
            assert len(await events(client, sid, "restart")) == 1 and len(restarts) == 1
            assert restarts[0]["details"]["backoff_seconds"] == 1.0
            assert len(await events(client, sid, "unhealthy")) == 1
            assert (await client.get(f"/api/servers/{sid}")).json()["status"] == "running"

            # Two more crashes within the window: degraded, and the restarts say how long they waited.
            for n in (2, 3):
                await kill_instance(stack, sid)

                async def restarted(n: int = n) -> bool:
                    return len(await events(client, sid, "restart")) >= n

                await wait_for(restarted, f"restart {n}")
            degraded = await events(client, sid, "degraded")
            assert len(degraded) == 1 and degraded[0]["details"]["failures"] == 3
            assert (await client.get(f"/api/servers/{sid}")).json()["status"] == "degraded"
            assert all("backoff_seconds" in e["details"] for e in await events(client, sid, "restart"))
            assert (await current_time(stack, server))["timezone"] == "UTC"
            assert await running_count(stack, sid) == 1

            # Stopping the server ends its supervision; nothing is restarted after it.
            # The supervisor ends as soon as the route is off, which is before the stop has removed the
            # instance: the count is read once the stop itself has finished.
            stopping = await client.post(f"/api/servers/{sid}/stop")
            assert stopping.status_code == 202, stopping.text
            final = await asyncio.wait_for(supervisor.result(), timeout=60)
            assert final.status == "ended"
            await asyncio.wait_for(temporal.get_workflow_handle(stopping.json()["workflow_id"]).result(), timeout=60)
            assert await running_count(stack, sid) == 0


async def test_a_redeploy_hands_supervision_to_the_new_revision(
    database_url: str, temporal_address: str, process_state_dir: Path
) -> None:
    settings = make_settings(database_url, temporal_address, process_state_dir, supervisor_interval_seconds=0.5)
    async with running(settings) as stack:
        client, _ = await stack.user()
        async with client:
            server = await create_time_server(client)
            first = await deploy(client, server["id"])
            second = await deploy(client, server["id"])
            assert first["status"] == second["status"] == "running"
            temporal = await stack.state.temporal()
            old = await asyncio.wait_for(
                temporal.get_workflow_handle_for(SupervisorWorkflow.run, f"supervise-{first['id']}").result(), 60
            )
            assert old.status == "ended" and old.restarts == 0
            new = temporal.get_workflow_handle_for(SupervisorWorkflow.run, f"supervise-{second['id']}")
            assert (await wait_for(answers(new), "the new supervisor")).status in (
                "healthy",
                "degraded",
            )
            assert not await events(client, server["id"], "restart")
            assert (await client.post(f"/api/servers/{server['id']}/stop")).status_code == 202
            assert (await asyncio.wait_for(new.result(), 60)).status == "ended"


async def test_a_worker_killed_during_a_restart_leaves_exactly_one_instance(
    database_url: str, temporal_address: str, process_state_dir: Path, workdir: Path
) -> None:
    """SIGKILL the worker while the supervisor's restart has launched the new instance but not yet recorded
    it: the retried restart on the next worker adopts that instance instead of starting a second one."""
    settings = make_settings(
        database_url,
        temporal_address,
        process_state_dir,
        supervisor_interval_seconds=0.5,
        supervisor_backoff_max_seconds=1,
    )
    stack = Stack(settings, in_process_worker=False)
    await stack.start()
    worker = WorkerProcess(settings, workdir / f"worker-{uuid.uuid4().hex[:6]}.log")
    worker.start()
    executor = ProcessExecutor(settings.state_dir / "process")
    try:
        client, _ = await stack.user()
        async with client:
            server = await create_time_server(client)
            sid = server["id"]
            done = await deploy(client, sid)
            assert done["status"] == "running", done
            temporal = await stack.state.temporal()
            supervisor = temporal.get_workflow_handle_for(SupervisorWorkflow.run, f"supervise-{done['id']}")
            await wait_for(answers(supervisor), "the supervisor's first answer")

            killed = await kill_instance(stack, sid)
            deadline = time.monotonic() + 60
            while True:
                fresh = [
                    i
                    for i in await executor.instances(sid)
                    if i.ref != killed and (await executor.status(i)).state == "running"
                ]
                if fresh:
                    break
                assert time.monotonic() < deadline, "the supervisor never launched a new instance"
                await asyncio.sleep(0.02)
            worker.kill()
            assert not await events(client, sid, "restart"), "the restart was recorded before the kill"

            worker.start()
            restarts = await wait_for(lambda: events(client, sid, "restart"), "a restart event", timeout=180)
            assert len(restarts) == 1
            assert await running_count(stack, sid) == 1
            state = await supervisor.query(SupervisorWorkflow.state)
            assert state.restarts == 1 and state.instance_ref == fresh[0].ref
            assert (await current_time(stack, server))["timezone"] == "UTC"
            assert (await client.delete(f"/api/servers/{sid}")).status_code == 202
            await wait_for(lambda: _gone(client, sid), "the server's deletion")
    finally:
        worker.stop()
        await stack.stop()


async def _gone(client: httpx.AsyncClient, sid: str) -> bool:
    return (await client.get(f"/api/servers/{sid}")).status_code == 404
