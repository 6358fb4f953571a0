"""The MCP health check: a server is healthy when the protocol handshake succeeds and it lists tools.

It speaks MCP with the official SDK client in `auto` mode, so servers of both spec eras pass:
a modern `server/discover` probe first, the `initialize` handshake when the server predates it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
from mcp import Client
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.records import InstanceRecord
from activities.runtime import from_record
from runtimes.base import Executor

MAX_CAPABILITIES_BYTES = 512 * 1024


@dataclass
class HealthInput:
    instance: InstanceRecord
    timeout_seconds: float = 90.0


@dataclass
class HealthResult:
    protocol_version: str
    server_name: str | None
    tools: list[dict[str, Any]] = field(default_factory=list)
    prompts: list[dict[str, Any]] = field(default_factory=list)
    resources: list[dict[str, Any]] = field(default_factory=list)
    attempts: int = 1
    elapsed_seconds: float = 0.0

    def capabilities(self) -> dict[str, Any]:
        return {
            "protocol_version": self.protocol_version,
            "server_name": self.server_name,
            "tools": self.tools,
            "prompts": self.prompts,
            "resources": self.resources,
        }


async def probe_mcp(url: str, *, timeout: float = 15.0) -> HealthResult:
    """One MCP conversation: handshake, then list tools (required), prompts and resources (optional)."""
    with anyio.fail_after(timeout):
        async with Client(url, mode="auto", cache=None) as client:
            tools = await client.list_tools()
            caps = client.server_capabilities
            prompts: list[dict[str, Any]] = []
            resources: list[dict[str, Any]] = []
            if caps.prompts is not None:
                prompts = [p.model_dump(mode="json", exclude_none=True) for p in (await client.list_prompts()).prompts]
            if caps.resources is not None:
                resources = [
                    r.model_dump(mode="json", exclude_none=True) for r in (await client.list_resources()).resources
                ]
            info = client.server_info
            return HealthResult(
                protocol_version=client.protocol_version,
                server_name=info.name if info else None,
                tools=[t.model_dump(mode="json", exclude_none=True) for t in tools.tools],
                prompts=prompts,
                resources=resources,
            )


def _trim(result: HealthResult) -> HealthResult:
    """Keep the result within Temporal's payload limits; huge schemas are cut, names stay."""
    if len(json.dumps(result.capabilities())) <= MAX_CAPABILITIES_BYTES:
        return result
    result.tools = [{"name": t.get("name"), "description": (t.get("description") or "")[:200]} for t in result.tools]
    result.prompts = [{"name": p.get("name")} for p in result.prompts]
    result.resources = [{"uri": r.get("uri"), "name": r.get("name")} for r in result.resources]
    return result


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in exc.exceptions)
    return f"{type(exc).__name__}: {exc}".strip()


class HealthActivities:
    def __init__(self, executors: Mapping[str, Executor]) -> None:
        self.executors = executors

    @activity.defn(name="check_health")
    async def check_health(self, data: HealthInput) -> HealthResult:
        instance = from_record(data.instance)
        executor = self.executors[instance.runtime]
        started = time.monotonic()
        deadline = started + data.timeout_seconds
        attempts = 0
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            attempts += 1
            status = await executor.status(instance)
            if status.state != "running":
                tail = "\n".join((await executor.logs(instance, tail=20))[-20:])
                raise ApplicationError(
                    f"the server process exited (code {status.exit_code}) before answering MCP. Last log lines:\n{tail}"
                    if tail
                    else f"the server exited (code {status.exit_code}) before answering MCP and logged nothing",
                    type="unhealthy",
                    non_retryable=True,
                )
            try:
                result = await probe_mcp(instance.url, timeout=min(15.0, max(1.0, deadline - time.monotonic())))
                result.attempts = attempts
                result.elapsed_seconds = round(time.monotonic() - started, 3)
                return _trim(result)
            except Exception as exc:  # any failure to speak MCP is "not healthy yet"
                last_error = _describe(exc)
            activity.heartbeat(f"attempt {attempts}: {last_error[:200]}")
            # Servers usually answer within a few seconds of starting: look often at first, then back off.
            await asyncio.sleep(0.1 if attempts <= 30 else min(0.25 * (attempts - 30), 1.0))
        tail = "\n".join((await executor.logs(instance, tail=10))[-10:])
        raise ApplicationError(
            f"no MCP answer from {instance.url} within {data.timeout_seconds:.0f}s ({last_error})"
            + (f". Last log lines:\n{tail}" if tail else ""),
            type="unhealthy",
            non_retryable=True,
        )

    def all(self) -> list[Any]:
        return [self.check_health]
