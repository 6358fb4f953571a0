"""Starting the platform's workflows: one function per workflow, each with its business id, its id reuse
and conflict policies and its search attributes. The API and the worker start workflows only here."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
)
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

from core import temporal
from core.errors import Unavailable
from core.settings import Settings
from records.evaluation_runs import evaluation_workflow_id
from workflows.contracts.deploy import DeployWorkflowContract, deploy_input
from workflows.contracts.evaluation import EvaluationInput, EvaluationRunWorkflowContract
from workflows.contracts.governance import GovernanceInput, GovernanceRunWorkflowContract
from workflows.contracts.promotion import PromotionInput, PromotionWorkflowContract
from workflows.contracts.prune_history import PruneHistoryWorkflowContract, PruneRun
from workflows.contracts.reconcile import ReconcileRun, ReconcileWorkflowContract
from workflows.contracts.remediation import RemediationInput, RemediationWorkflowContract
from workflows.contracts.server_lifecycle import (
    DeleteServerWorkflowContract,
    ServerInput,
    StopServerWorkflowContract,
)


async def start_deploy(
    client: Client, settings: Settings, *, server_id: uuid.UUID, deployment_id: uuid.UUID, workflow_id: str
) -> None:
    """Start the deployment's workflow; a retried start of the same deployment joins the existing run."""
    try:
        await client.start_workflow(
            DeployWorkflowContract.run,
            deploy_input(settings, str(deployment_id), str(server_id)),
            id=workflow_id,
            task_queue=settings.temporal_task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            # A deployment runs once: a closed run of its id is never followed by another.
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            search_attributes=temporal.search_attributes(
                "deploy", server_id=str(server_id), deployment_id=str(deployment_id)
            ),
        )
    except WorkflowAlreadyStartedError:
        pass  # it ran already and closed: that run is this deployment's
    except RPCError as exc:
        raise Unavailable(f"could not start the deployment workflow: {exc.message}") from None


async def start_stop_server(client: Client, settings: Settings, server_id: uuid.UUID) -> str:
    """Start the server's StopServerWorkflow (`stop-<server>`). While one runs, asking again returns it."""
    workflow_id = f"stop-{server_id}"
    try:
        await client.start_workflow(
            StopServerWorkflowContract.run,
            ServerInput(server_id=str(server_id), host_wait_seconds=settings.worker_host_wait_seconds),
            id=workflow_id,
            task_queue=settings.temporal_task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            search_attributes=temporal.search_attributes("stop", server_id=str(server_id)),
        )
    except RPCError as exc:
        raise Unavailable(f"could not start StopServerWorkflow: {exc.message}") from None
    return workflow_id


async def start_delete_server(client: Client, settings: Settings, server_id: uuid.UUID) -> str:
    """Start the server's DeleteServerWorkflow (`delete-<server>`). While one runs, asking again returns it."""
    workflow_id = f"delete-{server_id}"
    try:
        await client.start_workflow(
            DeleteServerWorkflowContract.run,
            ServerInput(server_id=str(server_id), host_wait_seconds=settings.worker_host_wait_seconds),
            id=workflow_id,
            task_queue=settings.temporal_task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            search_attributes=temporal.search_attributes("delete", server_id=str(server_id)),
        )
    except RPCError as exc:
        raise Unavailable(f"could not start DeleteServerWorkflow: {exc.message}") from None
    return workflow_id


async def start_evaluation(client: Client, settings: Settings, *, server_id: uuid.UUID, run_id: uuid.UUID) -> None:
    """Start an evaluation run's workflow; starting it again joins the run already there."""
    try:
        await client.start_workflow(
            EvaluationRunWorkflowContract.run,
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
            search_attributes=temporal.search_attributes("evaluation", server_id=str(server_id)),
        )
    except WorkflowAlreadyStartedError:
        pass
    except RPCError as exc:
        raise Unavailable(f"could not start the evaluation workflow: {exc.message}") from None


async def start_promotion(
    client: Client, settings: Settings, *, promotion_id: uuid.UUID, workflow_id: str, stage: str, subject: str
) -> None:
    """Start a promotion's workflow; starting it again joins the one already there."""
    try:
        await client.start_workflow(
            PromotionWorkflowContract.run,
            PromotionInput(promotion_id=str(promotion_id), deploy=deploy_input(settings)),
            id=workflow_id,
            task_queue=settings.temporal_task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            search_attributes=temporal.search_attributes("promotion", stage=stage, digest=subject),
        )
    except WorkflowAlreadyStartedError:
        pass
    except RPCError as exc:
        raise Unavailable(f"could not start the promotion workflow: {exc.message}") from None


async def start_governance(
    client: Client,
    settings: Settings,
    *,
    run_id: uuid.UUID,
    server_id: uuid.UUID,
    requester_id: uuid.UUID,
    steps: list[dict[str, Any]],
    workflow_id: str,
) -> None:
    """Start a governance run's workflow. An RPCError is the caller's: it closes the run's record first."""
    await client.start_workflow(
        GovernanceRunWorkflowContract.run,
        GovernanceInput(run_id=str(run_id), requester_id=str(requester_id), steps=steps),
        id=workflow_id,
        task_queue=settings.temporal_task_queue,
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        search_attributes=temporal.search_attributes("governance", server_id=str(server_id)),
    )


async def start_remediation(
    client: Client,
    settings: Settings,
    *,
    run_id: str,
    server_id: str,
    requester_id: str,
    definition: dict[str, Any],
    workflow_id: str,
) -> None:
    """Start a remediation run's workflow (from the API, or a worker when a trigger fires); one already
    started is left as it is. An RPCError is the caller's."""
    try:
        await client.start_workflow(
            RemediationWorkflowContract.run,
            RemediationInput(run_id, server_id, requester_id, definition, deploy=deploy_input(settings)),
            id=workflow_id,
            task_queue=settings.temporal_task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            search_attributes=temporal.search_attributes("remediation", server_id=server_id),
        )
    except WorkflowAlreadyStartedError:
        pass


def reconcile_schedule_id(settings: Settings) -> str:
    return f"reconcile-{settings.host_task_queue}"


def interval_schedule(
    run: Callable[..., Awaitable[Any]], arg: Any, *, workflow_id: str, every_seconds: float, settings: Settings
) -> Schedule:
    """A workflow on the shared task queue every `every_seconds`; a run still going skips the next."""
    return Schedule(
        action=ScheduleActionStartWorkflow(run, arg, id=workflow_id, task_queue=settings.temporal_task_queue),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=timedelta(seconds=every_seconds))]),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )


def reconcile_schedule(settings: Settings) -> Schedule:
    """This host's reconciler: a ReconcileWorkflow every RECONCILE_INTERVAL_SECONDS."""
    return interval_schedule(
        ReconcileWorkflowContract.run,
        ReconcileRun(host_queue=settings.host_task_queue, grace_seconds=settings.reconcile_grace_seconds),
        workflow_id=reconcile_schedule_id(settings),
        every_seconds=settings.reconcile_interval_seconds,
        settings=settings,
    )


# One for the installation, whichever worker keeps it: the history it prunes is global.
PRUNE_SCHEDULE_ID = "prune-history"


def prune_schedule(settings: Settings) -> Schedule:
    """The history prune: a PruneHistoryWorkflow every PRUNE_HISTORY_INTERVAL_SECONDS."""
    return interval_schedule(
        PruneHistoryWorkflowContract.run,
        PruneRun(
            log_retention_days=settings.server_log_retention_days,
            event_retention_days=settings.server_event_retention_days,
        ),
        workflow_id=PRUNE_SCHEDULE_ID,
        every_seconds=settings.prune_history_interval_seconds,
        settings=settings,
    )
