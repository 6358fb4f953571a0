"""DeployWorkflow: its input, outcome and `progress` query."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from temporalio import workflow

if TYPE_CHECKING:
    from core.settings import Settings


@dataclass
class DeployInput:
    deployment_id: str
    server_id: str
    health_timeout_seconds: float = 90.0
    install_timeout_seconds: float = 600.0
    host_wait_seconds: float = 120.0
    # Supervision of the revision once it runs (0: none, as in runs from before).
    supervise_interval_seconds: float = 0.0
    supervise_failure_threshold: int = 3
    supervise_window_seconds: float = 300.0
    supervise_backoff_max_seconds: float = 60.0


def deploy_input(settings: Settings, deployment_id: str = "", server_id: str = "") -> DeployInput:
    """A deployment's workflow input, with the installation's timeouts and supervision settings."""
    return DeployInput(
        deployment_id=deployment_id,
        server_id=server_id,
        health_timeout_seconds=settings.health_check_timeout_seconds,
        install_timeout_seconds=settings.package_install_timeout_seconds,
        host_wait_seconds=settings.worker_host_wait_seconds,
        supervise_interval_seconds=settings.supervisor_interval_seconds,
        supervise_failure_threshold=settings.supervisor_failure_threshold,
        supervise_window_seconds=settings.supervisor_window_seconds,
        supervise_backoff_max_seconds=settings.supervisor_backoff_max_seconds,
    )


@dataclass
class DeployOutcome:
    deployment_id: str
    status: str  # running | failed | superseded | cancelled | blocked
    error: str | None = None
    upstream_url: str | None = None
    notes: list[str] = field(default_factory=list)  # the policy decision's, when one was asked


@dataclass
class StepState:
    step: str
    status: str
    message: str | None = None


@dataclass
class DeployProgress:
    step: str | None
    status: str
    steps: list[StepState] = field(default_factory=list)
    error: str | None = None


@workflow.defn(name="DeployWorkflow")
class DeployWorkflowContract:
    """workflows.deploy.DeployWorkflow, as callers see it. Business id `deploy-<server>-<seq>`."""

    @workflow.run
    async def run(self, data: DeployInput) -> DeployOutcome:
        raise NotImplementedError("a contract: the worker runs DeployWorkflow")

    @workflow.query(name="progress")
    def progress(self) -> DeployProgress:
        raise NotImplementedError
