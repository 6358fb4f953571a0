"""The docker runtime: image sources run as containers through the Docker Engine API.

Works with Docker and with Podman's Docker-compatible service. Containers publish their MCP port
on loopback only; the gateway is the way in. Each container carries labels that tie it to its
server and deployment, and its name is derived from the deployment, so a repeated launch finds the
container it already made.

What a container is confined to: no capabilities and no privilege gain (setuid binaries stay inert),
the server's cores, memory (no swap beyond it) and process count, the server's own unprivileged uid
unless the image names a non-root user of its own, a network of its own server (not the engine's
shared bridge, so it cannot reach other servers' containers), and the server's `/data` directory as
the one host path it sees.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
from docker.errors import APIError, DockerException, NotFound
from docker.errors import ImageNotFound as DockerImageNotFound
from docker.types import DeviceRequest, Mount

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

MIB = 1024 * 1024
# What a container killed with SIGKILL exits with.
SIGKILL_EXIT = 137


def container_name(deployment_id: str) -> str:
    return f"mcphost-{deployment_id}"


def network_name(server_id: str) -> str:
    """The engine network all of one server's containers share, and no other server's do."""
    return f"mcphost-srv-{uuid.UUID(server_id).hex}"


def runs_as_root(image_user: str | None) -> bool:
    """Whether an image's configured `User` (name or uid, optionally `:group`) means root."""
    user = (image_user or "").split(":", 1)[0].strip()
    return user in ("", "root", "0")


def oom_detail(attrs: dict[str, Any], *, guess: bool = False) -> str | None:
    """Why an exited container ended, when its memory limit is the reason.

    `guess` also reads a SIGKILL under a memory limit as the limit's doing: some engines (podman on
    cgroup v1) never set OOMKilled, and the platform itself only kills after a stop it asked for."""
    state = attrs.get("State") or {}
    limit = int((attrs.get("HostConfig") or {}).get("Memory") or 0)
    where = f" (limit {limit // MIB} MiB)" if limit else ""
    if state.get("OOMKilled"):
        return f"out of memory{where}"
    if guess and limit and state.get("ExitCode") == SIGKILL_EXIT:
        return f"killed (SIGKILL), likely out of memory{where}"
    return None


def prepare_data_dir(path: Path, uid: int | None) -> None:
    """The server's `/data` on the host: only its uid (and the platform) may use it."""
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if uid is not None and os.geteuid() == 0:
            os.fchown(fd, uid, uid)
        os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


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


def _is_missing_network(text: str) -> bool:
    # Docker answers 404, Podman 500; both name the network and say it was not found.
    text = text.lower()
    return "network" in text and ("not found" in text or "no such network" in text)


class DockerExecutor:
    name = "docker"

    def __init__(
        self,
        base_url: str | None = None,
        *,
        stop_timeout: int = 10,
        auth_for: Callable[[str, str], dict[str, str] | None] | None = None,
    ) -> None:
        self.base_url = base_url
        self.stop_timeout = stop_timeout
        self.auth_for = auth_for
        self._client: docker.DockerClient | None = None
        self._podman: bool | None = None

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

    async def _is_podman(self) -> bool:
        if self._podman is None:
            version = await self._call(self._docker().version)
            components = version.get("Components") or []
            self._podman = any("podman" in str(c.get("Name", "")).lower() for c in components)
        return self._podman

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
            # The platform's registry credentials go only with pulls of this server's own images.
            auth = self.auth_for(source.image, spec.server_id) if self.auth_for else None
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

    # ---- the server's network --------------------------------------------------------------------

    async def _ensure_network(self, server_id: str) -> str:
        """The server's network, made on first use; concurrent launches may both try, one wins."""
        client = self._docker()
        name = network_name(server_id)
        try:
            await self._call(client.networks.get, name)
            return name
        except NotFound:
            pass
        labels = {LABEL_SERVER: server_id}
        try:
            if await self._is_podman():
                await self._call(self._create_podman_network, name, labels)
            else:
                await self._call(client.networks.create, name, driver="bridge", labels=labels, check_duplicate=True)
        except RuntimeFailure as exc:
            # Podman answers a duplicate with 409 or 500 depending on the endpoint; both say so.
            if "already" not in exc.message.lower():
                raise
        return name

    def _create_podman_network(self, name: str, labels: dict[str, str]) -> None:
        # Podman's bridges route to each other unless isolated, and its Docker-compatible endpoint drops
        # network options, so this goes through its own API. Docker isolates user-defined bridges from
        # each other by default.
        api = self._docker().api
        response = api.post(
            f"{api.base_url}/v4.0.0/libpod/networks/create",
            json={"name": name, "driver": "bridge", "labels": labels, "options": {"isolate": "true"}},
            timeout=60,
        )
        if response.status_code >= 400:
            raise APIError("creating the network failed", response=response, explanation=response.text)

    async def _remove_network_if_unused(self, server_id: str) -> None:
        """Best effort: a network left behind costs a bridge, not safety, and the next launch reuses it."""
        client = self._docker()
        try:
            remaining = await self._call(
                client.containers.list, all=True, filters={"label": f"{LABEL_SERVER}={server_id}"}
            )
            if remaining:
                return
            network = await self._call(client.networks.get, network_name(server_id))
            await self._call(network.remove)
        except (NotFound, RuntimeFailure, ValueError):
            pass

    # ---- instances -------------------------------------------------------------------------------

    async def _run_options(self, spec: LaunchSpec, image_ref: str) -> tuple[dict[str, Any], dict[str, str]]:
        """The confinement of a new container (see the module docstring), and environment it needs."""
        options: dict[str, Any] = {
            "cap_drop": ["ALL"],
            # The bare form is the one both Docker and Podman accept.
            "security_opt": ["no-new-privileges"],
            # Many images write to /tmp; a tmpfs keeps that off the image layer and counts it as memory.
            "tmpfs": {"/tmp": "rw,nosuid,nodev,mode=1777"},
        }
        env: dict[str, str] = {}
        resources = spec.resources
        if resources is not None:
            memory = f"{resources.memory_mib}m"
            options |= {
                "nano_cpus": int(resources.cpu * 1e9),
                "mem_limit": memory,
                # Equal to the memory limit: no swap on top of it.
                "memswap_limit": memory,
                "pids_limit": resources.pids,
            }
            if resources.gpu:
                options["device_requests"] = [DeviceRequest(count=-1, capabilities=[["gpu"]])]
        if spec.uid is not None:
            image = await self._call(self._docker().images.get, image_ref)
            config = image.attrs.get("Config") or {}
            if runs_as_root(config.get("User")):
                options["user"] = f"{spec.uid}:{spec.uid}"
                image_env = {item.split("=", 1)[0] for item in config.get("Env") or []}
                if "HOME" not in image_env:
                    # The engine would give an unknown uid `/` as home, which it cannot write.
                    env["HOME"] = "/tmp"
            # An image that names a non-root user of its own keeps it, as its own files belong to that
            # user; /data, which belongs to the server's uid, is then not writable for it.
        if spec.data_dir is not None:
            await asyncio.to_thread(prepare_data_dir, spec.data_dir, spec.uid)
            options["mounts"] = [Mount(target="/data", source=str(spec.data_dir), type="bind", read_only=False)]
        return options, env

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
        try:
            options, extra_env = await self._run_options(spec, source.image)
        except (NotFound, DockerImageNotFound):
            raise ImageNotFound(f"image {source.image!r} is not available to the container engine") from None
        env = extra_env | dict(spec.env) | {"PORT": str(source.port)}
        for attempt in range(2):
            network = await self._ensure_network(spec.server_id)
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
                    network=network,
                    # The engine picks the host port and holds it from the start: choosing one here and
                    # handing it over would leave a moment in which something else can take it.
                    ports={f"{source.port}/tcp": ("127.0.0.1", None)},
                    **options,
                )
                break
            except (NotFound, DockerImageNotFound) as exc:
                if attempt == 0 and _is_missing_network(str(exc)):
                    continue
                raise ImageNotFound(f"image {source.image!r} is not available to the container engine") from None
            except RuntimeFailure as exc:
                if "already in use" in exc.message:
                    # A concurrent attempt made it between our look and our create: use that one.
                    container = await self._call(client.containers.get, name)
                    break
                if attempt == 0 and _is_missing_network(exc.message):
                    # The server's last container went meanwhile and took the network with it: make it again.
                    continue
                if spec.resources is not None and spec.resources.gpu and "device driver" in exc.message:
                    raise PermanentFailure(f"this host's container engine cannot give GPUs: {exc.message}") from None
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
        except RuntimeFailure as exc:
            # Podman answers 500 for a container removed while it is being looked at.
            if "no such container" in exc.message.lower():
                return None
            raise

    async def _ended_by_memory(self, container: Any) -> str | None:
        if container.status in ("running", "created", "restarting"):
            return None
        return oom_detail(container.attrs, guess=await self._is_podman())

    async def status(self, instance: Instance) -> InstanceStatus:
        container = await self._get(instance)
        if container is None:
            return InstanceStatus(state="missing")
        if container.status in ("running", "created", "restarting"):
            return InstanceStatus(state="running", detail=container.status)
        code = container.attrs.get("State", {}).get("ExitCode")
        detail = await self._ended_by_memory(container)
        return InstanceStatus(state="exited", exit_code=code, detail=detail or container.status)

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
        if instance.server_id:
            await self._remove_network_if_unused(instance.server_id)

    async def logs(self, instance: Instance, tail: int = 200) -> list[str]:
        container = await self._get(instance)
        if container is None:
            return []
        raw = await self._call(container.logs, tail=tail)
        lines = raw.decode(errors="replace").splitlines()
        detail = await self._ended_by_memory(container)
        if detail:
            lines.append(f"mcphost: the server was killed: {detail}")
        return lines

    async def close(self) -> None:
        if self._client is not None:
            await asyncio.to_thread(self._client.close)
            self._client = None
