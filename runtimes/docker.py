"""The docker runtime: image sources, and PyPI package sources built into images of their own
(`core.package_image`, built by the `PackageImages` the worker gives it), run as containers through the
Docker Engine API.

Works with Docker and with Podman's Docker-compatible service. Containers publish their MCP port
on loopback only; the gateway is the way in. Each container carries labels that tie it to its
server and deployment, and its name is derived from the deployment, so a repeated launch finds the
container it already made.

What a container is confined to: no capabilities and no privilege gain (setuid binaries stay inert),
the server's cores, memory (no swap beyond it) and process count, the server's own unprivileged uid
unless the image names a non-root user of its own, a network of its own server (not the engine's
shared bridge, so it cannot reach other servers' containers), and the server's `/data` directory as
the one host path it sees. Every container keeps the engine's default seccomp profile; a server whose
isolation is gVisor (`core.isolation`) runs on the engine's gVisor runtime as well, and is made only once
the engine has confirmed it will run there.

The pure parts (names, image users, memory kills) are in `runtimes.docker_spec`, the engine plumbing and
server networks in `runtimes.docker_engine`, images and package images in `runtimes.docker_images`; this
module holds the executor: a container's confinement, its launch, and its life after.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import docker
from docker.errors import ImageNotFound as DockerImageNotFound
from docker.errors import NotFound
from docker.types import DeviceRequest, Mount

from core.failures import ImageNotFound, PermanentFailure, RuntimeFailure
from core.tenancy import prepare_data_dir
from runtimes.base import (
    LABEL_DEPLOYMENT,
    LABEL_SERVER,
    LABEL_SLUG,
    Instance,
    InstanceStatus,
    LaunchSpec,
    PackageImages,
)
from runtimes.docker_engine import IsolationUnavailable
from runtimes.docker_images import DockerImages
from runtimes.docker_spec import (
    ContainerTarget,
    container_name,
    image_uid,
    is_missing_network,
    needs_passwd,
    oom_detail,
)


class DockerExecutor(DockerImages):
    name = "docker"

    def __init__(
        self,
        base_url: str | None = None,
        *,
        stop_timeout: int = 10,
        auth_for: Callable[[str, str], dict[str, str] | None] | None = None,
        package_images: PackageImages | None = None,
        bridge_max_sessions: int = 32,
        bridge_idle_seconds: float = 600.0,
        registry: str | None = None,
        gvisor_runtime: str = "runsc",
        gvisor_base_url: str | None = None,
    ) -> None:
        self.base_url = base_url
        self.gvisor_runtime = gvisor_runtime
        self.gvisor_base_url = gvisor_base_url
        self._gvisor_client: docker.DockerClient | None = None
        self._gvisor_known = False
        # REGISTRY: its namespace, like the engine's `mcphost/...`, holds the platform's builds.
        self.registry = registry
        self.stop_timeout = stop_timeout
        self.auth_for = auth_for
        self.package_images = package_images
        self.bridge_max_sessions = bridge_max_sessions
        self.bridge_idle_seconds = bridge_idle_seconds
        self._client: docker.DockerClient | None = None
        self._podman: bool | None = None
        self._package_locks: dict[str, asyncio.Lock] = {}
        # Console scripts of package images by image id: what an image holds never changes.
        self._entry_points: dict[str, list[str]] = {}

    async def prepare(self, spec: LaunchSpec) -> str:
        if spec.isolation != "gvisor":
            return await self._prepare(spec)
        # Before a pull or a build: a deployment that cannot be given gVisor fails at once.
        await self._check_gvisor_runtime()
        return f"{await self._prepare(spec)}; runs under gVisor (runtime {self.gvisor_runtime})"

    # ---- instances -------------------------------------------------------------------------------

    async def _run_options(self, spec: LaunchSpec, image_ref: str) -> tuple[dict[str, Any], dict[str, str]]:
        """The confinement of a new container (see the module docstring), and environment it needs."""
        options: dict[str, Any] = {
            "cap_drop": ["ALL"],
            # The bare form is the one both Docker and Podman accept. Nothing here names a seccomp profile, so
            # the engine's default one filters every container's system calls.
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
        if spec.isolation == "gvisor":
            options["runtime"] = self.gvisor_runtime
        if spec.uid is not None:
            image = await self._call(self._docker().images.get, image_ref)
            config = image.attrs.get("Config") or {}
            image_user = config.get("User")
            passwd = await self._call(self._image_passwd, image_ref) if needs_passwd(image_user) else None
            found = image_uid(image_user, passwd)
            if found is not None and found[0] != 0:
                # The image's own user, by number: a name is not looked up again where it could mean root.
                options["user"] = f"{found[0]}:{found[1]}"
            else:
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
        self._check_source(spec.source)
        client = self._docker()
        gvisor = spec.isolation == "gvisor"
        if gvisor:
            await self._check_gvisor_runtime()
            client = self._gvisor_docker()
        name = container_name(spec.deployment_id)
        try:
            container = await self._call(client.containers.get, name)
            if gvisor and await self._oci_runtime(container) != self.gvisor_runtime:
                # Made for this deployment before its server asked for gVisor: it is made again, under it.
                await self._call(container.remove, force=True)
                raise NotFound(f"container {name} was replaced")
            if container.status != "running":
                await self._call(container.start)
                await self._call(container.reload)
            return self._instance(container)
        except NotFound:
            pass
        target = await self._target(spec)
        try:
            options, extra_env = await self._run_options(spec, target.image)
        except (NotFound, DockerImageNotFound):
            raise ImageNotFound(f"image {target.image!r} is not available to the container engine") from None
        if target.command is not None:
            options["command"] = target.command
        env = extra_env | target.env | dict(spec.env) | {"PORT": str(target.port)}
        try:
            return await self._create_and_start(client, spec, name, target, options, env, gvisor)
        except Exception:
            # Whatever failed once the server's network was made, the network goes too unless a container of
            # the server (its serving revision) still uses it: a deleted server's would otherwise stay for good.
            await self._remove_network_if_unused(spec.server_id)
            raise

    async def _create_and_start(
        self,
        client: Any,
        spec: LaunchSpec,
        name: str,
        target: ContainerTarget,
        options: dict[str, Any],
        env: dict[str, str],
        gvisor: bool,
    ) -> Instance:
        for attempt in range(2):
            network = await self._ensure_network(spec.server_id)
            try:
                # Made, looked at, then started: a container meant for gVisor never starts anywhere else.
                container = await self._call(
                    client.containers.create,
                    target.image,
                    detach=True,
                    name=name,
                    environment=env,
                    labels={
                        LABEL_SERVER: spec.server_id,
                        LABEL_DEPLOYMENT: spec.deployment_id,
                        LABEL_SLUG: spec.slug,
                        "io.mcphost.port": str(target.port),
                        "io.mcphost.path": target.path,
                    },
                    network=network,
                    # The engine picks the host port and holds it from the start: choosing one here and
                    # handing it over would leave a moment in which something else can take it.
                    ports={f"{target.port}/tcp": ("127.0.0.1", None)},
                    **options,
                )
                break
            except (NotFound, DockerImageNotFound) as exc:
                if attempt == 0 and is_missing_network(str(exc)):
                    continue
                raise ImageNotFound(f"image {target.image!r} is not available to the container engine") from None
            except RuntimeFailure as exc:
                if "already in use" in exc.message:
                    # A concurrent attempt made it between our look and our create: use that one.
                    container = await self._call(client.containers.get, name)
                    break
                if attempt == 0 and is_missing_network(exc.message):
                    # The server's last container went meanwhile and took the network with it: make it again.
                    continue
                if spec.resources is not None and spec.resources.gpu and "device driver" in exc.message:
                    raise PermanentFailure(f"this host's container engine cannot give GPUs: {exc.message}") from None
                raise
        if gvisor:
            await self._confirm_gvisor(container)
        try:
            await self._call(container.start)
        except RuntimeFailure as exc:
            # The engine reports only that runsc exited; the usual reason is the network it was given.
            if not gvisor or not any(name in exc.message for name in (self.gvisor_runtime, "runsc")):
                raise
            await self._call(container.remove, force=True)
            raise IsolationUnavailable(
                f"gVisor could not start the server ({exc.message}). Under Podman, runsc must keep to the "
                "container's own network namespace: register it as a script that runs "
                '`exec /usr/bin/runsc --network=host "$@"`'
            ) from None
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

    async def server_ids(self) -> list[str]:
        containers = await self._call(self._docker().containers.list, all=True, filters={"label": LABEL_SERVER})
        return sorted({str(c.labels.get(LABEL_SERVER)) for c in containers if c.labels.get(LABEL_SERVER)})

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
        if self._gvisor_client is not None:
            await asyncio.to_thread(self._gvisor_client.close)
            self._gvisor_client = None
