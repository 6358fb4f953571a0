"""Where MCP servers run. `build_executors` makes the ones this process may use."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

# Kept light: the sandbox launcher (`python -m runtimes.sandbox`) imports this package on every start.
if TYPE_CHECKING:
    from core.settings import Settings
    from runtimes.base import Executor

# Given an image reference and the id of the server pulling it, the credentials to pull it with (docker
# SDK auth_config), or None.
AuthLookup = Callable[[str, str], "dict[str, str] | None"]


def build_executors(settings: Settings, auth_for: AuthLookup | None = None) -> dict[str, Executor]:
    from pathlib import Path

    from runtimes.process import ProcessExecutor

    # Besides the state directory, what a hosted process must never read: the platform's .env and keys.
    hidden = [Path(".env").resolve(), settings.state_dir.resolve()]
    if settings.registry_auth_dockerconfig is not None:
        hidden.append(settings.registry_auth_dockerconfig.resolve())
    executors: dict[str, Executor] = {
        "process": ProcessExecutor(
            settings.state_dir / "process",
            install_timeout=settings.package_install_timeout_seconds,
            sandbox_mode=settings.process_sandbox,
            installer_uid=settings.sandbox_uid_base + 65536,
            allow_sdist=settings.package_allow_sdist,
            find_links=settings.package_find_links,
            hidden=tuple(hidden),
            bridge_max_sessions=settings.bridge_max_sessions,
            bridge_idle_seconds=settings.bridge_idle_timeout_seconds,
        )
    }
    if settings.container_runtime == "docker" or settings.docker_host:
        from runtimes.docker import DockerExecutor
        from runtimes.package_images import PackageImageConfig

        packages = PackageImageConfig(
            base_image=settings.package_python_image,
            python_version=settings.build_python_version,
            allow_sdist=settings.package_allow_sdist,
            find_links=tuple((settings.package_find_links or "").split()),
            download_timeout=settings.package_install_timeout_seconds,
            build_timeout=settings.build_timeout_seconds,
            bridge_max_sessions=settings.bridge_max_sessions,
            bridge_idle_seconds=settings.bridge_idle_timeout_seconds,
        )
        executors["docker"] = DockerExecutor(settings.docker_host, auth_for=auth_for, packages=packages)
    return executors
