"""Prometheus metrics of a worker: activity executions by name and outcome, and their durations, served
at WORKER_METRICS_PORT (/metrics) when it is set."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import Counter, Histogram
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)

ACTIVITIES = Counter(
    "mcphost_worker_activities", "Activity executions, by activity and outcome", ["activity", "outcome"]
)
ACTIVITY_SECONDS = Histogram(
    "mcphost_worker_activity_duration_seconds",
    "Time one activity execution took",
    ["activity"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
)


class _Inbound(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        name = getattr(input.fn, "__temporal_activity_definition", None)
        activity = getattr(name, "name", None) or getattr(input.fn, "__name__", "unknown")
        started = time.perf_counter()
        try:
            result = await self.next.execute_activity(input)
        except BaseException:
            ACTIVITIES.labels(activity, "failed").inc()
            raise
        finally:
            ACTIVITY_SECONDS.labels(activity).observe(time.perf_counter() - started)
        ACTIVITIES.labels(activity, "completed").inc()
        return result


class MetricsInterceptor(Interceptor):
    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _Inbound(next)
