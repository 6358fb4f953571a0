"""Building images through the Docker Engine API (Docker or Podman), one platform at a time."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import platform as host_platform
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import docker
import docker.errors
import docker.utils
from docker.api.build import process_dockerfile

from builds.network import UNREACHABLE, BuildNetwork, BuildNetworkError, engine_params, host_problem
from builds.registry import RegistryAuthError, RegistryError, RegistryRejected
from core.failures import PermanentFailure, RuntimeFailure

ARCH_ALIASES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x"}
QEMU_NAMES = {
    "amd64": "x86_64",
    "arm64": "aarch64",
    "arm": "arm",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "386": "i386",
    "riscv64": "riscv64",
}
BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
LABEL_BUILD_KEY = "io.mcphost.build"
# What a build's output says when a RUN step could not connect somewhere (curl, wget, pip, npm, Python).
_CONNECT_FAILED = re.compile(
    r"connection refused|no route to host|network is unreachable|errno 11[13]|errno 101|econnrefused|"
    r"ehostunreach|enetunreach|failed to connect|could not connect|couldn't connect",
    re.IGNORECASE,
)


class BuildFailed(PermanentFailure):
    kind = "build_failed"


class PlatformUnsupported(PermanentFailure):
    kind = "platform_unsupported"


class EngineUnavailable(RuntimeFailure):
    kind = "engine_unavailable"


class BuildNetworkFailed(RuntimeFailure):
    kind = "build_network_failed"


T = TypeVar("T")


async def _until_thread_ends(run: Callable[[], T], stop: threading.Event, grace: float = 30.0) -> T:
    """`run` in a thread; cancelled, ask it to stop and give it `grace` seconds to end, so whoever
    owns its files (the build context) removes them only once nothing reads or writes them."""
    future = asyncio.ensure_future(asyncio.to_thread(run))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        stop.set()
        await asyncio.wait({future}, timeout=grace)
        if future.done() and not future.cancelled():
            future.exception()  # retrieved: the attempt was cancelled, its outcome no longer matters
        raise


def host_arch() -> str:
    machine = host_platform.machine()
    return ARCH_ALIASES.get(machine, machine)


def emulation_missing(platform: str, binfmt_dir: Path = BINFMT_DIR) -> str | None:
    """Why this host cannot build `platform` (os/arch[/variant]), or None when it can."""
    os_name, arch = platform.split("/")[:2]
    if os_name != "linux":
        return f"cannot build {platform}: only linux images are built"
    native = host_arch()
    if arch == native or (native == "amd64" and arch == "386"):
        return None
    qemu = QEMU_NAMES.get(arch, arch)
    handler = binfmt_dir / f"qemu-{qemu}"
    try:
        enabled = handler.read_text().splitlines()[0].strip() == "enabled"
    except (OSError, IndexError):
        enabled = False
    if enabled:
        return None
    return (
        f"cannot build {platform} on this linux/{native} host: no QEMU user-mode emulation is registered for "
        f"{qemu} (binfmt_misc handler qemu-{qemu} is missing). Install qemu-user-static and binfmt-support "
        f"on the worker host, or remove {platform} from REGISTRY_ARCH_TARGETS."
    )


def unreachable_hint(output: list[str], attempts: list[str]) -> str:
    """What to add to a failed isolated build's message: the destinations the build network refused, or,
    when the output shows a connection failing, how far builds reach; nothing for other failures."""
    if attempts:
        return f" (the build tried to reach {', '.join(attempts[:10])}; {UNREACHABLE})"
    if any(_CONNECT_FAILED.search(line) for line in output):
        return f" (a connection failed; {UNREACHABLE})"
    return ""


def classify_push_error(message: str) -> RegistryError | RegistryRejected:
    """The engine reports push failures as text (after its own short retries): sort them the way the
    registry client sorts HTTP failures, so retries and credential refreshes work the same."""
    text = message.lower()
    if any(s in text for s in ("unauthorized", "authentication required", "401", "invalid username/password")):
        return RegistryAuthError(message, "unauthorized", 401)
    if "denied" in text or "403" in text:
        return RegistryAuthError(message, "denied", 403)
    if "429" in text or "toomanyrequests" in text:
        return RegistryError(message, "rate_limited", 429)
    if "connection refused" in text or "no such host" in text:
        return RegistryError(message, "connect_error")
    if any(s in text for s in ("connection reset", "broken pipe", "eof", "connection closed")):
        return RegistryError(message, "connection_reset")
    if any(s in text for s in ("timeout", "timed out", "deadline exceeded")):
        return RegistryError(message, "timeout")
    if re.search(r"\b5\d\d\b", text) or "internal server error" in text or "service unavailable" in text:
        return RegistryError(message, "server_error")
    return RegistryRejected(message, "rejected")


class ImageBuilder:
    def __init__(self, docker_host: str | None = None) -> None:
        self.docker_host = docker_host
        self._client: docker.DockerClient | None = None
        self._lock = threading.Lock()

    @property
    def client(self) -> docker.DockerClient:
        with self._lock:
            if self._client is None:
                try:
                    self._client = (
                        docker.DockerClient(base_url=self.docker_host, timeout=600)
                        if self.docker_host
                        else docker.from_env(timeout=600)
                    )
                except docker.errors.DockerException as exc:
                    raise EngineUnavailable(f"no container engine reachable for builds: {exc}") from None
            return self._client

    async def find(self, tag: str, build_key: str, platform: str) -> str | None:
        """The image already built under `tag` for this build key and platform (a retried build
        activity reuses it). Looked up by tag, then checked by label: listing by label is slow."""

        def lookup() -> str | None:
            try:
                image = self.client.images.get(tag)
            except docker.errors.ImageNotFound:
                return None
            return str(image.id) if image.labels.get(LABEL_BUILD_KEY) == f"{build_key}:{platform}" else None

        return await asyncio.to_thread(lookup)

    async def isolation_problem(self) -> str | None:
        """Why RUN steps built through this engine cannot be put on a build network of the platform's
        making (`builds.network`), or None when they can."""

        def check() -> str | None:
            if self.client.api.base_url != "http+docker://localhost":
                return (
                    "needs the engine on this worker's host, reached through its unix socket "
                    f"(DOCKER_HOST is {self.docker_host})"
                )
            try:
                version = self.client.version()
                info = self.client.info()
            except docker.errors.DockerException as exc:
                raise EngineUnavailable(f"no container engine reachable for builds: {exc}") from None
            if "Podman Engine" not in [str(c.get("Name")) for c in version.get("Components") or []]:
                return (
                    "needs podman's API as the engine (DOCKER_HOST is a Docker Engine, whose build API has no way to "
                    "put RUN steps on a network of the platform's making)"
                )
            if any("rootless" in str(option) for option in info.get("SecurityOptions") or []):
                return "needs podman run as root (a rootless podman cannot join the build network)"
            return host_problem()

        return await asyncio.to_thread(check)

    async def build(
        self,
        context: Path,
        dockerfile: str,
        *,
        tag: str,
        platform: str,
        labels: dict[str, str],
        cache_from: list[str],
        nocache: bool,
        on_line: Callable[[str], None],
        stop: threading.Event,
        isolated: bool = False,
        offline: bool = False,
    ) -> str:
        """Build and return the image id; `on_line` gets build output as it comes. `isolated`: RUN steps
        run on a build network of their own (`builds.network`), which needs podman run as root here;
        `offline`: otherwise, RUN steps get no network at all."""

        def run() -> str:
            image_id: str | None = None
            tail: collections.deque[str] = collections.deque(maxlen=40)
            try:
                with contextlib.ExitStack() as scope:
                    net = scope.enter_context(BuildNetwork()) if isolated else None
                    # The host's own platform is the engine's default; naming it anyway makes podman
                    # resolve the base image again for that platform (about 0.3 s per build).
                    native = platform == f"linux/{host_arch()}"
                    stream = self._stream(
                        context,
                        dockerfile,
                        tag=tag,
                        labels=labels,
                        platform=None if native else platform,
                        nocache=nocache,
                        cache_from=cache_from,
                        network=net,
                        offline=offline,
                    )
                    for chunk in stream:
                        if stop.is_set():
                            raise BuildFailed("build cancelled")
                        if not isinstance(chunk, dict):
                            continue
                        if chunk.get("error"):
                            hint = unreachable_hint(list(tail), net.blocked_attempts()) if net else ""
                            raise BuildFailed(f"image build failed: {str(chunk['error']).strip()[:2000]}{hint}")
                        text = chunk.get("stream") or chunk.get("status")
                        if text:
                            for line in str(text).splitlines():
                                if line.strip():
                                    tail.append(line)
                                    on_line(line.rstrip())
                        aux = chunk.get("aux")
                        if isinstance(aux, dict) and aux.get("ID"):
                            image_id = str(aux["ID"])
            except BuildNetworkError as exc:
                if exc.permanent:
                    raise BuildFailed(exc.message) from None
                raise BuildNetworkFailed(exc.message) from None
            except docker.errors.APIError as exc:
                raise BuildFailed(f"image build failed: {exc.explanation or exc}") from None
            except docker.errors.DockerException as exc:
                raise EngineUnavailable(f"container engine error during build: {exc}") from None
            try:
                return image_id or str(self.client.images.get(tag).id)
            except docker.errors.ImageNotFound:
                raise BuildFailed("the build finished without producing an image") from None

        return await _until_thread_ends(run, stop)

    def _stream(
        self,
        context: Path,
        dockerfile: str,
        *,
        tag: str,
        labels: dict[str, str],
        platform: str | None,
        nocache: bool,
        cache_from: list[str],
        network: BuildNetwork | None,
        offline: bool = False,
    ) -> Iterator[Any]:
        api = self.client.api
        if network is None:
            return iter(
                api.build(
                    path=str(context),
                    dockerfile=dockerfile,
                    tag=tag,
                    labels=labels,
                    platform=platform,
                    nocache=nocache,
                    cache_from=cache_from or None,
                    rm=True,
                    forcerm=True,
                    pull=False,
                    network_mode="none" if offline else None,
                    decode=True,
                )
            )
        # The SDK's build has no parameter for the namespace RUN steps join: the same request as its
        # build (context with .dockerignore applied, parameters, registry auth), plus podman's nsoptions.
        client: Any = api
        named = process_dockerfile(dockerfile, str(context))
        params: dict[str, Any] = {
            "t": tag,
            "q": False,
            "nocache": nocache,
            "rm": True,
            "forcerm": True,
            "pull": False,
            "dockerfile": named[0],
            "labels": json.dumps(labels),
            **engine_params(network.path),
        }
        if cache_from:
            params["cachefrom"] = json.dumps(cache_from)
        if platform:
            params["platform"] = platform
        ignore = context / ".dockerignore"
        exclude = None
        if ignore.is_file():
            lines = (line.strip() for line in ignore.read_text(errors="replace").splitlines())
            exclude = [line for line in lines if line and not line.startswith("#")]
        headers = {"Content-Type": "application/tar"}
        client._set_auth_headers(headers)
        archive = docker.utils.tar(context, exclude=exclude, dockerfile=named, gzip=False)
        try:
            response = client._post(client._url("/build"), data=archive, params=params, headers=headers, stream=True)
        finally:
            archive.close()
        return iter(client._stream_helper(response, decode=True))

    async def push(self, repository: str, tag: str, auth_config: dict[str, str] | None) -> None:
        """Push `repository:tag` through the engine (it reads layers from its own storage, compresses
        only what the registry lacks, and mounts blobs across repositories)."""

        def run() -> None:
            try:
                stream = self.client.api.push(repository, tag=tag, auth_config=auth_config, stream=True, decode=True)
                for chunk in stream:
                    if isinstance(chunk, dict) and chunk.get("error"):
                        raise classify_push_error(str(chunk["error"]).strip()[:1000])
            except docker.errors.APIError as exc:
                raise classify_push_error(str(exc.explanation or exc)) from None
            except docker.errors.DockerException as exc:
                raise EngineUnavailable(f"container engine error during push: {exc}") from None

        await asyncio.to_thread(run)

    async def tag(self, image_id: str, repository: str, tag: str) -> None:
        def run() -> None:
            self.client.images.get(image_id).tag(repository, tag)

        await asyncio.to_thread(run)
