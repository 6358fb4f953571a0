"""Live log streams share one read of a server's output, however many follow it."""

from __future__ import annotations

import asyncio
import uuid
from types import SimpleNamespace
from typing import Any

from api.deps import AppState


def _state(reads: list[str]) -> AppState:
    state = AppState(settings=None, engine=None, sessionmaker=None, gateway=None)  # type: ignore[arg-type]

    async def tail(deployment: Any, n: int) -> list[str]:
        reads.append(str(deployment.id))
        await asyncio.sleep(0.01)
        return [f"line {len(reads)}"]

    state.runtime_log_tail = tail  # type: ignore[method-assign,assignment]
    return state


async def test_followers_of_one_server_share_a_read() -> None:
    reads: list[str] = []
    state = _state(reads)
    deployment = SimpleNamespace(id=uuid.uuid4())
    results = await asyncio.gather(*(state.shared_log_tail(deployment, 200) for _ in range(50)))  # type: ignore[arg-type]
    assert len(reads) == 1 and all(r == ["line 1"] for r in results)
    # Another server is read on its own; a read older than `fresh_for` is made again.
    other = SimpleNamespace(id=uuid.uuid4())
    await state.shared_log_tail(other, 200)  # type: ignore[arg-type]
    assert len(reads) == 2
    assert await state.shared_log_tail(deployment, 200, fresh_for=0.0) == ["line 3"]  # type: ignore[arg-type]


async def test_a_follower_that_goes_away_does_not_cancel_the_others_read() -> None:
    reads: list[str] = []
    state = _state(reads)
    deployment = SimpleNamespace(id=uuid.uuid4())
    first = asyncio.ensure_future(state.shared_log_tail(deployment, 200))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    second = asyncio.ensure_future(state.shared_log_tail(deployment, 200))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    first.cancel()
    assert await second == ["line 1"] and len(reads) == 1
