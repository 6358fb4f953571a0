"""The kubernetes runtime's stand-in while its cluster cannot be reached at worker start: revisions run on
the docker runtime instead (`runtimes.check_cluster` puts it in place).
"""

from __future__ import annotations

from typing import Any

from runtimes.base import Instance, InstanceStatus, LaunchSpec
from runtimes.kubernetes import KubernetesExecutor


class DockerFallback:
    """The kubernetes runtime while its cluster could not be reached at worker start: revisions launch on
    the docker runtime instead (their instances are docker's, so every later step goes there), and
    each launch records why as a policy note. Restart the worker once the cluster is back."""

    name = "kubernetes"

    def __init__(self, docker: Any, kubernetes: KubernetesExecutor, reason: str) -> None:
        self.docker = docker
        self.kubernetes = kubernetes
        self.reason = reason

    async def prepare(self, spec: LaunchSpec) -> str:
        return f"cluster unreachable, on docker instead: {await self.docker.prepare(spec)}"

    async def launch(self, spec: LaunchSpec) -> Instance:
        instance: Instance = await self.docker.launch(spec)
        return instance

    async def instances(self, server_id: str) -> list[Instance]:
        return []  # the docker runtime lists them

    async def server_ids(self) -> list[str]:
        return []

    async def status(self, instance: Instance) -> InstanceStatus:
        status: InstanceStatus = await self.docker.status(instance)
        return status

    async def stop(self, instance: Instance) -> None:
        await self.docker.stop(instance)

    async def remove(self, instance: Instance) -> None:
        await self.docker.remove(instance)

    async def logs(self, instance: Instance, tail: int = 200) -> list[str]:
        lines: list[str] = await self.docker.logs(instance, tail)
        return lines

    async def close(self) -> None:
        await self.kubernetes.close()
