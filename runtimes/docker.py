"""The docker runtime: image sources run as containers through the Docker Engine API.

Works with Docker and with Podman's Docker-compatible service. Containers publish their MCP port
on loopback only; the gateway is the way in. Each container carries labels that tie it to its
server and deployment, and its name is derived from the deployment, so a repeated launch finds the
container it already made.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import docker
from docker.errors import APIError, DockerException, NotFound
from docker.errors import ImageNotFound as DockerImageNotFound

from core.sources import ImageSource
from runtimes.base import (
    LABEL_DEPLOYMENT,
    LABEL_SERVER,
    LABEL_SLUG,
    ImageNotFound,
    Instance,
    InstanceStatus,
    LaunchSpec,
    PermanentFailure,
    RuntimeFailure,
)


def container_name(deployment_id: str) -> str:
    return f"mcphost-{deployment_id}"


def _is_missing_image(exc: APIError) -> bool:
    text = str(exc).lower()
    return exc.status_code == 404 or any(
        s in text
        for s in (
            "not found",
            "manifest unknown",
            "does not exist",
            "no such image",
            "repository name not known",
            "name unknown",
            "pull access denied",
            "requested access to the resource is denied",
        )
    )


class DockerExecutor:
    name = "docker"

    def __init__(
        self,
        base_url: str | None = None,
        *,
        stop_timeout: int = 10,
        auth_for: Callable[[str], dict[str, str] | None] | None = None,
    ) -> None:
        self.base_url = base_url
        self.stop_timeout = stop_timeout
        self.auth_for = auth_for
        self._client: docker.DockerClient | None = None

    def _docker(self) -> docker.DockerClient:
        if self._client is None:
            try:
                self._client = (
                    docker.DockerClient(base_url=self.base_url, timeout=120)
                    if self.base_url
                    else docker.from_env(timeout=120)
                )
            except DockerException as exc:
                raise RuntimeFailure(
                    f"cannot reach the Docker Engine API at {self.base_url or 'DOCKER_HOST'}: {exc}"
                ) from None
        return self._client

    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except (PermanentFailure, RuntimeFailure):
            raise
        except NotFound:
            raise
        except APIError as exc:
            if exc.status_code is not None and 400 <= exc.status_code < 500 and exc.status_code != 404:
                raise PermanentFailure(f"container engine rejected the request: {exc.explanation or exc}") from None
            raise RuntimeFailure(f"container engine error: {exc.explanation or exc}") from None
        except DockerException as exc:
            raise RuntimeFailure(f"container engine unreachable: {exc}") from None

    async def ping(self) -> bool:
        try:
            return bool(await self._call(self._docker().ping))
        except RuntimeFailure:
            return False

    async def prepare(self, spec: LaunchSpec) -> str:
        source = spec.source
        if not isinstance(source, ImageSource):
            raise PermanentFailure("the docker runtime runs image sources only")
        client = self._docker()
        try:
            image = await self._call(client.images.get, source.image)
            return f"image {source.image} present ({image.short_id})"
        except (NotFound, DockerImageNotFound):
            pass
        try:
            auth = self.auth_for(source.image) if self.auth_for else None
            image = await asyncio.to_thread(client.images.pull, source.image, auth_config=auth)
        except (NotFound, DockerImageNotFound):
            raise ImageNotFound(f"image {source.image!r} was not found in its registry") from None
        except APIError as exc:
            if _is_missing_image(exc):
                raise ImageNotFound(f"image {source.image!r} could not be pulled: {exc.explanation or exc}") from None
            raise RuntimeFailure(f"pulling {source.image} failed: {exc.explanation or exc}") from None
        except DockerException as exc:
            raise RuntimeFailure(f"container engine unreachable: {exc}") from None
        return f"pulled image {source.image} ({image.short_id})"

    async def launch(self, spec: LaunchSpec) -> Instance:
        source = spec.source
        if not isinstance(source, ImageSource):
            raise PermanentFailure("the docker runtime runs image sources only")
        client = self._docker()
        name = container_name(spec.deployment_id)
        try:
            container = await self._call(client.containers.get, name)
            if container.status != "running":
                await self._call(container.start)
                await self._call(container.reload)
            return self._instance(container)
        except NotFound:
            pass
        env = dict(spec.env) | {"PORT": str(source.port)}
        try:
            container = await self._call(
                client.containers.run,
                source.image,
                detach=True,
                name=name,
                environment=env,
                labels={
                    LABEL_SERVER: spec.server_id,
                    LABEL_DEPLOYMENT: spec.deployment_id,
                    LABEL_SLUG: spec.slug,
                    "io.mcphost.port": str(source.port),
                    "io.mcphost.path": source.path,
                },
                # The engine picks the host port and holds it from the start: choosing one here and
                # handing it over would leave a moment in which something else can take it.
                ports={f"{source.port}/tcp": ("127.0.0.1", None)},
            )
        except (NotFound, DockerImageNotFound):
            raise ImageNotFound(f"image {source.image!r} is not available to the container engine") from None
        except PermanentFailure as exc:
            if "already in use" in exc.message:
                # A concurrent attempt made it between our look and our create: use that one.
                container = await self._call(client.containers.get, name)
            else:
                raise
        await self._call(container.reload)
        return self._instance(container)

    @staticmethod
    def _instance(container: Any) -> Instance:
        labels = container.labels or {}
        port_key = f"{labels.get('io.mcphost.port', '8080')}/tcp"
        bindings = (container.attrs.get("NetworkSettings", {}).get("Ports") or {}).get(port_key) or []
        if not bindings:
            bindings = (container.attrs.get("HostConfig", {}).get("PortBindings") or {}).get(port_key) or []
        host_port = bindings[0]["HostPort"] if bindings else ""
        path = labels.get("io.mcphost.path", "/mcp")
        return Instance(
            runtime="docker",
            ref=container.id,
            deployment_id=labels.get(LABEL_DEPLOYMENT, ""),
            server_id=labels.get(LABEL_SERVER, ""),
            url=f"http://127.0.0.1:{host_port}{path}" if host_port else "",
        )

    async def instances(self, server_id: str) -> list[Instance]:
        containers = await self._call(
            self._docker().containers.list, all=True, filters={"label": f"{LABEL_SERVER}={server_id}"}
        )
        return [self._instance(c) for c in containers]

    async def _get(self, instance: Instance) -> Any | None:
        try:
            return await self._call(self._docker().containers.get, instance.ref)
        except NotFound:
            return None

    async def status(self, instance: Instance) -> InstanceStatus:
        container = await self._get(instance)
        if container is None:
            return InstanceStatus(state="missing")
        if container.status in ("running", "created", "restarting"):
            return InstanceStatus(state="running", detail=container.status)
        code = container.attrs.get("State", {}).get("ExitCode")
        return InstanceStatus(state="exited", exit_code=code, detail=container.status)

    async def stop(self, instance: Instance) -> None:
        container = await self._get(instance)
        if container is not None and container.status == "running":
            try:
                await self._call(container.stop, timeout=self.stop_timeout)
            except NotFound:
                pass

    async def remove(self, instance: Instance) -> None:
        container = await self._get(instance)
        if container is not None:
            try:
                await self._call(container.remove, force=True)
            except NotFound:
                pass

    async def logs(self, instance: Instance, tail: int = 200) -> list[str]:
        container = await self._get(instance)
        if container is None:
            return []
        raw = await self._call(container.logs, tail=tail)
        return raw.decode(errors="replace").splitlines()

    async def close(self) -> None:
        if self._client is not None:
            await asyncio.to_thread(self._client.close)
            self._client = None
