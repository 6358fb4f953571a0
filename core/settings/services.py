"""The services every platform process connects to: its PostgreSQL database (and whether a failed
migration stops boot), Temporal, and which worker host this process is."""

from __future__ import annotations

import socket

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings


class ServiceSettings(BaseSettings):
    """Database, Temporal and the worker's host."""

    database_url: str = Field(
        default="postgresql+asyncpg://postgres@127.0.0.1:5432/mcphost",
        description="SQLAlchemy URL of the platform database (asyncpg driver).",
    )
    temporal_address: str = "127.0.0.1:7233"
    temporal_namespace: str = "default"
    temporal_task_queue: str = "mcphost"
    worker_host_id: str = Field(
        default_factory=socket.gethostname,
        pattern=r"^[A-Za-z0-9._-]+$",
        max_length=100,
        description="Names the host a worker acts on (its processes, state directory, engine): the runtime steps "
        "of the instances started there come back through the task queue <TEMPORAL_TASK_QUEUE>-host-<this>.",
    )
    worker_host_wait_seconds: float = Field(
        default=120.0,
        gt=0,
        description="How long a runtime step waits for a worker of the host it must run on; past it, that host "
        "counts as gone (a deployment fails there, a stop goes on without it and says so).",
    )
    allow_migration_failure: bool = False
    worker_metrics_port: int | None = Field(
        default=None, ge=1, le=65535, description="Where a worker serves Prometheus /metrics; unset: not served."
    )

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, value: str) -> str:
        # Accept the plain libpq form users paste and pick the async driver for them.
        for prefix in ("postgresql://", "postgres://"):
            if value.startswith(prefix):
                return "postgresql+asyncpg://" + value[len(prefix) :]
        if not value.startswith("postgresql+asyncpg://"):
            raise ValueError("DATABASE_URL must be a PostgreSQL URL (postgresql://...)")
        return value

    @property
    def host_task_queue(self) -> str:
        """The task queue only this host's workers poll: where the runtime steps of its instances run."""
        return f"{self.temporal_task_queue}-host-{self.worker_host_id}"
