"""EvaluationRunWorkflow: its input and `progress` (which is also its result)."""

from __future__ import annotations

from dataclasses import dataclass

from temporalio import workflow


@dataclass
class EvaluationInput:
    run_id: str
    server_id: str
    # The longest the whole set of tests may take (each test has its own timeout inside it).
    run_timeout_seconds: float = 3600.0
    health_timeout_seconds: float = 90.0
    install_timeout_seconds: float = 900.0
    host_wait_seconds: float = 60.0


@dataclass
class EvaluationProgress:
    run_id: str
    step: str  # target | launch | health_check | tests | release | finished
    candidate: bool = False
    status: str = "running"
    error: str = ""


@workflow.defn(name="EvaluationRunWorkflow")
class EvaluationRunWorkflowContract:
    """workflows.evaluation.EvaluationRunWorkflow, as callers see it. Business id `eval-<run>`."""

    @workflow.run
    async def run(self, data: EvaluationInput) -> EvaluationProgress:
        raise NotImplementedError("a contract: the worker runs EvaluationRunWorkflow")

    @workflow.query(name="progress")
    def progress(self) -> EvaluationProgress:
        raise NotImplementedError
