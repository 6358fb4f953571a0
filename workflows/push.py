"""PushWorkflow: push a built artifact to the registry, publish its OCI image index, prune old platforms.

Started by DeployWorkflow as a child (`push-<deployment>`) when REGISTRY is set.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.artifacts import ArtifactActivities
    from activities.build_types import ArtifactImage, BuiltImage, FailArtifact, GitPlan
    from activities.registry import (
        FinishPush,
        IndexRequest,
        PlatformPush,
        PublishedIndex,
        PushTarget,
        RegistryActivities,
    )
    from workflows import policies
    from workflows.errors import failure_reason


@dataclass
class PushInput:
    plan: GitPlan
    images: list[BuiltImage] = field(default_factory=list)


def push_policy(plan: GitPlan) -> RetryPolicy:
    """REGISTRY_PUSH_RETRIES retries after the first attempt, with exponential backoff."""
    return RetryPolicy(
        initial_interval=timedelta(seconds=max(plan.push_backoff_seconds, 0.05)),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(seconds=max(plan.push_backoff_seconds, 0.05) * 16),
        maximum_attempts=plan.push_retries + 1,
        non_retryable_error_types=["push_failed", "registry_auth_failed", "registry_credentials", "gone"],
    )


@workflow.defn(name="PushWorkflow")
class PushWorkflow:
    @workflow.run
    async def run(self, data: PushInput) -> ArtifactImage:
        plan = data.plan
        target = PushTarget(deployment_id=plan.deployment_id, server_id=plan.server_id, artifact_id=plan.artifact_id)
        try:
            await workflow.execute_activity_method(
                RegistryActivities.check_registry_credentials,
                target,
                start_to_close_timeout=timedelta(minutes=3),
                retry_policy=policies.RUNTIME,
            )
            pushes: list[PlatformPush] = list(
                await asyncio.gather(*(self._push_one(plan, image) for image in data.images))
            )
            request = IndexRequest(
                deployment_id=plan.deployment_id, server_id=plan.server_id, artifact_id=plan.artifact_id, pushes=pushes
            )
            index: PublishedIndex = await workflow.execute_activity_method(
                RegistryActivities.publish_index,
                request,
                start_to_close_timeout=timedelta(seconds=plan.push_timeout_seconds * 2),
                retry_policy=push_policy(plan),
            )
            await workflow.execute_activity_method(
                RegistryActivities.prune_manifests,
                request,
                start_to_close_timeout=timedelta(minutes=5),
                retry_policy=policies.CLEANUP,
            )
        except ActivityError as err:
            await workflow.execute_activity_method(
                ArtifactActivities.fail_artifact,
                FailArtifact(artifact_id=plan.artifact_id, error=failure_reason(err)),
                start_to_close_timeout=policies.DB_TIMEOUT,
                retry_policy=policies.DATABASE,
            )
            raise
        return await workflow.execute_activity_method(
            RegistryActivities.finish_push,
            FinishPush(artifact_id=plan.artifact_id, index=index, pushes=pushes),
            start_to_close_timeout=policies.DB_TIMEOUT,
            retry_policy=policies.DATABASE,
        )

    async def _push_one(self, plan: GitPlan, image: BuiltImage) -> PlatformPush:
        target = PushTarget(
            deployment_id=plan.deployment_id,
            server_id=plan.server_id,
            artifact_id=plan.artifact_id,
            platform=image.platform,
            image_id=image.image_id,
            retry_limit=plan.push_retries,
        )
        await workflow.execute_activity_method(
            RegistryActivities.tag_image,
            target,
            start_to_close_timeout=timedelta(minutes=2),
            retry_policy=policies.RUNTIME,
        )
        return await workflow.execute_activity_method(
            RegistryActivities.push_image,
            target,
            start_to_close_timeout=timedelta(seconds=max(600.0, plan.push_timeout_seconds * 10)),
            heartbeat_timeout=policies.HEARTBEAT,
            retry_policy=push_policy(plan),
        )
