"""The registry as a worker reaches it, for the push activities (activities.registry): its endpoint, a
server's repository in it, the credentials (read once, kept until a refresh replaces them, and the only
ones a server's own images are pulled with), registry clients, the credential refresher and the hooks run
after it, and the credential outcomes recorded on an artifact."""

from __future__ import annotations

import asyncio
import logging
import shlex
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.exceptions import ApplicationError

from activities.telemetry import EventWriter
from builds.images import ImageBuilder
from builds.registry import Credentials, RegistryClient, RegistryRejected, load_dockerconfig, split_registry
from core.models import BuildArtifactRun, Server
from core.settings import Settings, child_environment
from core.tenancy import image_repository

log = logging.getLogger("activities.registry")  # the push activities' logger


class RegistryAccess:
    """What RegistryActivities (and the worker, through them) use of the registry besides the activities."""

    def __init__(
        self, sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, builder: ImageBuilder
    ) -> None:
        self.sessionmaker = sessionmaker
        self.settings = settings
        self.builder = builder
        self.events = EventWriter(sessionmaker)
        self._credentials: Credentials | None = None
        self._loaded = False
        # Run after each successful credential refresh (the kubernetes runtime's pull Secret is rewritten).
        self.on_refreshed: list[Callable[[], Awaitable[Any]]] = []

    @property
    def endpoint(self) -> str:
        if not self.settings.registry:
            raise ApplicationError("REGISTRY is not set on this worker", type="registry_unset", non_retryable=True)
        return split_registry(self.settings.registry)[0]

    def repository(self, server_id: str) -> str:
        """The server's repository in the registry (namespace/name, without the endpoint)."""
        assert self.settings.registry is not None
        namespace = split_registry(self.settings.registry)[1]
        name = image_repository(server_id)
        return f"{namespace}/{name}" if namespace else name

    async def _repository(self, server_id: str) -> str:
        async with self.sessionmaker() as session:
            found = await session.scalar(select(Server.id).where(Server.id == uuid.UUID(server_id)))
        if found is None:
            raise ApplicationError("server no longer exists", type="gone", non_retryable=True)
        return self.repository(server_id)

    async def _revision(self, artifact_id: str) -> str:
        async with self.sessionmaker() as session:
            revision = await session.scalar(
                select(BuildArtifactRun.source_revision).where(BuildArtifactRun.id == uuid.UUID(artifact_id))
            )
        if revision is None:
            raise ApplicationError("build artifact record is gone", type="gone", non_retryable=True)
        return revision

    def _read_credentials(self) -> Credentials | None:
        path = self.settings.registry_auth_dockerconfig
        if path is None:
            return None
        try:
            return load_dockerconfig(path, self.endpoint)
        except RegistryRejected as exc:
            raise ApplicationError(exc.message, type="registry_credentials", non_retryable=True) from None

    def credentials(self) -> Credentials | None:
        """The credentials this worker uses, read once and kept until a refresh replaces them."""
        if not self._loaded:
            self._credentials = self._read_credentials()
            self._loaded = True
        return self._credentials

    def auth_for(self, image_ref: str, server_id: str) -> dict[str, str] | None:
        """Pull credentials for the docker runtime: only for the server's own repository in the configured
        registry, so no server can use the platform's credentials to read another's images (or anything
        else the credentials reach)."""
        if not self.settings.registry:
            return None
        try:
            own = f"{self.endpoint}/{self.repository(server_id)}"
        except ValueError:
            return None
        if not image_ref.startswith((own + ":", own + "@")):
            return None
        try:
            credentials = self.credentials()
        except ApplicationError:
            return None
        return credentials.auth_config() if credentials else None

    def client(self, credentials: Credentials | None = None, timeout: float | None = None) -> RegistryClient:
        return RegistryClient(
            self.endpoint,
            credentials=credentials if credentials is not None else self.credentials(),
            insecure=self.settings.registry_insecure,
            timeout=timeout or self.settings.registry_push_timeout_seconds,
        )

    async def refresh(self) -> str | None:
        """Run the credential refresher now (a remediation step); None when it succeeded, else why not."""
        return await self._run_refresher()

    async def _run_refresher(self) -> str | None:
        """Run REGISTRY_AUTH_REFRESHER, then the `on_refreshed` hooks; returns an error message, or None."""
        problem = await self._refresh()
        if problem is None:
            for hook in self.on_refreshed:
                try:
                    await hook()
                except Exception as exc:  # noqa: BLE001 - a hook's failure must not fail the push
                    log.warning("after the credential refresh, %s failed: %s", getattr(hook, "__qualname__", hook), exc)
        return problem

    async def _refresh(self) -> str | None:
        command = self.settings.registry_auth_refresher
        assert command
        try:
            proc = await asyncio.create_subprocess_exec(
                *shlex.split(command),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
                env=child_environment(),
            )
        except OSError as exc:
            return f"credential refresher could not run: {exc.strerror or type(exc).__name__}"
        try:
            await asyncio.wait_for(proc.wait(), timeout=120)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return "credential refresher did not finish within 120 s"
        if proc.returncode != 0:
            # Its output is not kept: a credential helper may print secrets. Run it by hand to see why.
            return f"credential refresher exited with status {proc.returncode}"
        return None

    async def _outcome(self, artifact_id: str, **values: Any) -> None:
        async with self.sessionmaker() as session, session.begin():
            run = await session.get(BuildArtifactRun, uuid.UUID(artifact_id), with_for_update=True)
            if run is not None:
                run.credential_outcomes = {**run.credential_outcomes, **values}
