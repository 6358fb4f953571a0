"""The build and registry telemetry schema: one usage-metric event per stage.

Every event is stored in `usage_metrics` (event name + JSONB details) and written as one JSON log
line on the `mcphost.telemetry` logger. The details always carry `deployment_id`; the other keys
are present when they apply to the stage (see `BuildEvent`).
"""

from __future__ import annotations

import json
import logging
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

EventName = Literal[
    "build_started",
    "build_succeeded",
    "build_failed",
    "build_reused",
    "tag_started",
    "tag_succeeded",
    "push_started",
    "push_retry",
    "push_failed",
    "push_succeeded",
    "auth_refresh_started",
    "auth_refresh_succeeded",
    "auth_refresh_failed",
    "auth_health_reported",
    "auth_rotation_started",
    "auth_rotation_succeeded",
    "auth_rotation_failed",
    "auth_rotation_skipped",
    "manifest_published",
    "manifest_prune_started",
    "manifest_prune_succeeded",
    "manifest_prune_failed",
    # The supervisor of a serving revision (SupervisorWorkflow).
    "unhealthy",
    "restart",
    "recovered",
    "degraded",
]
EVENT_NAMES: tuple[str, ...] = EventName.__args__  # type: ignore[attr-defined]

logger = logging.getLogger("mcphost.telemetry")


class BuildEvent(BaseModel):
    """Details of one event. Unset keys are left out of the stored JSON."""

    model_config = ConfigDict(extra="forbid")

    deployment_id: str
    attempt: int | None = None
    retry_limit: int | None = None
    registry_endpoint: str | None = None
    repository: str | None = None
    tag: str | None = None
    platform: str | None = None
    reason: str | None = None  # e.g. "auth_refresh" on the extra attempt after a credential refresh
    error_kind: str | None = None  # connection_reset | timeout | connect_error | server_error | unauthorized | ...
    error: str | None = None
    auth_expired: bool | None = None
    auth_age_seconds: float | None = None
    verdict: str | None = None  # fresh | rotate_soon | expired | missing
    digest: str | None = None  # a platform manifest, or the index for manifest_published
    digests: dict[str, str] | None = None  # platform -> manifest digest
    pruned: list[str] | None = None
    duration_ms: int | None = None
    image_id: str | None = None
    revision: str | None = None
    backoff_seconds: float | None = None  # supervisor: the wait before this restart
    failures: int | None = None  # supervisor: failures within its window
    event_key: str | None = None  # supervisor: makes a retried record a no-op

    def stored(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


def log_event(server_id: str, event: str, details: dict[str, Any]) -> None:
    logger.info(json.dumps({"event": event, "server_id": server_id, **details}, sort_keys=True, default=str))
