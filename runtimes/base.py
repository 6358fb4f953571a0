"""The executor protocol every runtime implements (the failures runtimes raise are in `core.failures`)."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from core.sources import CommandSource, ImageSource, PackageSource
from core.tenancy import Resources

Source = ImageSource | PackageSource | CommandSource

# Labels (containers) / environment markers (processes) that tie an instance to its server and deployment.
LABEL_SERVER = "io.mcphost.server"
LABEL_DEPLOYMENT = "io.mcphost.deployment"
LABEL_SLUG = "io.mcphost.slug"
# The environment variable that tells the stdio bridge its (secret) HTTP path.
BRIDGE_PATH_ENV = "MCPHOST_BRIDGE_PATH"
# The stdio bridge's source: the docker runtime runs a copy of it inside the images of package sources.
BRIDGE_SOURCE = Path(__file__).with_name("bridge.py")


def free_loopback_port() -> int:
    """A port free on 127.0.0.1 right now, for an instance to listen on (or publish to)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class LaunchSpec:
    server_id: str
    deployment_id: str
    slug: str
    source: Source
    env: dict[str, str] = field(default_factory=dict)
    # The server's own limits, host uid and `/data` directory (None: the runtime's defaults, no /data).
    resources: Resources | None = None
    uid: int | None = None
    data_dir: Path | None = None
    # Whether the server's owner is an administrator: only their servers may run unsandboxed.
    trusted: bool = False
    # The server whose platform build `source` is, when the platform took the image from a build record of
    # the owner's (a promotion runs an artifact another of the owner's servers built); None for an image
    # the server's source names itself.
    image_builder: str | None = None
    # Docker runtime: the engine's default runtime, or gVisor (core.isolation); other runtimes ignore it, and
    # a server that asked for gVisor itself is never sent to them.
    isolation: Literal["engine", "gvisor"] = "engine"


@dataclass(frozen=True)
class Instance:
    runtime: str
    ref: str
    deployment_id: str
    server_id: str
    url: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime,
            "ref": self.ref,
            "deployment_id": self.deployment_id,
            "server_id": self.server_id,
            "url": self.url,
        }


@dataclass(frozen=True)
class InstanceStatus:
    state: Literal["running", "exited", "missing"]
    exit_code: int | None = None
    detail: str | None = None


class Executor(Protocol):
    """Where MCP servers run. Every method is idempotent: it looks at the real world first."""

    name: str

    async def prepare(self, spec: LaunchSpec) -> str:
        """Make the source runnable (install a package, pull an image). Returns a short description."""
        ...

    async def launch(self, spec: LaunchSpec) -> Instance:
        """Start the deployment's instance, or return it if it already exists."""
        ...

    async def instances(self, server_id: str) -> list[Instance]:
        """Every instance of the server this runtime holds, running or not."""
        ...

    async def server_ids(self) -> list[str]:
        """The servers this runtime holds any instance of (for the reconciler)."""
        ...

    async def status(self, instance: Instance) -> InstanceStatus: ...

    async def stop(self, instance: Instance) -> None: ...

    async def remove(self, instance: Instance) -> None: ...

    async def logs(self, instance: Instance, tail: int = 200) -> list[str]: ...

    async def close(self) -> None: ...


class PackageImages(Protocol):
    """Builds the images the docker runtime runs PyPI package sources from (laid out as `core.package_image`
    says): the worker gives it `builds.package_images.PackageImageBuilder`; a process that only reads the
    runtime's instances (the API) gives it none."""

    def name(self, source: PackageSource) -> tuple[str, str]:
        """The key of the image `source` runs from (a digest of what it is made of) and the tag it is built under."""
        ...

    async def build(self, source: PackageSource, key: str, tag: str) -> str:
        """Build that image under `tag`, labelled with its key (LABEL_PACKAGE_BUILD), on the engine the runtime
        runs it on; returns its id."""
        ...
