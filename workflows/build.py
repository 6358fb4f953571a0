"""BuildWorkflow: one git revision -> one image per target platform, recorded as a build artifact.

Started by DeployWorkflow as a child (`build-<deployment>`). An artifact of the same revision,
platforms and registry that already exists is reused instead of rebuilt.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.artifacts import ArtifactActivities
    from activities.build import BuildActivities
    from activities.build_types import (
        ArtifactImage,
        BuildRequest,
        BuiltImage,
        FailArtifact,
        FinishBuild,
        GitPlan,
    )
    from workflows import policies
    from workflows.errors import failure_reason


@dataclass
class BuildInput:
    deployment_id: str


@dataclass
class BuildOutcome:
    plan: GitPlan
    image: ArtifactImage | None = None  # set when the artifact was reused, or when there is no registry
    images: list[BuiltImage] = field(default_factory=list)


@workflow.defn(name="BuildWorkflow")
class BuildWorkflow:
    @workflow.run
    async def run(self, data: BuildInput) -> BuildOutcome:
        plan: GitPlan = await workflow.execute_activity_method(
            BuildActivities.resolve_git_source,
            data.deployment_id,
            start_to_close_timeout=timedelta(minutes=5),
            retry_policy=policies.GIT,
        )
        if plan.reused:
            image = await workflow.execute_activity_method(
                ArtifactActivities.reused_artifact,
                plan.artifact_id,
                start_to_close_timeout=policies.DB_TIMEOUT,
                retry_policy=policies.DATABASE,
            )
            return BuildOutcome(plan=plan, image=image)

        try:
            images = await self._build_all(plan)
        except ActivityError as err:
            await workflow.execute_activity_method(
                ArtifactActivities.fail_artifact,
                FailArtifact(artifact_id=plan.artifact_id, error=failure_reason(err)),
                start_to_close_timeout=policies.DB_TIMEOUT,
                retry_policy=policies.DATABASE,
            )
            raise
        image = await workflow.execute_activity_method(
            ArtifactActivities.finish_build,
            FinishBuild(deployment_id=data.deployment_id, artifact_id=plan.artifact_id, images=images),
            start_to_close_timeout=policies.DB_TIMEOUT,
            retry_policy=policies.DATABASE,
        )
        return BuildOutcome(plan=plan, image=None if plan.registry else image, images=images)

    async def _build_all(self, plan: GitPlan) -> list[BuiltImage]:
        """At most `parallelism` platform builds at once, results in platform order."""
        results: list[BuiltImage] = []
        for start in range(0, len(plan.platforms), plan.parallelism):
            batch = plan.platforms[start : start + plan.parallelism]
            results += await asyncio.gather(
                *(
                    workflow.execute_activity_method(
                        BuildActivities.build_image,
                        BuildRequest(deployment_id=plan.deployment_id, artifact_id=plan.artifact_id, platform=p),
                        start_to_close_timeout=timedelta(seconds=plan.build_timeout_seconds + 600),
                        heartbeat_timeout=policies.HEARTBEAT,
                        retry_policy=policies.BUILD,
                    )
                    for p in batch
                )
            )
        return results
