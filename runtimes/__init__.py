"""Where MCP servers run. `build_executors` makes the ones this process may use."""

from __future__ import annotations

from collections.abc import Callable

from core.settings import Settings
from runtimes.base import Executor

# Given an image reference, the credentials to pull it with (docker SDK auth_config), or None.
AuthLookup = Callable[[str], "dict[str, str] | None"]


def build_executors(settings: Settings, auth_for: AuthLookup | None = None) -> dict[str, Executor]:
    from runtimes.process import ProcessExecutor

    executors: dict[str, Executor] = {
        "process": ProcessExecutor(
            settings.state_dir / "process", install_timeout=settings.package_install_timeout_seconds
        )
    }
    if settings.container_runtime == "docker" or settings.docker_host:
        from runtimes.docker import DockerExecutor

        executors["docker"] = DockerExecutor(settings.docker_host, auth_for=auth_for)
    return executors
