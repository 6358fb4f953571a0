"""Two worker hosts, each with its own state directory: a process-runtime instance lives on the host
that launched it, and every later step on it (health, retire on redeploy, stop) runs there, also
while the other host is dead."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import create_async_engine
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from activities.records import RecordActivities, ServerRef
from activities.runtime import RetireInput, RuntimeActivities
from core.crypto import EnvCipher
from core.db import make_engine, make_sessionmaker
from core.models import Deployment
from records.deployments import write_instance
from runtimes.base import Executor
from runtimes.process import ProcessExecutor
from tests.integration.workflows.test_revision_races import RecordingExecutor, make_server, run
from tests.support.components import CACHE, server_ids, stop_process_instances
from tests.support.stack import Stack, WorkerProcess, deploy, make_settings

TIME = {"type": "package", "package": "mcp-server-time", "args": ["--local-timezone", "UTC"]}
# How long a step waits for a host's worker before counting the host gone (the API hands it to workflows).
HOST_WAIT = 15


@dataclass
class Host:
    host_id: str
    worker: WorkerProcess
    starts: int = 0

    @property
    def queue(self) -> str:
        return self.worker.settings.host_task_queue

    async def start(self) -> None:
        """Start the worker and wait until it polls its queues, so no step waits out its start."""
        self.worker.start()
        self.starts += 1
        deadline = time.monotonic() + 60
        while self.worker.log_path.read_text(errors="replace").count("worker ready") < self.starts:
            assert self.worker.proc is not None and self.worker.proc.poll() is None, "the worker exited"
            if time.monotonic() > deadline:
                raise AssertionError(f"worker {self.host_id} not ready: see {self.worker.log_path}")
            await asyncio.sleep(0.1)

    async def running(self, server_id: str) -> list[str]:
        """Deployments of the server whose process runs on this host, as this host's runtime sees them."""
        executor = ProcessExecutor(self.worker.settings.state_dir / "process")
        return [
            i.deployment_id
            for i in await executor.instances(server_id)
            if (await executor.status(i)).state == "running"
        ]


@dataclass
class Platform:
    stack: Stack
    temporal: Client
    hosts: dict[str, Host]

    def host_of(self, queue: str) -> Host:
        return next(host for host in self.hosts.values() if host.queue == queue)


@pytest.fixture
async def platform(
    temporal_env: WorkflowEnvironment, temporal_address: str, database_url: str, process_state_dir: Path, workdir: Path
) -> AsyncIterator[Platform]:
    """An API without a worker of its own, and two worker processes on hosts "a" and "b"."""
    settings = make_settings(database_url, temporal_address, process_state_dir, worker_host_wait_seconds=HOST_WAIT)
    stack = Stack(settings, in_process_worker=False)
    hosts: dict[str, Host] = {}
    try:
        await stack.start()
        for host_id in ("a", "b"):
            # Package environments are cached across runs, one per host like on real machines.
            state_dir = CACHE / "placement" / host_id
            state_dir.mkdir(parents=True, exist_ok=True)
            worker_settings = settings.model_copy(update={"worker_host_id": host_id, "state_dir": state_dir})
            worker = WorkerProcess(worker_settings, workdir / f"placement-{uuid.uuid4().hex[:6]}-{host_id}.log")
            hosts[host_id] = Host(host_id, worker)
        await asyncio.gather(*(host.start() for host in hosts.values()))
        yield Platform(stack, temporal_env.client, hosts)
    finally:
        try:
            for host in hosts.values():
                host.worker.stop()
            await stack.stop()
        finally:
            # Server processes outlive workers by design; those of this test's servers go with it.
            servers = await server_ids(database_url)
            for host in hosts.values():
                stop_process_instances(host.worker.settings.state_dir / "process", servers)


async def instance_record(database_url: str, deployment_id: str) -> dict[str, Any]:
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            record = await conn.scalar(select(Deployment.instance).where(Deployment.id == uuid.UUID(deployment_id)))
    finally:
        await engine.dispose()
    assert record, f"deployment {deployment_id} recorded no instance"
    return dict(record)


async def activity_runs(temporal: Client, workflow_id: str, activity: str) -> list[tuple[str, str | None]]:
    """(task queue it was sent to, identity of the worker that ran it, None if none did) of each call of
    `activity` in the workflow's latest run."""
    history = await temporal.get_workflow_handle(workflow_id).fetch_history()
    scheduled: dict[int, str] = {}
    started: dict[int, str] = {}
    for event in history.events:
        if event.HasField("activity_task_scheduled_event_attributes"):
            attrs = event.activity_task_scheduled_event_attributes
            if attrs.activity_type.name == activity:
                scheduled[event.event_id] = attrs.task_queue.name
        elif event.HasField("activity_task_started_event_attributes"):
            started_attrs = event.activity_task_started_event_attributes
            started[started_attrs.scheduled_event_id] = started_attrs.identity
    return [(queue, started.get(event_id)) for event_id, queue in sorted(scheduled.items())]


async def create_server(client: httpx.AsyncClient) -> str:
    response = await client.post("/api/servers", json={"name": f"place-{uuid.uuid4().hex[:6]}", "source": TIME})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def placed_deploy(platform: Platform, client: httpx.AsyncClient, server_id: str) -> tuple[dict[str, Any], Host]:
    """Deploy, and check that every runtime step of it ran on the host its instance record names."""
    detail = await deploy(client, server_id)
    assert detail["status"] == "running", (detail["error"], detail["steps"])
    host = platform.host_of((await instance_record(platform.stack.settings.database_url, detail["id"]))["host_queue"])
    for step in ("prepare_source", "launch_instance", "check_health"):
        runs = await activity_runs(platform.temporal, detail["workflow_id"], step)
        assert runs and all(queue == host.queue for queue, _ in runs), (step, runs)
        assert runs[-1][1] is not None and runs[-1][1].endswith(f"@{host.host_id}"), (step, runs)
    assert await host.running(server_id) == [detail["id"]]
    return detail, host


async def stop(platform: Platform, client: httpx.AsyncClient, server_id: str) -> dict[str, Any]:
    accepted = await client.post(f"/api/servers/{server_id}/stop")
    assert accepted.status_code == 202, accepted.text
    handle = platform.temporal.get_workflow_handle(accepted.json()["workflow_id"])
    outcome: dict[str, Any] = await asyncio.wait_for(handle.result(), timeout=HOST_WAIT + 120)
    return outcome


async def retired_on(platform: Platform, workflow_id: str) -> set[str]:
    """The hosts whose own worker ran a retirement sent to their queue in the workflow."""
    runs = await activity_runs(platform.temporal, workflow_id, "retire_instances")
    return {
        host.host_id
        for host in platform.hosts.values()
        for queue, who in runs
        if queue == host.queue and who is not None and who.endswith(f"@{host.host_id}")
    }


async def test_runtime_steps_reach_the_host_holding_the_instance(platform: Platform) -> None:
    a, b = platform.hosts["a"], platform.hosts["b"]
    client, _ = await platform.stack.user()
    async with client:
        servers = [await create_server(client) for _ in range(3)]
        # One after the other: at once, two hosts on one machine would install the same package side by side.
        where = {sid: (await placed_deploy(platform, client, sid))[1] for sid in servers}

        # Redeploy: the new revision goes wherever it is claimed; the old process is retired by its own host.
        # Deployments are spread by whichever worker claims them first: go on until both hosts hold a server.
        for attempt in range(12):
            sid = servers[attempt % len(servers)]
            old_host = where[sid]
            old = await old_host.running(sid)
            detail, where[sid] = await placed_deploy(platform, client, sid)
            assert old_host.host_id in await retired_on(platform, detail["workflow_id"])
            for host in (a, b):
                assert not set(old) & set(await host.running(sid)), f"revision {old} still runs on {host.host_id}"
            if attempt >= len(servers) - 1 and {a.host_id, b.host_id} <= {h.host_id for h in where.values()}:
                break
        else:
            pytest.fail(f"every deployment landed on one host: {where}")

        # Host "a" dies. The servers on "b" still redeploy and stop; nothing of them waits for "a".
        a.worker.kill()
        on_b = [sid for sid, host in where.items() if host is b]
        on_a = [sid for sid, host in where.items() if host is a]
        for sid in on_b:
            before = await b.running(sid)
            detail, where[sid] = await placed_deploy(platform, client, sid)
            assert where[sid] is b and detail["id"] not in before
            assert not set(before) & set(await b.running(sid))
            outcome = await stop(platform, client, sid)
            assert outcome["status"] == "stopped" and outcome["warnings"] == [], outcome
            assert await b.running(sid) == []

        # A server on the dead host is still taken off the gateway and stopped, after the bounded wait and with
        # a warning; its process is out of every other host's reach, so it still runs on "a".
        stranded = on_a[0]
        outcome = await stop(platform, client, stranded)
        assert outcome["status"] == "stopped" and len(outcome["warnings"]) == 1, outcome
        assert "host a" in outcome["warnings"][0]
        assert (await client.get(f"/api/servers/{stranded}")).json()["status"] == "stopped"
        logs = (await client.get(f"/api/servers/{stranded}/logs")).json()["data"]
        assert any(line["level"] == "warning" and "host a" in line["message"] for line in logs), logs
        assert len(await a.running(stranded)) == 1

        # Back up, host "a" stops its own servers, the stranded one included.
        await a.start()
        for sid in on_a:
            outcome = await stop(platform, client, sid)
            assert outcome["status"] == "stopped" and outcome["warnings"] == [], outcome
            assert await retired_on(platform, f"stop-{sid}") == {"a"}
            assert await a.running(sid) == []
        for sid in servers:
            for host in (a, b):
                assert await host.running(sid) == [], (sid, host.host_id)


async def test_a_host_is_asked_until_it_has_retired_what_it_holds(database_url: str) -> None:
    """The activities alone, on the real database: which hosts a retirement must reach, and how a host
    drops out of that list once it has retired the server's instances it held."""
    engine = make_engine(database_url, pool_size=2)
    sessions = make_sessionmaker(engine)
    try:
        server_id, (on_a, legacy, on_b) = await make_server(sessions, 3)
        records = RecordActivities(sessions)
        executors = {"a": RecordingExecutor(), "b": RecordingExecutor()}
        workers = {
            host_id: RuntimeActivities(
                sessions,
                {"process": cast(Executor, executor)},
                EnvCipher(["k" * 40]),
                make_settings(database_url, "127.0.0.1:1", CACHE, temporal_task_queue="q", worker_host_id=host_id),
            )
            for host_id, executor in executors.items()
        }
        async with sessions() as session, session.begin():
            await write_instance(session, replace(executors["a"].add(server_id, on_a), host_queue="q-host-a"))
            # Recorded before hosts had queues: it names none.
            await write_instance(session, executors["a"].add(server_id, legacy))
            await write_instance(session, replace(executors["b"].add(server_id, on_b), host_queue="q-host-b"))

        async def hosts() -> list[str]:
            return list((await run(records.instance_hosts, ServerRef(server_id))).host_queues)

        assert await hosts() == ["", "q-host-a", "q-host-b"]
        # Host a retires what it holds; it is not asked again, whatever happens to host a afterwards.
        retired = await run(workers["a"].retire_instances, RetireInput(server_id=server_id))
        assert retired.stopped_deployment_ids == sorted([on_a, legacy])
        assert await hosts() == ["", "q-host-b"]
        # The record without a queue counts only while its deployment may still serve.
        async with sessions() as session, session.begin():
            await session.execute(update(Deployment).where(Deployment.id == uuid.UUID(legacy)).values(status="stopped"))
        assert await hosts() == ["q-host-b"]
        # What a host keeps (the revision a deploy retires around) keeps the host on the list.
        retired = await run(workers["b"].retire_instances, RetireInput(server_id=server_id, keep_deployment_id=on_b))
        assert retired.stopped_deployment_ids == [] and set(executors["b"].live) == {on_b}
        assert await hosts() == ["q-host-b"]
    finally:
        await engine.dispose()
