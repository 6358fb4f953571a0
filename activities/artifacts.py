"""Activities that record what a build produced: the artifact run's final state, and the image a
reused artifact points at. Kept apart from the build itself, which talks to git and the engine."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.build_types import ArtifactImage, FailArtifact, FinishBuild
from builds import recipes
from core.models import BuildArtifactPlatform, BuildArtifactRun
from core.policy import DIGEST


def local_digest(image_id: str | None) -> str | None:
    """An engine's image id (`sha256:<hex>`, the digest of the image's config) or None for anything else."""
    return image_id if image_id and DIGEST.match(image_id) else None


class ArtifactActivities:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self.sessionmaker = sessionmaker

    @activity.defn(name="finish_build")
    async def finish_build(self, data: FinishBuild) -> ArtifactImage:
        """The artifact is built; without a registry the deployment runs the local image."""
        first = data.images[0]
        async with self.sessionmaker() as session, session.begin():
            run = await session.get(BuildArtifactRun, uuid.UUID(data.artifact_id), with_for_update=True)
            if run is None:
                raise ApplicationError("build artifact record is gone", type="gone", non_retryable=True)
            recipe = first.recipe or dict(run.recipe)
            run.recipe = recipe
            run.local_image = first.local_image
            run.timings = {**run.timings, "build_seconds": {i.platform: round(i.seconds, 3) for i in data.images}}
            if run.status == "building":
                run.status = "built"
            return ArtifactImage(
                artifact_id=data.artifact_id,
                image_ref=first.local_image,
                # The local image's id names its content exactly, as a registry digest would.
                digest=local_digest(first.image_id) if len(data.images) == 1 else None,
                port=int(recipe.get("port") or recipes.DEFAULT_PORT),
                path=str(recipe.get("path") or "/mcp"),
            )

    @activity.defn(name="reused_artifact")
    async def reused_artifact(self, artifact_id: str) -> ArtifactImage:
        async with self.sessionmaker() as session:
            run = await session.get(BuildArtifactRun, uuid.UUID(artifact_id))
            if run is None:
                raise ApplicationError("build artifact record is gone", type="gone", non_retryable=True)
            platform = await session.scalar(
                select(BuildArtifactPlatform).where(BuildArtifactPlatform.run_id == run.id).limit(1)
            )
        recipe = dict(run.recipe)
        digest: str | None
        if run.registry_image and run.manifest_digest:
            ref, digest = f"{run.registry_image}@{run.manifest_digest}", run.manifest_digest
        else:
            ref = platform.local_image if platform and platform.local_image else run.local_image or ""
            digest = local_digest(platform.image_id) if platform else None
        return ArtifactImage(
            artifact_id=artifact_id,
            image_ref=ref,
            digest=digest,
            port=int(recipe.get("port") or recipes.DEFAULT_PORT),
            path=str(recipe.get("path") or "/mcp"),
        )

    @activity.defn(name="fail_artifact")
    async def fail_artifact(self, data: FailArtifact) -> None:
        async with self.sessionmaker() as session, session.begin():
            run = await session.get(BuildArtifactRun, uuid.UUID(data.artifact_id), with_for_update=True)
            if run is not None and run.status != "pushed":
                run.status = "failed"
                run.error = data.error[:2000]
                run.finished_at = func.now()

    def all(self) -> list[Any]:
        return [self.finish_build, self.reused_artifact, self.fail_artifact]
