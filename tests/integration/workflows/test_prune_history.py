"""The history prune: one Temporal schedule for the installation, kept by the workers, whose runs delete
server log lines and telemetry events past their retention, a batch per transaction."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from temporalio.client import (
    ScheduleActionStartWorkflow,
    ScheduleHandle,
    ScheduleOverlapPolicy,
)
from temporalio.testing import ActivityEnvironment

from activities.prune_history import PruneActivities, PruneInput
from core.db import make_sessionmaker
from core.models import ServerLog, UsageMetric
from tests.support import schedules
from tests.support.stack import Stack, wait_for
from worker.main import keep_prune_schedule, run_worker
from workflows.contracts.prune_history import PruneHistoryWorkflowContract
from workflows.contracts.starters import PRUNE_SCHEDULE_ID

TIME = {"type": "package", "package": "mcp-server-time"}
History = type[ServerLog] | type[UsageMetric]


@pytest.fixture
async def database(stack: Stack) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(stack.settings.database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
async def prune_schedule(stack: Stack) -> AsyncIterator[ScheduleHandle]:
    """The installation's schedule, absent before the test and removed after it."""
    handle = (await stack.state.temporal()).get_schedule_handle(PRUNE_SCHEDULE_ID)
    await schedules.removed(handle)
    yield handle
    await schedules.removed(handle)


async def new_server(stack: Stack) -> uuid.UUID:
    client, _ = await stack.user()
    async with client:
        created = await client.post("/api/servers", json={"name": f"prune-{uuid.uuid4().hex[:6]}", "source": TIME})
        assert created.status_code == 201, created.text
        return uuid.UUID(created.json()["id"])


async def add_rows(
    engine: AsyncEngine, table: History, server_id: uuid.UUID, ages: dict[str, timedelta]
) -> dict[str, int]:
    """A row of the server's history for each name, created that long ago; returns their ids by name."""
    now = datetime.now(UTC)
    ids = {}
    async with engine.begin() as conn:
        for name, age in ages.items():
            values = {"server_id": server_id, "created_at": now - age}
            values |= {"message": name} if table is ServerLog else {"event": name, "details": {}}
            ids[name] = (await conn.execute(insert(table).values(**values).returning(table.id))).scalar_one()
    return ids


async def remaining(engine: AsyncEngine, table: History, ids: dict[str, int]) -> set[str]:
    """Which of these rows are still there (the platform logs lines of its own for the server too)."""
    names = {row_id: name for name, row_id in ids.items()}
    async with engine.connect() as conn:
        return {names[row_id] for row_id in (await conn.execute(select(table.id).where(table.id.in_(names)))).scalars()}


async def test_the_worker_keeps_the_prune_schedule_and_a_run_deletes_only_what_is_past_retention(
    stack: Stack, database: AsyncEngine, prune_schedule: ScheduleHandle
) -> None:
    server_id = await new_server(stack)
    day = timedelta(days=1)
    logs = await add_rows(database, ServerLog, server_id, {"old": 31 * day, "kept": 29 * day, "new": timedelta()})
    # A 31-day-old event is past the log retention but not the event retention: it stays.
    events = await add_rows(database, UsageMetric, server_id, {"old": 91 * day, "kept": 31 * day, "new": timedelta()})

    # A worker of its own, on a task queue of its own: only it can run what the schedule starts.
    settings = stack.settings.model_copy(
        update={
            "temporal_task_queue": f"prune-test-{uuid.uuid4().hex[:8]}",
            "prune_history_interval_seconds": 3600.0,
            "server_log_retention_days": 30.0,
            "server_event_retention_days": 90.0,
        }
    )
    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(settings, stop))
    try:
        described = await wait_for(lambda: schedules.described(prune_schedule), "the worker to create the schedule", 60)
        action = described.schedule.action
        assert isinstance(action, ScheduleActionStartWorkflow)
        assert (action.workflow, action.id, action.task_queue) == (
            "PruneHistoryWorkflow",
            PRUNE_SCHEDULE_ID,
            settings.temporal_task_queue,
        )
        assert described.schedule.spec.intervals[0].every == timedelta(hours=1)
        assert described.schedule.policy.overlap == ScheduleOverlapPolicy.SKIP

        workflow_id = await schedules.run_now(prune_schedule)
        temporal = await stack.state.temporal()
        outcome = await temporal.get_workflow_handle_for(PruneHistoryWorkflowContract.run, workflow_id).result()
        assert outcome.deleted["server_logs"] >= 1 and outcome.deleted["usage_metrics"] >= 1, outcome
        assert await remaining(database, ServerLog, logs) == {"kept", "new"}
        assert await remaining(database, UsageMetric, events) == {"kept", "new"}
    finally:
        stop.set()
        await worker


async def test_workers_starting_together_keep_one_schedule_and_an_operator_pause(
    stack: Stack, prune_schedule: ScheduleHandle, caplog: pytest.LogCaptureFixture
) -> None:
    temporal = await stack.state.temporal()
    settings = stack.settings.model_copy(update={"prune_history_interval_seconds": 600.0})
    # Several workers start at once: one creates the schedule, the others find it there and update it.
    with caplog.at_level(logging.WARNING, logger="mcphost.worker"):
        await asyncio.gather(*(keep_prune_schedule(temporal, settings) for _ in range(4)))
    assert not caplog.records, caplog.text
    assert (await prune_schedule.describe()).schedule.spec.intervals[0].every == timedelta(minutes=10)

    # The next start brings it up to date with the settings, and leaves it paused if an operator paused it.
    await prune_schedule.pause(note="maintenance")
    await keep_prune_schedule(temporal, settings.model_copy(update={"prune_history_interval_seconds": 7200.0}))
    described = await prune_schedule.describe()
    assert described.schedule.spec.intervals[0].every == timedelta(hours=2)
    assert described.schedule.state.paused and described.schedule.state.note == "maintenance"

    # Interval 0 turns it off.
    await keep_prune_schedule(temporal, settings.model_copy(update={"prune_history_interval_seconds": 0.0}))
    assert await schedules.described(prune_schedule) is None


async def test_the_activity_deletes_in_batches_and_counts_on_after_a_retry(stack: Stack, database: AsyncEngine) -> None:
    server_id = await new_server(stack)
    year = timedelta(days=365)
    ages = {f"old-{i}": year + timedelta(days=i + 1) for i in range(5)} | {"kept": timedelta()}
    logs = await add_rows(database, ServerLog, server_id, ages)
    events = await add_rows(database, UsageMetric, server_id, {"old-a": 2 * year, "old-b": 2 * year, "kept": year / 2})
    activities = PruneActivities(make_sessionmaker(database))
    cutoff = datetime.now(UTC) - year
    beats: list[dict[str, int]] = []
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *details: beats.append(details[0])
    report = await env.run(activities.prune_history, PruneInput(log_cutoff=cutoff, event_cutoff=cutoff, batch_size=2))

    assert report.deleted == {"server_logs": 5, "usage_metrics": 2}
    # One transaction per batch, each counted as it commits (between them, a slow batch heartbeats the count
    # so far while it runs).
    committed = [{"server_logs": 2}, {"server_logs": 4}, {"server_logs": 5}, {"server_logs": 5, "usage_metrics": 2}]
    rest = iter(beats)
    assert all(any(beat == count for beat in rest) for count in committed), beats
    assert await remaining(database, ServerLog, logs) == {"kept"}
    assert await remaining(database, UsageMetric, events) == {"kept"}

    # A retried attempt finds nothing left, and reports what the earlier attempt had deleted.
    retry = ActivityEnvironment()
    retry.info = dataclasses.replace(retry.info, heartbeat_details=[report.deleted], attempt=2)
    again = await retry.run(activities.prune_history, PruneInput(log_cutoff=cutoff, event_cutoff=cutoff, batch_size=2))
    assert again.deleted == report.deleted
