"""The history prune's schedule as the workers keep it: one for the installation, made from the settings,
created by whichever worker comes first and updated by the others."""

from __future__ import annotations

import logging
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from temporalio.client import (
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleOverlapPolicy,
    ScheduleState,
    ScheduleUpdate,
)
from temporalio.service import RPCError, RPCStatusCode

from core.settings import Settings
from worker.main import keep_prune_schedule, keep_schedule
from workflows.contracts.prune_history import PruneRun
from workflows.contracts.starters import PRUNE_SCHEDULE_ID, prune_schedule


def _settings(**values: Any) -> Settings:
    return Settings.model_validate({"jwt_secret": "j" * 40, "secrets_key": "s" * 40, **values})


class FakeSchedules:
    """The schedule calls of a Temporal client, on a dict."""

    def __init__(self, error: RPCError | None = None) -> None:
        self.schedules: dict[str, Schedule] = {}
        self.error = error

    async def create_schedule(self, schedule_id: str, schedule: Schedule) -> None:
        if self.error is not None:
            raise self.error
        if schedule_id in self.schedules:
            raise ScheduleAlreadyRunningError()
        self.schedules[schedule_id] = schedule

    def get_schedule_handle(self, schedule_id: str) -> FakeScheduleHandle:
        return FakeScheduleHandle(self, schedule_id)


class FakeScheduleHandle:
    def __init__(self, client: FakeSchedules, schedule_id: str) -> None:
        self.client, self.id = client, schedule_id

    async def update(self, updater: Any) -> None:
        current = SimpleNamespace(description=SimpleNamespace(schedule=self.client.schedules[self.id]))
        update: ScheduleUpdate = updater(current)
        self.client.schedules[self.id] = update.schedule

    async def delete(self) -> None:
        if self.id not in self.client.schedules:
            raise RPCError("schedule not found", RPCStatusCode.NOT_FOUND, b"")
        del self.client.schedules[self.id]


def test_the_prune_schedule_is_one_for_the_installation_made_from_the_settings() -> None:
    here = _settings(worker_host_id="a", server_log_retention_days=7, server_event_retention_days=60)
    there = here.model_copy(update={"worker_host_id": "b"})
    schedule = prune_schedule(here)
    # The history is global: every host's workers keep the same schedule.
    assert prune_schedule(there) == schedule
    action = schedule.action
    assert isinstance(action, ScheduleActionStartWorkflow)
    assert (action.workflow, action.id, action.task_queue) == (
        "PruneHistoryWorkflow",
        PRUNE_SCHEDULE_ID,
        here.temporal_task_queue,
    )
    assert action.args == [PruneRun(log_retention_days=7, event_retention_days=60)]
    assert schedule.spec.intervals[0].every == timedelta(hours=1)
    assert schedule.policy.overlap == ScheduleOverlapPolicy.SKIP
    every = prune_schedule(here.model_copy(update={"prune_history_interval_seconds": 600.0})).spec.intervals[0]
    assert every.every == timedelta(minutes=10)


async def test_a_worker_creates_the_schedule_or_updates_the_one_there() -> None:
    client, settings = FakeSchedules(), _settings()
    await keep_prune_schedule(client, settings)  # type: ignore[arg-type]
    assert client.schedules[PRUNE_SCHEDULE_ID] == prune_schedule(settings)
    # Another worker, or the next start, finds it made: updated to its settings, paused if an operator paused it.
    client.schedules[PRUNE_SCHEDULE_ID].state = ScheduleState(paused=True, note="maintenance")
    later = settings.model_copy(update={"server_log_retention_days": 3.0})
    await keep_prune_schedule(client, later)  # type: ignore[arg-type]
    kept = client.schedules[PRUNE_SCHEDULE_ID]
    assert kept.action == prune_schedule(later).action
    assert kept.state == ScheduleState(paused=True, note="maintenance")


async def test_interval_zero_removes_the_schedule_whether_or_not_it_is_there() -> None:
    client, settings = FakeSchedules(), _settings()
    await keep_prune_schedule(client, settings)  # type: ignore[arg-type]
    off = settings.model_copy(update={"prune_history_interval_seconds": 0.0})
    await keep_prune_schedule(client, off)  # type: ignore[arg-type]
    assert client.schedules == {}
    await keep_prune_schedule(client, off)  # type: ignore[arg-type]


async def test_a_schedule_temporal_refuses_is_logged_and_the_worker_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    client = FakeSchedules(RPCError("connection refused", RPCStatusCode.UNAVAILABLE, b""))
    with caplog.at_level(logging.WARNING, logger="mcphost.worker"):
        await keep_schedule(client, PRUNE_SCHEDULE_ID, prune_schedule(_settings()))  # type: ignore[arg-type]
    assert "the schedule prune-history could not be set: connection refused" in caplog.text
