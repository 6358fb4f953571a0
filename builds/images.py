"""Building images through the Docker Engine API (Docker or Podman), one platform at a time."""

from __future__ import annotations

import asyncio
import platform as host_platform
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import docker
import docker.errors

from builds.registry import RegistryAuthError, RegistryError, RegistryRejected
from runtimes.base import PermanentFailure, RuntimeFailure

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


class BuildFailed(PermanentFailure):
    kind = "build_failed"


class PlatformUnsupported(PermanentFailure):
    kind = "platform_unsupported"


class EngineUnavailable(RuntimeFailure):
    kind = "engine_unavailable"


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
    ) -> str:
        """Build and return the image id; `on_line` gets build output as it comes."""

        def run() -> str:
            image_id: str | None = None
            try:
                # The host's own platform is the engine's default; naming it anyway makes podman
                # resolve the base image again for that platform (about 0.3 s per build).
                native = platform == f"linux/{host_arch()}"
                stream = self.client.api.build(
                    path=str(context),
                    dockerfile=dockerfile,
                    tag=tag,
                    labels=labels,
                    platform=None if native else platform,
                    nocache=nocache,
                    cache_from=cache_from or None,
                    rm=True,
                    forcerm=True,
                    pull=False,
                    decode=True,
                )
                for chunk in stream:
                    if stop.is_set():
                        raise BuildFailed("build cancelled")
                    if not isinstance(chunk, dict):
                        continue
                    if chunk.get("error"):
                        raise BuildFailed(f"image build failed: {str(chunk['error']).strip()[:2000]}")
                    text = chunk.get("stream") or chunk.get("status")
                    if text:
                        for line in str(text).splitlines():
                            if line.strip():
                                on_line(line.rstrip())
                    aux = chunk.get("aux")
                    if isinstance(aux, dict) and aux.get("ID"):
                        image_id = str(aux["ID"])
            except docker.errors.APIError as exc:
                raise BuildFailed(f"image build failed: {exc.explanation or exc}") from None
            except docker.errors.DockerException as exc:
                raise EngineUnavailable(f"container engine error during build: {exc}") from None
            try:
                return image_id or str(self.client.images.get(tag).id)
            except docker.errors.ImageNotFound:
                raise BuildFailed("the build finished without producing an image") from None

        return await _until_thread_ends(run, stop)

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
