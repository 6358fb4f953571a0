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
"""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import docker
from docker.errors import APIError, DockerException, NotFound
from docker.errors import ImageNotFound as DockerImageNotFound
from docker.types import DeviceRequest, Mount

from core import package_image
from core.failures import ImageNotFound, PermanentFailure, RuntimeFailure
from core.sources import ImageSource, PackageSource
from core.tenancy import image_refusal, prepare_data_dir
from runtimes.base import (
    LABEL_DEPLOYMENT,
    LABEL_SERVER,
    LABEL_SLUG,
    Instance,
    InstanceStatus,
    LaunchSpec,
    PackageImages,
)

MIB = 1024 * 1024
# What a container killed with SIGKILL exits with.
SIGKILL_EXIT = 137


def container_name(deployment_id: str) -> str:
    return f"mcphost-{deployment_id}"


def network_name(server_id: str) -> str:
    """The engine network all of one server's containers share, and no other server's do."""
    return f"mcphost-srv-{uuid.UUID(server_id).hex}"


def image_uid(image_user: str | None, passwd: str | None = None) -> tuple[int, int] | None:
    """The uid and gid an image's configured `User` (name or uid, optionally `:group`) runs as: a number as
    the engine reads one (`00` is 0), a name through the image's own `/etc/passwd`. None when the name is
    not in it (the engine would fail to start it; the platform runs it as the server's uid instead)."""
    user, _, group = (image_user or "").partition(":")
    user, group = user.strip(), group.strip()
    if not user:
        return 0, 0
    entries: dict[str, tuple[int, int]] = {}
    for line in (passwd or "").splitlines():
        fields = line.split(":")
        if len(fields) >= 4 and fields[2].isdigit() and fields[3].isdigit():
            entries.setdefault(fields[0], (int(fields[2]), int(fields[3])))
    if user.isascii() and user.isdigit():
        uid = int(user)
        gid = next((g for u, g in entries.values() if u == uid), uid)
    elif user in entries:
        uid, gid = entries[user]
    elif user == "root":
        return 0, 0
    else:
        return None
    if group.isascii() and group.isdigit():
        gid = int(group)
    return uid, gid


def needs_passwd(image_user: str | None) -> bool:
    """Whether telling who an image's `User` is takes the image's own `/etc/passwd` (a name, not a number)."""
    user = (image_user or "").partition(":")[0].strip()
    return bool(user) and not (user.isascii() and user.isdigit())


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


@dataclass(frozen=True)
class _Target:
    """What a container of a server runs: an image, the port and path it serves MCP on, and (for a package
    image) the command and environment that start this server's entry point."""

    image: str
    port: int
    path: str
    command: list[str] | None = None
    env: dict[str, str] = field(default_factory=dict)
    description: str = ""


class IsolationUnavailable(PermanentFailure):
    """The engine cannot give the isolation a server must run under: the deployment fails rather than
    run it under less."""

    kind = "runtime_unavailable"


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

    def _gvisor_docker(self) -> docker.DockerClient:
        """Where gVisor containers are made: DOCKER_HOST's engine, or CONTAINER_GVISOR_DOCKER_HOST's service of it."""
        if self.gvisor_base_url is None:
            return self._docker()
        if self._gvisor_client is None:
            try:
                self._gvisor_client = docker.DockerClient(base_url=self.gvisor_base_url, timeout=120)
            except DockerException as exc:
                raise RuntimeFailure(
                    f"cannot reach CONTAINER_GVISOR_DOCKER_HOST ({self.gvisor_base_url}): {exc}"
                ) from None
        return self._gvisor_client

    async def _check_gvisor_runtime(self) -> None:
        if self._gvisor_known:
            return
        info = await self._call(self._gvisor_docker().info)
        known = sorted(info.get("Runtimes") or {})
        if self.gvisor_runtime not in known:
            raise IsolationUnavailable(
                f"the container engine has no runtime {self.gvisor_runtime!r} (it has: {', '.join(known) or 'none'}); "
                'register gVisor in containers.conf ([engine.runtimes] runsc = ["/usr/local/bin/runsc-netns"], a '
                'script running `exec /usr/bin/runsc --network=host "$@"`) or daemon.json ("runtimes": {"runsc": '
                '{"path": "/usr/bin/runsc"}}), or set CONTAINER_GVISOR_RUNTIME to the name it has there'
            )
        self._gvisor_known = True

    async def _oci_runtime(self, container: Any) -> str:
        """The OCI runtime a made container runs on, as the engine records it. Podman's Docker-compatible
        inspect says `oci` for every container; its own API names the runtime."""
        if not await self._is_podman():
            return str((container.attrs.get("HostConfig") or {}).get("Runtime") or "")
        api = self._docker().api
        response = await self._call(api.get, f"{api.base_url}/v4.0.0/libpod/containers/{container.id}/json", timeout=60)
        if response.status_code == 404:
            if self.gvisor_base_url is None:
                raise RuntimeFailure(f"container {container.id[:12]} went away while being inspected")
            raise IsolationUnavailable(
                "CONTAINER_GVISOR_DOCKER_HOST is not a service of DOCKER_HOST's engine (a container made through "
                "it is unknown to DOCKER_HOST): both must share the engine's storage"
            )
        if response.status_code >= 400:
            raise RuntimeFailure(f"inspecting the container failed: {response.text[:300]}")
        return str(response.json().get("OCIRuntime") or "")

    async def _confirm_gvisor(self, container: Any) -> None:
        """Refuse (and remove) a container made for gVisor that the engine would run on another runtime:
        Podman's API service ignores a per-container runtime and uses its own default."""
        found = await self._oci_runtime(container)
        if found == self.gvisor_runtime:
            return
        await self._call(container.remove, force=True)
        hint = (
            "Podman's API service runs every container on its own default runtime: start a second service of "
            f"the same engine with `podman --runtime {self.gvisor_runtime} system service` and point "
            "CONTAINER_GVISOR_DOCKER_HOST at it"
            if await self._is_podman()
            else f"check that the engine runs containers on the runtime {self.gvisor_runtime!r} it lists"
        )
        raise IsolationUnavailable(
            f"the container engine would run this server on runtime {found or 'unknown'!r}, not gVisor's "
            f"{self.gvisor_runtime!r}; it was not started. {hint}"
        )

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
        if spec.isolation != "gvisor":
            return await self._prepare(spec)
        # Before a pull or a build: a deployment that cannot be given gVisor fails at once.
        await self._check_gvisor_runtime()
        return f"{await self._prepare(spec)}; runs under gVisor (runtime {self.gvisor_runtime})"

    async def _prepare(self, spec: LaunchSpec) -> str:
        source = spec.source
        self._check_source(source)
        if isinstance(source, PackageSource):
            return (await self._target(spec)).description
        assert isinstance(source, ImageSource)
        self._refuse_foreign_name(spec, source.image)
        client = self._docker()
        try:
            image = await self._call(client.images.get, source.image)
            return f"image {source.image} present ({image.short_id})"
        except (NotFound, DockerImageNotFound):
            pass
        try:
            # The platform's registry credentials go only with pulls of this server's own images (or of the
            # build a promotion took from another of the owner's servers).
            auth = None
            if self.auth_for is not None:
                for owner in filter(None, (spec.server_id, spec.image_builder)):
                    auth = auth or self.auth_for(source.image, owner)
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

    def _refuse_foreign_name(self, spec: LaunchSpec, image_ref: str) -> None:
        refusal = image_refusal(image_ref, self.registry, spec.server_id, spec.image_builder)
        if refusal is not None:
            raise PermanentFailure(refusal)

    async def _refuse_foreign_image(self, spec: LaunchSpec, image_ref: str) -> None:
        """Checked again where the container is made, by name and by what the engine holds under it: the
        platform labels its builds with their server, so another server's build is refused under any
        name the engine resolves to it."""
        self._refuse_foreign_name(spec, image_ref)
        try:
            image = await self._call(self._docker().images.get, image_ref)
        except (NotFound, DockerImageNotFound):
            raise ImageNotFound(f"image {image_ref!r} is not available to the container engine") from None
        built_for = (image.labels or {}).get(LABEL_SERVER)
        if built_for and built_for not in (spec.server_id, spec.image_builder):
            raise PermanentFailure(
                f"image {image_ref!r} is the platform's build of another server; a server runs only its own build"
            )

    # ---- package images ---------------------------------------------------------------------------

    @staticmethod
    def _check_source(source: Any) -> None:
        if isinstance(source, PackageSource) and source.registry != "pypi":
            raise PermanentFailure(
                "npm packages run on the process runtime; the docker runtime runs PyPI packages and images"
            )
        if not isinstance(source, ImageSource | PackageSource):
            raise PermanentFailure("the docker runtime runs image and PyPI package sources only")

    async def _target(self, spec: LaunchSpec) -> _Target:
        source = spec.source
        self._check_source(source)
        if isinstance(source, ImageSource):
            await self._refuse_foreign_image(spec, source.image)
            return _Target(image=source.image, port=source.port, path=source.path)
        assert isinstance(source, PackageSource)
        tag, image_id, built = await self._package_image(source)
        scripts = await self._read_entry_points(image_id)
        script = package_image.choose_script(source, scripts)
        command, env = package_image.container_command(source, script)
        if source.transport == "stdio":
            env = env | {
                "MCPHOST_BRIDGE_MAX_SESSIONS": str(self.bridge_max_sessions),
                "MCPHOST_BRIDGE_IDLE_SECONDS": str(self.bridge_idle_seconds),
            }
        how = "built" if built else "present"
        return _Target(
            image=tag,
            port=package_image.CONTAINER_PORT,
            path=source.path,
            command=command,
            env=env,
            description=f"image {tag} {how} ({image_id.removeprefix('sha256:')[:12]}); runs {script}",
        )

    async def _package_image(self, source: PackageSource) -> tuple[str, str, bool]:
        """The package's image (tag, id), built unless an image of the same key is there already."""
        images = self.package_images
        if images is None:
            raise PermanentFailure("this process builds no package images: package sources are prepared by the worker")
        key, tag = images.name(source)
        found = await self._find_package_image(tag, key)
        if found is not None:
            return tag, found, False
        # Two deploys of one requirement on this worker build it once; other workers may build it too,
        # which costs time, not correctness (same key, same content).
        async with self._package_locks.setdefault(key, asyncio.Lock()):
            found = await self._find_package_image(tag, key)
            if found is not None:
                return tag, found, False
            return tag, await images.build(source, key, tag), True

    async def _find_package_image(self, tag: str, key: str) -> str | None:
        try:
            image = await self._call(self._docker().images.get, tag)
        except (NotFound, DockerImageNotFound):
            return None
        if (image.labels or {}).get(package_image.LABEL_PACKAGE_BUILD) != key:
            return None
        return str(image.id)

    async def _read_entry_points(self, image_id: str) -> list[str]:
        """The console scripts the image's build recorded, read from a container that is never started."""
        if image_id not in self._entry_points:
            try:
                self._entry_points[image_id] = await self._call(self._read_entry_points_file, image_id)
            except NotFound:
                raise RuntimeFailure(f"the package image {image_id[:19]} went away while being read") from None
        return self._entry_points[image_id]

    def _read_entry_points_file(self, image_id: str) -> list[str]:
        container = self._docker().containers.create(
            image_id, command=[package_image.BRIDGE_PYTHON], network_mode="none"
        )
        try:
            chunks, _ = container.get_archive(package_image.ENTRY_POINTS_FILE)
            with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as archive:
                member = archive.next()
                handle = archive.extractfile(member) if member is not None else None
                data = handle.read() if handle is not None else b""
        finally:
            container.remove(force=True)
        try:
            scripts = json.loads(data)
        except ValueError:
            scripts = None
        if not isinstance(scripts, list) or not all(isinstance(s, str) for s in scripts):
            raise RuntimeFailure(f"the package image {image_id[:19]} has no readable list of entry points")
        return scripts

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

    def _image_passwd(self, image_ref: str) -> str | None:
        """The image's `/etc/passwd`, read from a container that is created and never started."""
        container = self._docker().containers.create(image_ref, command=["/nonexistent"], entrypoint=[])
        try:
            chunks, _ = container.get_archive("/etc/passwd")
            with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as archive:
                member = archive.extractfile("passwd")
                return member.read(1 << 20).decode(errors="replace") if member is not None else None
        except NotFound:
            return None
        finally:
            container.remove(force=True)

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
                if attempt == 0 and _is_missing_network(str(exc)):
                    continue
                raise ImageNotFound(f"image {target.image!r} is not available to the container engine") from None
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
