"""Helpers every activity module uses: heartbeats while waiting, and typed Temporal errors."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

from temporalio import activity
from temporalio.exceptions import ApplicationError

from core.crypto import EnvCipher, SecretsKeyError
from core.failures import RuntimeFailure

T = TypeVar("T")

HEARTBEAT_EVERY = 1.0


async def heartbeating(work: Awaitable[T], detail: object = "") -> T:
    """Run `work`, heartbeating meanwhile so a dead worker is noticed within the heartbeat timeout."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=HEARTBEAT_EVERY)
            if done:
                return task.result()
            activity.heartbeat(detail)
    except BaseException:
        # Let the work clean up (kill its subprocess, finish its thread) before the caller removes
        # what the work was using, e.g. the build workspace.
        task.cancel()
        await asyncio.wait({task})
        raise


def as_application_error(exc: RuntimeFailure) -> ApplicationError:
    """Permanent runtime failures (bad input) must not be retried; the rest may be."""
    return ApplicationError(exc.message, type=exc.kind, non_retryable=exc.permanent)


def open_env(cipher: EnvCipher, stored: dict[str, Any] | None) -> dict[str, str]:
    """A deployment's config env in clear, for the runtime only; a key problem fails the deployment."""
    try:
        return cipher.open(stored)
    except SecretsKeyError as exc:
        raise ApplicationError(str(exc), type="secrets_key", non_retryable=True) from None
