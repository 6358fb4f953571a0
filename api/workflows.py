"""Starting platform workflows from the API: business ids, conflict policies, search attributes."""

from __future__ import annotations

import uuid

from temporalio.client import Client
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from core import temporal
from core.errors import Unavailable
from core.evalruns import evaluation_workflow_id
from core.settings import Settings
from workflows.contracts.deploy import deploy_input
from workflows.contracts.evaluation import EvaluationInput
from workflows.contracts.promotion import PromotionInput
from workflows.contracts.server_lifecycle import ServerInput

SERVER_WORKFLOW_PREFIX = {"StopServerWorkflow": "stop", "DeleteServerWorkflow": "delete"}


async def start_deploy(
    client: Client, settings: Settings, *, server_id: uuid.UUID, deployment_id: uuid.UUID, workflow_id: str
) -> None:
    """Start the deployment's workflow; a retried start of the same deployment joins the existing run."""
    try:
        await client.start_workflow(
            "DeployWorkflow",
            deploy_input(settings, str(deployment_id), str(server_id)),
            id=workflow_id,
            task_queue=settings.temporal_task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            # A deployment runs once: a closed run of its id is never followed by another.
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(temporal.SERVER_ID, str(server_id)),
                    SearchAttributePair(temporal.DEPLOYMENT_ID, str(deployment_id)),
                    SearchAttributePair(temporal.KIND, "deploy"),
                ]
            ),
        )
    except WorkflowAlreadyStartedError:
        pass  # it ran already and closed: that run is this deployment's
    except RPCError as exc:
        raise Unavailable(f"could not start the deployment workflow: {exc.message}") from None


async def start_server_workflow(client: Client, settings: Settings, workflow: str, server_id: uuid.UUID) -> str:
    """Start a stop/delete workflow. While one runs, asking again returns the same run."""
    workflow_id = f"{SERVER_WORKFLOW_PREFIX[workflow]}-{server_id}"
    try:
        await client.start_workflow(
            workflow,
            ServerInput(server_id=str(server_id), host_wait_seconds=settings.worker_host_wait_seconds),
            id=workflow_id,
            task_queue=settings.temporal_task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(temporal.SERVER_ID, str(server_id)),
                    SearchAttributePair(temporal.KIND, SERVER_WORKFLOW_PREFIX[workflow]),
                ]
            ),
        )
    except RPCError as exc:
        raise Unavailable(f"could not start {workflow}: {exc.message}") from None
    return workflow_id


async def cancel_deploy(client: Client, workflow_id: str) -> bool:
    """Ask a deployment's workflow to cancel; False when no such workflow exists (it never started)."""
    return await cancel_workflow(client, workflow_id, "the deployment workflow")


async def start_evaluation(client: Client, settings: Settings, *, server_id: uuid.UUID, run_id: uuid.UUID) -> None:
    """Start an evaluation run's workflow; starting it again joins the run already there."""
    try:
        await client.start_workflow(
            "EvaluationRunWorkflow",
            EvaluationInput(
                run_id=str(run_id),
                server_id=str(server_id),
                health_timeout_seconds=settings.health_check_timeout_seconds,
                install_timeout_seconds=settings.package_install_timeout_seconds,
                host_wait_seconds=settings.worker_host_wait_seconds,
            ),
            id=evaluation_workflow_id(run_id),
            task_queue=settings.temporal_task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(temporal.SERVER_ID, str(server_id)),
                    SearchAttributePair(temporal.KIND, "evaluation"),
                ]
            ),
        )
    except WorkflowAlreadyStartedError:
        pass
    except RPCError as exc:
        raise Unavailable(f"could not start the evaluation workflow: {exc.message}") from None


async def cancel_workflow(client: Client, workflow_id: str, what: str = "the workflow") -> bool:
    """Ask a workflow to cancel; False when no such workflow exists."""
    try:
        await client.get_workflow_handle(workflow_id).cancel()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return False
        raise Unavailable(f"could not cancel {what}: {exc.message}") from None
    return True


async def start_promotion(
    client: Client, settings: Settings, *, promotion_id: uuid.UUID, workflow_id: str, stage: str, subject: str
) -> None:
    """Start a promotion's workflow; starting it again joins the one already there."""
    try:
        await client.start_workflow(
            "PromotionWorkflow",
            PromotionInput(promotion_id=str(promotion_id), deploy=deploy_input(settings)),
            id=workflow_id,
            task_queue=settings.temporal_task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(temporal.KIND, "promotion"),
                    SearchAttributePair(temporal.STAGE, stage),
                    SearchAttributePair(temporal.DIGEST, subject),
                ]
            ),
        )
    except WorkflowAlreadyStartedError:
        pass
    except RPCError as exc:
        raise Unavailable(f"could not start the promotion workflow: {exc.message}") from None
