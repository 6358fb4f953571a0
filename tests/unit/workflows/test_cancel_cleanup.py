"""A cancelled build step finishes its own cleanup before the caller removes the workspace it used."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from activities.common import heartbeating
from builds.images import _until_thread_ends


async def test_heartbeating_waits_for_the_cancelled_work_to_clean_up() -> None:
    cleaned = asyncio.Event()
    started = asyncio.Event()

    async def work() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0.2)  # e.g. killing a subprocess and waiting for it
            cleaned.set()

    outer = asyncio.ensure_future(heartbeating(work()))
    await started.wait()
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    assert cleaned.is_set(), "heartbeating returned before the cancelled work finished its cleanup"


async def test_a_cancelled_build_thread_is_stopped_and_waited_for() -> None:
    stop = threading.Event()
    running = threading.Event()
    ended = threading.Event()

    def build() -> str:
        running.set()
        while not stop.is_set():  # the engine's stream, checked between chunks
            time.sleep(0.01)
        time.sleep(0.1)
        ended.set()
        return "image"

    task = asyncio.ensure_future(_until_thread_ends(build, stop))
    await asyncio.to_thread(running.wait)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert stop.is_set() and ended.is_set(), "the build thread still ran when the cancelled call returned"


async def test_a_build_thread_that_ignores_stop_is_given_up_on_after_the_grace() -> None:
    stop = threading.Event()
    release = threading.Event()

    def stuck() -> None:
        release.wait(10)

    task = asyncio.ensure_future(_until_thread_ends(stuck, stop, grace=0.2))
    await asyncio.sleep(0.05)
    task.cancel()
    try:
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not release.is_set()
    finally:
        release.set()
