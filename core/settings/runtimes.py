"""Where hosted servers run and what they may use: the default runtime and the Docker engine, the
state directory, the process sandbox, package installs, resource limits and quotas, gVisor, and
the stdio bridge."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings

RuntimeName = Literal["process", "docker", "kubernetes", "virtual-machine"]

# The runtimes this release can launch; the others are accepted names reserved for later releases.
IMPLEMENTED_RUNTIMES: tuple[str, ...] = ("process", "docker", "kubernetes", "virtual-machine")


def default_state_dir() -> Path:
    return Path.cwd() / ".mcphost"


class RuntimeSettings(BaseSettings):
    """Runtimes, sandbox, packages, resources, gVisor and the bridge."""

    container_runtime: RuntimeName = "process"
    docker_host: str | None = Field(
        default=None,
        description="Docker Engine API endpoint (unix:///run/podman/podman.sock); else the SDK default.",
    )
    state_dir: Path = Field(default_factory=default_state_dir)
    health_check_timeout_seconds: float = Field(default=90.0, gt=0)
    package_install_timeout_seconds: float = Field(default=600.0, gt=0)

    # Isolation of hosted servers (see docs/threat-model.md).
    process_sandbox: Literal["required", "off"] = Field(
        default="required",
        description="required: process-runtime servers and installs run in a bubblewrap + slirp4netns sandbox, "
        "and non-administrators' servers are refused where it cannot be set up; off: single-user local use only.",
    )
    sandbox_uid_base: int = Field(
        default=200000,
        ge=1000,
        description="First host uid of the per-server sandbox uids: each server gets one of its own, recorded "
        "when it is created (base + its slot; base + 65536 is the package installer's).",
    )
    sandbox_pids_limit: int = Field(default=512, ge=16, description="Processes (threads) a server may run at once.")
    package_allow_sdist: bool = Field(
        default=False,
        description="Let PyPI installs build source distributions (in the sandbox) and npm run install scripts.",
    )
    package_find_links: str | None = Field(
        default=None,
        description="Local wheel directories (space-separated) pip may install from beside the index; "
        "they are shown read-only to sandboxed installs.",
    )
    package_python_image: str = Field(
        default="python:3.11-slim-bookworm",
        description="Base image of PyPI package sources on the docker runtime; its Python is BUILD_PYTHON_VERSION.",
    )
    default_cpu_limit: float = Field(default=1.0, gt=0, description="Cores a server gets when it names none.")
    max_cpu_limit: float = Field(default=4.0, gt=0, description="Most cores a non-administrator's server may ask for.")
    default_memory_limit: int = Field(default=512, ge=16, description="MiB a server gets when it names none.")
    max_memory_limit: int = Field(default=4096, ge=16, description="Most MiB a non-administrator's server may ask for.")
    gpu_available: bool | None = Field(
        default=None, description="Whether servers may ask for GPUs; unset: detected (/dev/nvidia* present)."
    )
    files_max_bytes: int = Field(default=10 * 1024 * 1024, ge=1, description="Largest file one upload may store.")
    files_quota_bytes: int = Field(default=100 * 1024 * 1024, ge=1, description="Total size of a server's /data.")
    container_isolation: Literal["engine", "gvisor"] = Field(
        default="engine",
        description="Isolation of docker-runtime servers: engine (the engine's default runtime) or gvisor (gVisor's "
        "user-space kernel, CONTAINER_GVISOR_RUNTIME). A server may ask for more; only administrators' for less.",
    )
    container_gvisor_runtime: str = Field(
        default="runsc",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
        description="The engine's name of its gVisor runtime (daemon.json `runtimes`, containers.conf "
        "`[engine.runtimes]`).",
    )
    container_gvisor_docker_host: str | None = Field(
        default=None,
        description="Engine API endpoint gVisor containers are made through, of the same engine as DOCKER_HOST: "
        "Podman's API service runs every container on its own default runtime, so gVisor needs a second service "
        "(`podman --runtime runsc system service`). Unset: DOCKER_HOST, asked for the runtime per container.",
    )

    # The bridge in front of stdio servers.
    bridge_max_sessions: int = Field(
        default=32, ge=1, description="MCP sessions (child processes) one bridged stdio server may hold at once."
    )
    bridge_idle_timeout_seconds: float = Field(
        default=600.0, gt=0, description="A bridged session with no request for this long is ended, its child stopped."
    )
