"""Two revisions of one server finishing out of order, on the real database.

The activities are run directly (Temporal's ActivityEnvironment) so the interleaving is chosen by the
test rather than by timing. The executor records what it is asked to remove; the runtimes themselves
are covered by the deploy tests.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.testing import ActivityEnvironment

from activities.records import ActivateInput, InstanceRecord, RecordActivities
from activities.runtime import RetireInput, RuntimeActivities
from core.crypto import EnvCipher
from core.db import make_engine, make_sessionmaker
from core.models import Deployment, Server, User
from runtimes.base import Executor, Instance


class RecordingExecutor:
    """Holds instances in memory; remove() forgets them and remembers that it was asked."""

    def __init__(self) -> None:
        self.live: dict[str, Instance] = {}
        self.removed: list[str] = []

    def add(self, server_id: str, deployment_id: str) -> InstanceRecord:
        instance = Instance("process", f"ref-{deployment_id[:8]}", deployment_id, server_id, "http://127.0.0.1:1/mcp")
        self.live[deployment_id] = instance
        return InstanceRecord(**instance.to_dict())

    async def instances(self, server_id: str) -> list[Instance]:
        return [i for i in self.live.values() if i.server_id == server_id]

    async def remove(self, instance: Instance) -> None:
        self.live.pop(instance.deployment_id, None)
        self.removed.append(instance.deployment_id)

    async def stop(self, instance: Instance) -> None:
        await self.remove(instance)


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = make_engine(database_url, pool_size=2)
    yield make_sessionmaker(engine)
    await engine.dispose()


async def make_server(sessions: async_sessionmaker[AsyncSession], revisions: int) -> tuple[str, list[str]]:
    tag = uuid.uuid4().hex[:8]
    async with sessions() as session, session.begin():
        user = User(email=f"race-{tag}@example.com", password_hash="x", role="user", server_quota=5)
        session.add(user)
        await session.flush()
        server = Server(
            owner_id=user.id,
            name=f"race-{tag}",
            slug=f"race-{tag}",
            source={"type": "package", "package": "mcp-server-time"},
            env={},
            api_key_hash=tag,
            api_key_prefix=tag,
            webhook_secret=tag,
            status="deploying",
            deploy_seq=revisions,
        )
        session.add(server)
        await session.flush()
        deployments = [
            Deployment(
                server_id=server.id,
                seq=seq,
                idempotency_key=f"{tag}-{seq}",
                workflow_id=f"race-{tag}-{seq}",
                status="deploying",
                runtime="process",
                spec={"source": server.source, "env": {}},
            )
            for seq in range(1, revisions + 1)
        ]
        session.add_all(deployments)
        await session.flush()
        return str(server.id), [str(d.id) for d in deployments]


async def statuses(sessions: async_sessionmaker[AsyncSession], ids: list[str]) -> list[str]:
    async with sessions() as session:
        rows = {str(d.id): d.status for d in await session.scalars(select(Deployment))}
    return [rows[i] for i in ids]


async def run(activity: Any, *args: Any) -> Any:
    return await ActivityEnvironment().run(activity, *args)


async def test_slow_older_revision_never_retires_the_newer_one(sessions: async_sessionmaker[AsyncSession]) -> None:
    server_id, (older, newer) = await make_server(sessions, 2)
    executor = RecordingExecutor()
    records = RecordActivities(sessions)
    runtime = RuntimeActivities(sessions, {"process": cast(Executor, executor)}, EnvCipher(["k" * 40]))
    older_instance = executor.add(server_id, older)
    newer_instance = executor.add(server_id, newer)

    # The older revision switches the route, then the newer one overtakes it before it retires anything.
    assert (await run(records.activate, ActivateInput(older, older_instance))).activated
    assert (await run(records.activate, ActivateInput(newer, newer_instance))).activated
    assert not (await run(records.activate, ActivateInput(older, older_instance))).activated

    # The newer revision retires the older; the older one, finishing late, must keep the newer one alive.
    retired = await run(runtime.retire_instances, RetireInput(server_id=server_id, keep_deployment_id=older))
    assert retired.stopped_deployment_ids == []
    assert set(executor.live) == {older, newer}
    assert await run(records.complete_deployment, older) == "superseded"
    retired = await run(runtime.retire_instances, RetireInput(server_id=server_id, keep_deployment_id=newer))
    assert retired.stopped_deployment_ids == [older]
    assert set(executor.live) == {newer}
    assert await run(records.complete_deployment, newer) == "running"
    assert await statuses(sessions, [older, newer]) == ["superseded", "running"]
    # Completing again (a retried activity) changes nothing.
    assert await run(records.complete_deployment, newer) == "running"


async def test_deployment_turns_running_only_when_complete(sessions: async_sessionmaker[AsyncSession]) -> None:
    server_id, (first, second) = await make_server(sessions, 2)
    executor = RecordingExecutor()
    records = RecordActivities(sessions)
    for dep in (first, second):
        instance = executor.add(server_id, dep)
        assert (await run(records.activate, ActivateInput(dep, instance))).activated
        # Serving, but the record says "running" only after complete_deployment.
        assert (await statuses(sessions, [dep])) == ["deploying"]
        assert await run(records.complete_deployment, dep) == "running"
    assert await statuses(sessions, [first, second]) == ["stopped", "running"]


async def test_stop_during_the_last_steps_wins(sessions: async_sessionmaker[AsyncSession]) -> None:
    from activities.records import ServerRef

    server_id, (dep,) = await make_server(sessions, 1)
    executor = RecordingExecutor()
    records = RecordActivities(sessions)
    instance = executor.add(server_id, dep)
    assert (await run(records.activate, ActivateInput(dep, instance))).activated
    await run(records.deactivate_server, ServerRef(server_id=server_id))
    assert await run(records.complete_deployment, dep) == "stopped"
    async with sessions() as session:
        server = await session.get(Server, uuid.UUID(server_id))
        assert server is not None and server.active_deployment_id is None
