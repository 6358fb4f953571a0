"""The MCP health check: a server is healthy when the protocol handshake succeeds and it lists tools.

It speaks MCP with the official SDK client in `auto` mode, so servers of both spec eras pass:
a modern `server/discover` probe first, the `initialize` handshake when the server predates it. The client
is the platform's own (activities.mcpclient): it follows no redirect and reads a bounded amount.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.common import heartbeating
from activities.mcpclient import RefusedAnswer, platform_mcp_client
from activities.records import InstanceRecord
from activities.runtime import from_record
from core.models import Deployment
from runtimes.base import Executor

MAX_CAPABILITIES_BYTES = 512 * 1024


@dataclass
class HealthInput:
    instance: InstanceRecord
    timeout_seconds: float = 90.0
    # Store what the server offers (tools, prompts, resources) on the deployment record and return only
    # counts: the lists can be large and do not belong in workflow history. False in runs from before.
    store: bool = False


@dataclass
class HealthResult:
    protocol_version: str
    server_name: str | None
    tools: list[dict[str, Any]] = field(default_factory=list)
    prompts: list[dict[str, Any]] = field(default_factory=list)
    resources: list[dict[str, Any]] = field(default_factory=list)
    attempts: int = 1
    elapsed_seconds: float = 0.0
    # Set when the lists were stored by the activity (and left out of this result).
    counts: dict[str, int] | None = None

    def count(self, kind: str) -> int:
        return self.counts[kind] if self.counts is not None else len(getattr(self, kind))

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
        async with platform_mcp_client(url) as client:
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
    def __init__(
        self, executors: Mapping[str, Executor], sessionmaker: async_sessionmaker[AsyncSession] | None = None
    ) -> None:
        self.executors = executors
        self.sessionmaker = sessionmaker

    async def _store(self, deployment_id: str, result: HealthResult) -> HealthResult:
        assert self.sessionmaker is not None, "storing capabilities needs the database"
        async with self.sessionmaker() as session, session.begin():
            deployment = await session.get(Deployment, uuid.UUID(deployment_id), with_for_update=True)
            if deployment is None:
                raise ApplicationError("deployment no longer exists", type="gone", non_retryable=True)
            deployment.capabilities = result.capabilities()
        counts = {k: len(getattr(result, k)) for k in ("tools", "prompts", "resources")}
        return HealthResult(
            protocol_version=result.protocol_version,
            server_name=result.server_name,
            attempts=result.attempts,
            elapsed_seconds=result.elapsed_seconds,
            counts=counts,
        )

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
                # One attempt waits up to 15 s, and is then given up and repeated: a container's published
                # port may take a connection before the server inside listens, and that one never gets
                # an answer. Where each attempt is a session whose server starts only for it (a bridged
                # stdio server), an attempt waits until the deadline instead: asking again would start
                # another server beside the one still starting, and on a loaded host they starve each
                # other. Heartbeat through the wait, so the heartbeat timeout tells a lost worker from a
                # server that takes its time.
                patience = deadline - time.monotonic()
                if not getattr(executor, "sessions_start_servers", False):
                    patience = min(15.0, patience)
                result = await heartbeating(
                    probe_mcp(instance.url, timeout=max(1.0, patience)),
                    f"attempt {attempts}: waiting for an MCP answer",
                )
                result.attempts = attempts
                result.elapsed_seconds = round(time.monotonic() - started, 3)
                mark_ready = getattr(executor, "mark_ready", None)
                if mark_ready is not None:
                    # The runtime's own notion of ready follows the MCP answer (a pod's readiness gate).
                    await mark_ready(instance)
                result = _trim(result)
                return await self._store(instance.deployment_id, result) if data.store else result
            except ApplicationError:
                raise
            except RefusedAnswer as exc:
                # The server's own doing, not its start-up: asking again gets the same answer.
                raise ApplicationError(str(exc), type="unhealthy", non_retryable=True) from None
            except Exception as exc:  # any other failure to speak MCP is "not healthy yet"
                last_error = _describe(exc)
            activity.heartbeat(f"attempt {attempts}: {last_error[:200]}")
            # Servers usually answer within a few seconds of starting: look often at first, then back off.
            await asyncio.sleep(0.05 if attempts <= 60 else min(0.25 * (attempts - 60), 1.0))
        tail = "\n".join((await executor.logs(instance, tail=10))[-10:])
        raise ApplicationError(
            f"no MCP answer from {instance.url} within {data.timeout_seconds:.0f}s ({last_error})"
            + (f". Last log lines:\n{tail}" if tail else ""),
            type="unhealthy",
            non_retryable=True,
        )

    def all(self) -> list[Any]:
        return [self.check_health]
