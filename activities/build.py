"""Activities of BuildWorkflow: resolve a git revision, build one image per platform, record the artifact.

Idempotent: the artifact row is unique per (server, build key), and an image already built for a
build key and platform (found by its label) is reused instead of rebuilt. What the activities take and
answer is in activities.build_types.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.build_types import BuildRequest, BuiltImage, GitPlan, build_key, local_tag
from activities.common import as_application_error, heartbeating, open_env
from activities.telemetry import EventWriter
from builds import git, recipes, wheels
from builds.dockerfile import name_problem, network_refusals
from builds.images import LABEL_BUILD_KEY, BuildFailed, ImageBuilder, emulation_missing
from core.failures import RuntimeFailure
from core.gitpolicy import GitUrlRejected, check_git_url_resolves_public
from core.models import BuildArtifactPlatform, BuildArtifactRun, Deployment, Server
from core.settings import Settings
from core.sources import GitSource, parse_source


class BuildActivities:
    def __init__(
        self, sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, builder: ImageBuilder
    ) -> None:
        self.sessionmaker = sessionmaker
        self.settings = settings
        self.builder = builder
        self.cipher = settings.env_cipher()
        self.events = EventWriter(sessionmaker)

    async def _load(self, deployment_id: str) -> tuple[Deployment, Server, GitSource]:
        async with self.sessionmaker() as session:
            deployment = await session.get(Deployment, uuid.UUID(deployment_id))
            if deployment is None:
                raise ApplicationError(f"deployment {deployment_id} no longer exists", type="gone", non_retryable=True)
            server = await session.get(Server, deployment.server_id)
            assert server is not None
        source = parse_source(deployment.spec["source"])
        if not isinstance(source, GitSource):
            raise ApplicationError("not a git source", type="runtime_rejected", non_retryable=True)
        return deployment, server, source

    @activity.defn(name="resolve_git_source")
    async def resolve_git_source(self, deployment_id: str) -> GitPlan:
        """Which commit to build, whether this host can build every platform, and whether an artifact of
        that exact revision already exists (then it is reused, not rebuilt)."""
        deployment, server, source = await self._load(deployment_id)
        settings = self.settings
        try:
            await asyncio.to_thread(check_git_url_resolves_public, source.repo_url, settings.git_allow_insecure_urls)
        except GitUrlRejected as exc:
            raise ApplicationError(str(exc), type="git_rejected", non_retryable=True) from None
        for platform in settings.arch_targets:
            reason = emulation_missing(platform)
            if reason:
                raise ApplicationError(reason, type="platform_unsupported", non_retryable=True)
        try:
            revision = source.ref or await git.remote_revision(
                source.repo_url,
                source.branch,
                allow_insecure=settings.git_allow_insecure_urls,
                timeout=settings.git_clone_timeout_seconds,
            )
        except RuntimeFailure as exc:
            raise as_application_error(exc) from None
        key = build_key(source, revision, settings.arch_targets, settings.registry)
        reusable = "pushed" if settings.registry else "built"
        pinned = deployment.spec.get("artifact_id")
        if pinned:
            return await self._pinned(deployment, server, source, str(pinned), reusable)
        async with self.sessionmaker() as session, session.begin():
            existing = await session.scalar(
                select(BuildArtifactRun)
                .where(BuildArtifactRun.server_id == server.id, BuildArtifactRun.build_key == key)
                .with_for_update()
            )
            reused = existing is not None and existing.status == reusable
            if reused and not settings.registry and existing is not None:
                # A local-only artifact is reusable while its image is still in the engine.
                platform = settings.arch_targets[0]
                tag = local_tag(server.id, revision, platform)
                reused = await self.builder.find(tag, key, platform) is not None
            if existing is None:
                run_id = uuid.uuid4()
                await session.execute(
                    insert(BuildArtifactRun)
                    .values(
                        id=run_id,
                        server_id=server.id,
                        deployment_id=deployment.id,
                        build_key=key,
                        status="building",
                        source_repo=source.repo_url,
                        source_branch=source.branch,
                        source_revision=revision,
                        subdirectory=source.subdirectory,
                        recipe={},
                        credential_outcomes={},
                        timings={},
                    )
                    .on_conflict_do_nothing(constraint="uq_build_artifact_runs_key")
                )
                artifact_id = await session.scalar(
                    select(BuildArtifactRun.id).where(
                        BuildArtifactRun.server_id == server.id, BuildArtifactRun.build_key == key
                    )
                )
            else:
                artifact_id = existing.id
                if not reused and existing.status != "building":
                    existing.status = "building"
                    existing.error = None
                    existing.deployment_id = deployment.id
            dep = await session.get(Deployment, deployment.id)
            assert dep is not None and artifact_id is not None
            dep.revision = revision
            dep.artifact_id = artifact_id
        if reused:
            await self.events.emit(str(server.id), "build_reused", deployment_id=deployment_id, revision=revision)
        return self._plan(deployment_id, str(server.id), revision, key, str(artifact_id), reused)

    def _plan(
        self, deployment_id: str, server_id: str, revision: str, key: str, artifact_id: str, reused: bool
    ) -> GitPlan:
        settings = self.settings
        return GitPlan(
            deployment_id=deployment_id,
            server_id=server_id,
            revision=revision,
            build_key=key,
            platforms=settings.arch_targets,
            parallelism=settings.registry_build_parallelism,
            registry=settings.registry,
            artifact_id=artifact_id,
            reused=reused,
            build_timeout_seconds=settings.build_timeout_seconds,
            push_retries=settings.registry_push_retries,
            push_backoff_seconds=settings.registry_push_backoff_seconds,
            push_timeout_seconds=settings.registry_push_timeout_seconds,
        )

    async def _pinned(
        self, deployment: Deployment, server: Server, source: GitSource, artifact_id: str, reusable: str
    ) -> GitPlan:
        """A deployment pinned to an artifact (a promotion takes one digest through a track's servers): that
        exact image is reused, whichever of the owner's servers built it, or the deployment fails saying
        why. Nothing is rebuilt, so every stage runs the same bytes."""
        settings = self.settings
        async with self.sessionmaker() as session, session.begin():
            artifact = await session.get(BuildArtifactRun, uuid.UUID(artifact_id))
            builder = await session.get(Server, artifact.server_id) if artifact is not None else None
            if artifact is None or builder is None or builder.owner_id != server.owner_id:
                raise ApplicationError(
                    f"the artifact {artifact_id} this deployment is pinned to no longer exists",
                    type="artifact_gone",
                    non_retryable=True,
                )
            if (artifact.source_repo, artifact.subdirectory) != (source.repo_url, source.subdirectory):
                raise ApplicationError(
                    f"the pinned artifact was built from {artifact.source_repo} "
                    f"({artifact.subdirectory or 'the repository root'}), not from this server's source",
                    type="artifact_mismatch",
                    non_retryable=True,
                )
            if artifact.status != reusable:
                raise ApplicationError(
                    f"the pinned artifact is {artifact.status}, not {reusable}: it cannot be deployed as it is",
                    type="artifact_unusable",
                    non_retryable=True,
                )
            dep = await session.get(Deployment, deployment.id)
            assert dep is not None
            dep.revision = artifact.source_revision
            dep.artifact_id = artifact.id
            revision, key = artifact.source_revision, artifact.build_key
        if not settings.registry:
            platform = settings.arch_targets[0]
            if await self.builder.find(local_tag(artifact.server_id, revision, platform), key, platform) is None:
                raise ApplicationError(
                    "the pinned artifact's image is no longer in the engine (and there is no registry)",
                    type="artifact_gone",
                    non_retryable=True,
                )
        await self.events.emit(str(server.id), "build_reused", deployment_id=str(deployment.id), revision=revision)
        return self._plan(str(deployment.id), str(server.id), revision, key, artifact_id, True)

    @activity.defn(name="build_image")
    async def build_image(self, request: BuildRequest) -> BuiltImage:
        deployment, server, source = await self._load(request.deployment_id)
        async with self.sessionmaker() as session:
            run = await session.get(BuildArtifactRun, uuid.UUID(request.artifact_id))
            if run is None:
                raise ApplicationError("build artifact record is gone", type="gone", non_retryable=True)
            key, revision = run.build_key, run.source_revision
        server_id = str(server.id)
        tag = local_tag(server.id, revision, request.platform)
        started = time.monotonic()

        existing = await self.builder.find(tag, key, request.platform)
        if existing is not None:
            # A retried activity (e.g. the worker died after the engine finished): the image is there.
            recipe = await self._recorded_recipe(request.artifact_id)
            if recipe:
                await self._record_platform(request, existing, tag, time.monotonic() - started)
                return BuiltImage(request.platform, existing, tag, 0.0, reused=True, recipe=recipe)

        await self.events.emit(
            server_id,
            "build_started",
            deployment_id=request.deployment_id,
            platform=request.platform,
            revision=revision,
        )
        try:
            image_id, recipe = await self._build(request, deployment, server, source, revision, key, tag)
        except RuntimeFailure as exc:
            await self.events.emit(
                server_id,
                "build_failed",
                deployment_id=request.deployment_id,
                platform=request.platform,
                error_kind=exc.kind,
                error=exc.message[:500],
            )
            raise as_application_error(exc) from None
        seconds = time.monotonic() - started
        await self._record_platform(request, image_id, tag, seconds, recipe)
        await self.events.emit(
            server_id,
            "build_succeeded",
            deployment_id=request.deployment_id,
            platform=request.platform,
            image_id=image_id,
            duration_ms=int(seconds * 1000),
            revision=revision,
        )
        return BuiltImage(request.platform, image_id, tag, seconds, recipe=recipe)

    async def _build(
        self,
        request: BuildRequest,
        deployment: Deployment,
        server: Server,
        source: GitSource,
        revision: str,
        key: str,
        tag: str,
    ) -> tuple[str, dict[str, Any]]:
        settings = self.settings
        server_id = str(server.id)
        isolated = settings.build_network_isolation == "required"
        if isolated:
            problem = await self.builder.isolation_problem()
            if problem:
                raise BuildFailed(
                    "git builds run tenant Dockerfiles on a network that reaches the internet but not the build "
                    f"host or its private networks, which {problem}. Set BUILD_NETWORK_ISOLATION=off only where "
                    "every tenant is trusted: builds then reach whatever the engine's default network reaches"
                )
        async with git.workspace() as work:
            repo = work / "repo"
            repo.mkdir()
            await heartbeating(
                git.checkout(
                    source.repo_url,
                    revision,
                    repo,
                    branch=source.branch,
                    allow_insecure=settings.git_allow_insecure_urls,
                    timeout=settings.git_clone_timeout_seconds,
                    max_bytes=settings.git_max_repo_bytes,
                ),
                "cloning",
            )
            git.check_context(repo)
            context = repo / source.subdirectory if source.subdirectory else repo
            if not context.is_dir():
                raise recipes.RecipeError(f"subdirectory {source.subdirectory!r} does not exist at {revision[:12]}")
            recipe = recipes.detect(
                context,
                port=source.port,
                path=source.path,
                images=recipes.BaseImages(
                    python=settings.build_python_image, node=settings.build_node_image, rust=settings.build_rust_image
                ),
            )
            missing = recipes.missing_config(recipe.config_schema, open_env(self.cipher, deployment.spec.get("env")))
            if missing:
                raise recipes.RecipeError(
                    f"{recipe.manifest} requires configuration that the server does not set: {', '.join(missing)}"
                )
            if recipe.generated is not None:
                (context / recipe.dockerfile).write_text(recipe.generated)
            unreadable = name_problem(recipe.dockerfile)
            if unreadable:
                raise BuildFailed(f"{recipe.dockerfile} cannot be built: {unreadable}")
            refused = network_refusals((context / recipe.dockerfile).read_text(errors="replace"))
            if refused:
                raise BuildFailed(
                    f"{recipe.dockerfile} cannot be built: " + "; ".join(str(refusal) for refusal in refused[:5])
                )
            if recipe.python_requirements:
                fetch = wheels.fetch(
                    context / recipes.WHEELS_DIR,
                    recipe.python_requirements,
                    platform=request.platform,
                    python_version=settings.build_python_version,
                    timeout=settings.package_install_timeout_seconds,
                )
                await heartbeating(fetch, "fetching wheels")
            await self.events.logs(
                server_id,
                request.deployment_id,
                [
                    f"build {request.platform}: {recipe.kind} recipe at {revision[:12]}, port {recipe.port}",
                    "build network: the internet only (not the build host or its private networks)"
                    if isolated
                    else "build network: the engine's default (BUILD_NETWORK_ISOLATION=off)",
                ],
            )
            labels = {
                "io.modelcontextprotocol.server.name": recipe.name or server.slug,
                "org.opencontainers.image.source": source.repo_url,
                "org.opencontainers.image.revision": revision,
                "io.mcphost.server": server_id,
                LABEL_BUILD_KEY: f"{key}:{request.platform}",
            }
            cache_from = [c.strip() for c in (settings.registry_build_cache_from or "").split(",") if c.strip()]
            image_id = await self._stream_build(
                server_id,
                request.deployment_id,
                context,
                recipe.dockerfile,
                tag=tag,
                platform=request.platform,
                labels=labels,
                cache_from=cache_from,
                nocache=settings.registry_build_disable_cache,
                isolated=isolated,
            )
        summary = {
            "kind": recipe.kind,
            "dockerfile": recipe.dockerfile,
            "port": recipe.port,
            "path": recipe.path,
            "exposed": recipe.exposed,
            "name": recipe.name,
            "start_command": recipe.start_command,
            "config_schema": recipe.config_schema,
            "manifest": recipe.manifest,
        }
        return image_id, summary

    async def _stream_build(
        self, server_id: str, deployment_id: str, context: Path, dockerfile: str, **kwargs: Any
    ) -> str:
        lines: collections.deque[str] = collections.deque()
        stop = threading.Event()
        task = asyncio.ensure_future(self.builder.build(context, dockerfile, on_line=lines.append, stop=stop, **kwargs))
        deadline = time.monotonic() + self.settings.build_timeout_seconds
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=1.0)
                batch = [lines.popleft() for _ in range(len(lines))]
                await self.events.logs(server_id, deployment_id, [f"build: {line}" for line in batch])
                if done:
                    return task.result()
                activity.heartbeat("building")
                if time.monotonic() > deadline:
                    raise recipes.RecipeError(
                        f"the build did not finish within {self.settings.build_timeout_seconds:.0f} s "
                        "(BUILD_TIMEOUT_SECONDS)"
                    )
        finally:
            stop.set()

    async def _recorded_recipe(self, artifact_id: str) -> dict[str, Any]:
        async with self.sessionmaker() as session:
            run = await session.get(BuildArtifactRun, uuid.UUID(artifact_id))
            return dict(run.recipe) if run is not None and run.recipe else {}

    async def _record_platform(
        self, request: BuildRequest, image_id: str, tag: str, seconds: float, recipe: dict[str, Any] | None = None
    ) -> None:
        async with self.sessionmaker() as session, session.begin():
            stmt = insert(BuildArtifactPlatform).values(
                run_id=uuid.UUID(request.artifact_id),
                platform=request.platform,
                image_id=image_id,
                local_image=tag,
                build_seconds=round(seconds, 3),
            )
            await session.execute(
                stmt.on_conflict_do_update(
                    constraint="uq_build_artifact_platforms_platform",
                    set_={"image_id": image_id, "local_image": tag, "build_seconds": round(seconds, 3)},
                )
            )
            if recipe:
                run = await session.get(BuildArtifactRun, uuid.UUID(request.artifact_id), with_for_update=True)
                if run is not None:
                    run.recipe = recipe

    def all(self) -> list[Any]:
        return [
            self.resolve_git_source,
            self.build_image,
        ]
