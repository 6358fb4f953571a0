"""Activities of PushWorkflow: credential health, tag, push with retries and credential refresh,
publish the OCI image index, prune manifests of platforms no longer built.

Transient failures (connection reset, timeout, 5xx) are retried by Temporal with the push retry
policy the workflow builds from REGISTRY_PUSH_RETRIES; every attempt and retry is an event. An
authentication failure re-reads the credentials (running REGISTRY_AUTH_REFRESHER first when set)
and tries once more, recorded with reason "auth_refresh". The registry's endpoint, repositories,
credentials and clients are reached through activities.registry_access.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.build_types import ArtifactImage, platform_suffix
from activities.common import heartbeating
from activities.registry_access import RegistryAccess
from builds.registry import OCI_MANIFEST, Credentials, Descriptor, RegistryAuthError, RegistryError, RegistryRejected
from core.models import BuildArtifactPlatform, BuildArtifactRun


@dataclass
class PushTarget:
    deployment_id: str
    server_id: str
    artifact_id: str
    platform: str = ""
    image_id: str = ""
    retry_limit: int = 3


@dataclass
class CredentialReport:
    verdict: str  # fresh | rotate_soon | expired | anonymous
    age_seconds: float | None = None
    rotation: str | None = None  # succeeded | failed | skipped


@dataclass
class PlatformPush:
    platform: str
    digest: str
    size: int
    spec: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    media_type: str = OCI_MANIFEST


@dataclass
class IndexRequest:
    deployment_id: str
    server_id: str
    artifact_id: str
    pushes: list[PlatformPush] = field(default_factory=list)


@dataclass
class PublishedIndex:
    repository: str  # registry/namespace/name, without tag or digest
    tag: str
    digest: str


@dataclass
class FinishPush:
    artifact_id: str
    index: PublishedIndex
    pushes: list[PlatformPush] = field(default_factory=list)


class RegistryActivities(RegistryAccess):
    # -- activities ----------------------------------------------------------------------------
    @activity.defn(name="check_registry_credentials")
    async def check_registry_credentials(self, target: PushTarget) -> CredentialReport:
        """The credential health probe: how old is the credentials file, and must it be rotated now?"""
        settings = self.settings
        emit = self.events.emit
        base = {"deployment_id": target.deployment_id, "registry_endpoint": self.endpoint}
        path = settings.registry_auth_dockerconfig
        if path is None:
            await emit(target.server_id, "auth_health_reported", **base, verdict="anonymous", auth_expired=False)
            await self._outcome(target.artifact_id, health="anonymous")
            return CredentialReport(verdict="anonymous")
        try:
            age = max(0.0, time.time() - path.stat().st_mtime)
        except OSError:
            age = None
        max_age, lead = settings.registry_auth_max_age_seconds, settings.registry_auth_rotate_lead_seconds
        if age is None:
            verdict = "missing"
        elif age >= max_age:
            verdict = "expired"
        elif age >= max_age - lead:
            verdict = "rotate_soon"
        else:
            verdict = "fresh"
        expired = verdict in ("expired", "missing")
        await emit(
            target.server_id,
            "auth_health_reported",
            **base,
            verdict=verdict,
            auth_expired=expired,
            auth_age_seconds=round(age, 1) if age is not None else None,
        )
        rotation: str | None = None
        if verdict != "fresh":
            if not settings.registry_auth_refresher:
                rotation = "skipped"
                await emit(
                    target.server_id,
                    "auth_rotation_skipped",
                    **base,
                    verdict=verdict,
                    auth_expired=expired,
                    reason="no REGISTRY_AUTH_REFRESHER configured",
                )
            else:
                await emit(target.server_id, "auth_rotation_started", **base, verdict=verdict, auth_expired=expired)
                error = await self._run_refresher()
                if error is None:
                    rotation = "succeeded"
                    self._credentials, self._loaded = self._read_credentials(), True
                    await emit(target.server_id, "auth_rotation_succeeded", **base)
                else:
                    rotation = "failed"
                    await emit(target.server_id, "auth_rotation_failed", **base, error=error)
        await self._outcome(target.artifact_id, health=verdict, rotation=rotation)
        return CredentialReport(verdict=verdict, age_seconds=age, rotation=rotation)

    @activity.defn(name="tag_image")
    async def tag_image(self, target: PushTarget) -> str:
        """Tag the built image with its registry name (visible with `docker images`)."""
        repository = f"{self.endpoint}/{await self._repository(target.server_id)}"
        tag = f"{(await self._revision(target.artifact_id))[:12]}-{platform_suffix(target.platform)}"
        base = {"deployment_id": target.deployment_id, "registry_endpoint": self.endpoint, "platform": target.platform}
        await self.events.emit(target.server_id, "tag_started", **base, repository=repository, tag=tag)
        await self.builder.tag(target.image_id, repository, tag)
        await self.events.emit(target.server_id, "tag_succeeded", **base, repository=repository, tag=tag)
        return f"{repository}:{tag}"

    @activity.defn(name="push_image")
    async def push_image(self, target: PushTarget) -> PlatformPush:
        """One attempt: check the registry answers and takes the credentials (`GET /v2/`), push the
        platform's tag through the engine, read back its manifest. Idempotent: a repeated push finds
        every blob in place and only re-puts the same manifest."""
        attempt = activity.info().attempt
        repo = await self._repository(target.server_id)
        tag = f"{(await self._revision(target.artifact_id))[:12]}-{platform_suffix(target.platform)}"
        base = {
            "deployment_id": target.deployment_id,
            "registry_endpoint": self.endpoint,
            "platform": target.platform,
            "retry_limit": target.retry_limit,
            "attempt": attempt,
        }
        emit = self.events.emit
        started = time.monotonic()

        async def push(credentials: Credentials | None, reason: str | None) -> Descriptor:
            await emit(target.server_id, "push_started", **base, repository=repo, tag=tag, reason=reason)
            async with self.client(credentials) as client:
                await client.ping()
                auth = credentials.auth_config() if credentials else None
                await heartbeating(self.builder.push(f"{self.endpoint}/{repo}", tag, auth), "pushing")
                found = await client.get_manifest(repo, tag)
            if found is None:
                raise RegistryError(f"the registry does not show {repo}:{tag} after the push", "server_error")
            return found[0]

        try:
            try:
                pushed = await push(self.credentials(), None)
            except RegistryAuthError as exc:
                pushed = await self._refresh_and_push(target, base, exc, push)
        except RegistryAuthError:
            raise  # already reported by _refresh_and_push
        except RegistryError as exc:
            if attempt <= target.retry_limit:
                await emit(target.server_id, "push_retry", **base, error_kind=exc.error_kind, error=exc.message)
                raise ApplicationError(
                    f"push attempt {attempt} failed: {exc.message}", type="registry_transient"
                ) from None
            message = (
                f"pushing to {self.endpoint} failed after {attempt} attempts ({exc.error_kind}: {exc.message}). "
                "Check that the registry is reachable from the worker, or raise REGISTRY_PUSH_RETRIES."
            )
            await emit(target.server_id, "push_failed", **base, error_kind=exc.error_kind, error=exc.message)
            raise ApplicationError(message, type="push_failed", non_retryable=True) from None
        except RegistryRejected as exc:
            await emit(target.server_id, "push_failed", **base, error_kind=exc.error_kind, error=exc.message)
            raise ApplicationError(
                f"{exc.message}. Fix the registry side (repository name, permissions, quota) and redeploy.",
                type="push_failed",
                non_retryable=True,
            ) from None
        seconds = time.monotonic() - started
        await emit(
            target.server_id,
            "push_succeeded",
            **base,
            repository=repo,
            tag=tag,
            digest=pushed.digest,
            duration_ms=int(seconds * 1000),
        )
        os_name, arch, *variant = target.platform.split("/")
        spec = {"architecture": arch, "os": os_name, **({"variant": variant[0]} if variant else {})}
        return PlatformPush(target.platform, pushed.digest, pushed.size, spec, round(seconds, 3), pushed.media_type)

    async def _refresh_and_push(
        self, target: PushTarget, base: dict[str, Any], error: RegistryAuthError, push: Any
    ) -> Any:
        emit = self.events.emit
        sid = target.server_id
        await emit(sid, "auth_refresh_started", **base, error_kind=error.error_kind, error=error.message)
        problem: str | None = None
        if self.settings.registry_auth_refresher:
            problem = await self._run_refresher()
        credentials: Credentials | None = None
        if problem is None:
            credentials = self._read_credentials()
            try:
                async with self.client(credentials) as client:
                    await client.ping()
            except RegistryAuthError as exc:
                problem = exc.message
        if problem is not None:
            await emit(sid, "auth_refresh_failed", **base, error_kind="unauthorized", error=problem, auth_expired=True)
            await emit(sid, "push_failed", **base, error_kind="unauthorized", error=problem, auth_expired=True)
            await self._outcome(target.artifact_id, refresh="failed")
            where = self.settings.registry_auth_dockerconfig or "REGISTRY_AUTH_DOCKERCONFIG"
            raise ApplicationError(
                f"registry {self.endpoint} rejected the push credentials, also after re-reading {where}: "
                f"{problem}. Rotate the registry credentials (write the new ones to {where}"
                + (" or fix REGISTRY_AUTH_REFRESHER" if self.settings.registry_auth_refresher else "")
                + ") and redeploy.",
                type="registry_auth_failed",
                non_retryable=True,
            )
        self._credentials, self._loaded = credentials, True
        await emit(sid, "auth_refresh_succeeded", **base)
        await self._outcome(target.artifact_id, refresh="succeeded")
        return await push(credentials, "auth_refresh")

    @activity.defn(name="publish_index")
    async def publish_index(self, request: IndexRequest) -> PublishedIndex:
        repo = await self._repository(request.server_id)
        tag = (await self._revision(request.artifact_id))[:12]
        manifests = [Descriptor(p.media_type, p.digest, p.size, p.spec) for p in request.pushes]
        try:
            async with self.client() as client:
                digest, _ = await client.put_index(repo, tag, manifests)
        except RegistryRejected as exc:
            raise ApplicationError(exc.message, type="push_failed", non_retryable=True) from None
        except RegistryError as exc:
            raise ApplicationError(exc.message, type="registry_transient") from None
        await self.events.emit(
            request.server_id,
            "manifest_published",
            deployment_id=request.deployment_id,
            registry_endpoint=self.endpoint,
            repository=repo,
            tag=tag,
            digest=digest,
            digests={p.platform: p.digest for p in request.pushes},
        )
        return PublishedIndex(repository=f"{self.endpoint}/{repo}", tag=tag, digest=digest)

    @activity.defn(name="prune_manifests")
    async def prune_manifests(self, request: IndexRequest) -> list[str]:
        """Delete the manifests of platforms earlier builds of this server pushed but this one no longer builds."""
        current = {p.platform for p in request.pushes}
        keep = {p.digest for p in request.pushes}
        async with self.sessionmaker() as session:
            rows = (
                await session.execute(
                    select(
                        BuildArtifactPlatform.id, BuildArtifactPlatform.platform, BuildArtifactPlatform.manifest_digest
                    )
                    .join(BuildArtifactRun, BuildArtifactRun.id == BuildArtifactPlatform.run_id)
                    .where(
                        BuildArtifactRun.server_id == uuid.UUID(request.server_id),
                        BuildArtifactPlatform.manifest_digest.is_not(None),
                        BuildArtifactPlatform.pruned_at.is_(None),
                    )
                )
            ).all()
        stale = [(row_id, platform, digest) for row_id, platform, digest in rows
                 if digest and platform not in current and digest not in keep]  # fmt: skip
        base = {"deployment_id": request.deployment_id, "registry_endpoint": self.endpoint}
        await self.events.emit(
            request.server_id, "manifest_prune_started", **base, pruned=sorted({p for _, p, _ in stale})
        )
        repo = await self._repository(request.server_id)
        pruned: list[str] = []
        failures: list[str] = []
        async with self.client() as client:
            for row_id, platform, digest in stale:
                try:
                    await client.delete_manifest(repo, digest)
                except (RegistryError, RegistryRejected) as exc:
                    failures.append(f"{platform} {digest[:19]}: {exc.message}")
                    continue
                pruned.append(platform)
                async with self.sessionmaker() as session, session.begin():
                    row = await session.get(BuildArtifactPlatform, row_id)
                    if row is not None:
                        row.pruned_at = func.now()
        if failures:
            await self.events.emit(
                request.server_id, "manifest_prune_failed", **base, pruned=pruned, error="; ".join(failures)[:1000]
            )
        else:
            await self.events.emit(request.server_id, "manifest_prune_succeeded", **base, pruned=pruned)
        return pruned

    @activity.defn(name="finish_push")
    async def finish_push(self, data: FinishPush) -> ArtifactImage:
        async with self.sessionmaker() as session, session.begin():
            run = await session.get(BuildArtifactRun, uuid.UUID(data.artifact_id), with_for_update=True)
            if run is None:
                raise ApplicationError("build artifact record is gone", type="gone", non_retryable=True)
            run.status = "pushed"
            run.registry_image = data.index.repository
            run.manifest_tag = data.index.tag
            run.manifest_digest = data.index.digest
            run.timings = {**run.timings, "push_seconds": {p.platform: p.seconds for p in data.pushes}}
            run.finished_at = func.now()
            run.error = None
            for push in data.pushes:
                row = await session.scalar(
                    select(BuildArtifactPlatform).where(
                        BuildArtifactPlatform.run_id == run.id, BuildArtifactPlatform.platform == push.platform
                    )
                )
                if row is not None:
                    row.manifest_digest = push.digest
                    row.push_seconds = push.seconds
            recipe = dict(run.recipe)
        return ArtifactImage(
            artifact_id=data.artifact_id,
            image_ref=f"{data.index.repository}@{data.index.digest}",
            digest=data.index.digest,
            port=int(recipe.get("port") or 8000),
            path=str(recipe.get("path") or "/mcp"),
        )

    def all(self) -> list[Any]:
        return [
            self.check_registry_credentials,
            self.tag_image,
            self.push_image,
            self.publish_index,
            self.prune_manifests,
            self.finish_push,
        ]
