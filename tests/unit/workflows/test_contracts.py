"""The contracts in workflows/contracts against the real workflows, what starting through them sends,
and what the API loads."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from temporalio import workflow
from temporalio.client import WorkflowExecutionStatus
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from api.workflows import has_ended
from core import temporal
from core.errors import Unavailable
from core.settings import Settings
from workflows.contracts import starters
from workflows.contracts.deploy import DeployInput, DeployWorkflowContract
from workflows.contracts.evaluation import EvaluationRunWorkflowContract
from workflows.contracts.governance import GovernanceRunWorkflowContract
from workflows.contracts.promotion import PromotionWorkflowContract
from workflows.contracts.prune_history import PruneHistoryWorkflowContract
from workflows.contracts.reconcile import ReconcileWorkflowContract
from workflows.contracts.remediation import RemediationWorkflowContract
from workflows.contracts.server_lifecycle import DeleteServerWorkflowContract, StopServerWorkflowContract
from workflows.contracts.supervisor import SupervisorWorkflowContract
from workflows.deploy import DeployWorkflow
from workflows.evaluation import EvaluationRunWorkflow
from workflows.governance import GovernanceRunWorkflow
from workflows.promotion import PromotionWorkflow
from workflows.prune_history import PruneHistoryWorkflow
from workflows.reconcile import ReconcileWorkflow
from workflows.remediation import RemediationWorkflow
from workflows.server_lifecycle import DeleteServerWorkflow, StopServerWorkflow
from workflows.supervisor import SupervisorWorkflow

ROOT = Path(__file__).resolve().parents[3]

CONTRACTS: list[tuple[type, type]] = [
    (DeployWorkflowContract, DeployWorkflow),
    (EvaluationRunWorkflowContract, EvaluationRunWorkflow),
    (GovernanceRunWorkflowContract, GovernanceRunWorkflow),
    (PromotionWorkflowContract, PromotionWorkflow),
    (RemediationWorkflowContract, RemediationWorkflow),
    (StopServerWorkflowContract, StopServerWorkflow),
    (DeleteServerWorkflowContract, DeleteServerWorkflow),
    (ReconcileWorkflowContract, ReconcileWorkflow),
    (PruneHistoryWorkflowContract, PruneHistoryWorkflow),
    (SupervisorWorkflowContract, SupervisorWorkflow),
]


def _definition(cls: type) -> workflow._Definition:
    return workflow._Definition.must_from_class(cls)


@pytest.mark.parametrize(("contract", "real"), CONTRACTS, ids=[c.__name__ for c, _ in CONTRACTS])
def test_a_contract_names_its_workflow_and_what_it_answers(contract: type, real: type) -> None:
    stub, defn = _definition(contract), _definition(real)
    assert stub.name == defn.name
    # Same input and result types (the supervisor's input stays with its workflow: the contract says Any).
    if stub.arg_types != [Any]:
        assert stub.arg_types == defn.arg_types
    assert stub.ret_type == defn.ret_type
    for name, query in stub.queries.items():
        assert name in defn.queries, f"{defn.name} has no query {name!r}"
        assert (query.arg_types, query.ret_type) == (defn.queries[name].arg_types, defn.queries[name].ret_type)
    for name, update in stub.updates.items():
        assert name in defn.updates, f"{defn.name} has no update {name!r}"
        assert (update.arg_types, update.ret_type) == (defn.updates[name].arg_types, defn.updates[name].ret_type)
    for name, signal in stub.signals.items():
        assert name in defn.signals, f"{defn.name} has no signal {name!r}"
        assert signal.arg_types == defn.signals[name].arg_types


def test_the_contracts_declare_every_query_update_and_signal() -> None:
    for contract, real in CONTRACTS:
        stub, defn = _definition(contract), _definition(real)
        assert set(stub.queries) == set(defn.queries), defn.name
        assert set(stub.updates) == set(defn.updates), defn.name
        assert set(stub.signals) == set(defn.signals), defn.name


def _loaded(statement: str) -> list[str]:
    """The platform modules (outside core/ and records/) loaded by running `statement` in a fresh process."""
    probe = (
        f"{statement}; import sys; "
        "print(' '.join(sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('activities', 'builds', 'runtimes', 'workflows'))))"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_the_contracts_load_no_workflow_activity_build_or_runtime_module() -> None:
    modules = _loaded(
        "import workflows.contracts.deploy, workflows.contracts.evaluation, workflows.contracts.governance, "
        "workflows.contracts.promotion, workflows.contracts.prune_history, workflows.contracts.reconcile, "
        "workflows.contracts.remediation, "
        "workflows.contracts.server_lifecycle, workflows.contracts.supervisor, workflows.contracts.starters"
    )
    assert all(m in ("workflows", "workflows.contracts") or m.startswith("workflows.contracts.") for m in modules), (
        modules
    )


def test_the_api_loads_no_activity_build_or_workflow_module() -> None:
    modules = _loaded("import api.app")
    assert not [m for m in modules if m.split(".")[0] in ("activities", "builds")], modules
    assert not [m for m in modules if m.startswith("workflows.") and not m.startswith("workflows.contracts")], modules


def test_the_api_s_runtimes_load_no_build_module(tmp_path: Path) -> None:
    """The API makes its executors (for log tails and live status) as its lifespan does; the docker runtime's
    package images are built by the worker's builder, so nothing of builds/ comes with them."""
    modules = _loaded(
        "import api.app; from core.settings import Settings; from runtimes import build_executors; "
        "build_executors(Settings(_env_file=None, jwt_secret='j' * 40, secrets_key='s' * 40, "
        f"state_dir={str(tmp_path)!r}, docker_host='unix:///nowhere.sock'))"
    )
    assert "runtimes.docker" in modules
    assert not [m for m in modules if m.split(".")[0] == "builds"], modules


PROBE = """
from temporalio import workflow

from workflows.contracts import deploy, evaluation, governance, promotion, reconcile, remediation
from workflows.contracts import prune_history, server_lifecycle, supervisor


@workflow.defn(name="ContractsProbe")
class ContractsProbe:
    @workflow.run
    async def run(self, data: deploy.DeployInput) -> str:
        return data.server_id
"""


async def test_the_contracts_import_in_the_workflow_sandbox_without_passing_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

    (tmp_path / "contracts_probe.py").write_text(PROBE)
    monkeypatch.syspath_prepend(str(tmp_path))
    probe = __import__("contracts_probe")
    # The sandbox imports the probe's module afresh, the contracts with it, under its restrictions.
    SandboxedWorkflowRunner().prepare_workflow(_definition(probe.ContractsProbe))


class FakeClient:
    def __init__(self, error: Exception | None = None) -> None:
        self.started: list[tuple[str, Any, dict[str, Any]]] = []
        self.error = error

    async def start_workflow(self, run: Any, arg: Any, **options: Any) -> None:
        self.started.append((workflow._Definition.must_from_run_fn(run).name or "", arg, options))
        if self.error is not None:
            raise self.error


def _settings() -> Settings:
    return Settings.model_validate({"jwt_secret": "j" * 40, "secrets_key": "s" * 40})


def _attributes(options: dict[str, Any]) -> dict[str, str]:
    return {pair.key.name: pair.value for pair in options["search_attributes"]}


async def test_starting_a_deployment_sends_its_id_policies_and_attributes() -> None:
    client, settings = FakeClient(), _settings()
    server_id, deployment_id = uuid.uuid4(), uuid.uuid4()
    await starters.start_deploy(
        client,  # type: ignore[arg-type]
        settings,
        server_id=server_id,
        deployment_id=deployment_id,
        workflow_id="deploy-x-1",
    )
    [(name, arg, options)] = client.started
    assert name == "DeployWorkflow"
    assert isinstance(arg, DeployInput) and (arg.deployment_id, arg.server_id) == (str(deployment_id), str(server_id))
    assert options["id"] == "deploy-x-1" and options["task_queue"] == settings.temporal_task_queue
    assert options["id_conflict_policy"] == WorkflowIDConflictPolicy.USE_EXISTING
    assert options["id_reuse_policy"] == WorkflowIDReusePolicy.REJECT_DUPLICATE
    assert _attributes(options) == {
        "McpServerId": str(server_id),
        "McpDeploymentId": str(deployment_id),
        "McpKind": "deploy",
    }


async def test_each_starter_files_its_workflow_under_its_kind() -> None:
    client, settings = FakeClient(), _settings()
    server_id, run_id = uuid.uuid4(), uuid.uuid4()
    assert await starters.start_stop_server(client, settings, server_id) == f"stop-{server_id}"  # type: ignore[arg-type]
    assert await starters.start_delete_server(client, settings, server_id) == f"delete-{server_id}"  # type: ignore[arg-type]
    await starters.start_evaluation(client, settings, server_id=server_id, run_id=run_id)  # type: ignore[arg-type]
    await starters.start_promotion(
        client,  # type: ignore[arg-type]
        settings,
        promotion_id=run_id,
        workflow_id=f"promotion-{run_id}",
        stage="prod",
        subject="sha256:abc",
    )
    await starters.start_governance(
        client,  # type: ignore[arg-type]
        settings,
        run_id=run_id,
        server_id=server_id,
        requester_id=run_id,
        steps=[],
        workflow_id=f"governance-{run_id}",
    )
    await starters.start_remediation(
        client,  # type: ignore[arg-type]
        settings,
        run_id=str(run_id),
        server_id=str(server_id),
        requester_id="u",
        definition={},
        workflow_id=f"remediation-{run_id}",
    )
    started = {name: (options["id"], _attributes(options), options) for name, _, options in client.started}
    server = {"McpServerId": str(server_id)}
    assert started["StopServerWorkflow"][:2] == (f"stop-{server_id}", {**server, "McpKind": "stop"})
    assert started["DeleteServerWorkflow"][:2] == (f"delete-{server_id}", {**server, "McpKind": "delete"})
    assert started["EvaluationRunWorkflow"][:2] == (f"eval-{run_id}", {**server, "McpKind": "evaluation"})
    assert started["PromotionWorkflow"][:2] == (
        f"promotion-{run_id}",
        {"McpKind": "promotion", "McpStage": "prod", "McpDigest": "sha256:abc"},
    )
    assert started["GovernanceRunWorkflow"][:2] == (f"governance-{run_id}", {**server, "McpKind": "governance"})
    assert started["RemediationWorkflow"][:2] == (f"remediation-{run_id}", {**server, "McpKind": "remediation"})
    # Stop and delete join a run under way; governance and remediation runs never run twice.
    assert "id_reuse_policy" not in started["StopServerWorkflow"][2]
    assert started["StopServerWorkflow"][2]["id_conflict_policy"] == WorkflowIDConflictPolicy.USE_EXISTING
    assert "id_conflict_policy" not in started["GovernanceRunWorkflow"][2]
    assert started["RemediationWorkflow"][2]["id_reuse_policy"] == WorkflowIDReusePolicy.REJECT_DUPLICATE


async def test_a_start_temporal_refuses_is_unavailable_and_one_already_made_is_joined() -> None:
    settings = _settings()
    down = FakeClient(RPCError("connection refused", RPCStatusCode.UNAVAILABLE, b""))
    with pytest.raises(Unavailable, match="could not start StopServerWorkflow: connection refused"):
        await starters.start_stop_server(down, settings, uuid.uuid4())  # type: ignore[arg-type]
    done = FakeClient(WorkflowAlreadyStartedError("eval-x", "EvaluationRunWorkflow"))
    await starters.start_evaluation(done, settings, server_id=uuid.uuid4(), run_id=uuid.uuid4())  # type: ignore[arg-type]
    with pytest.raises(RPCError):
        await starters.start_remediation(
            down,  # type: ignore[arg-type]
            settings,
            run_id="r",
            server_id="s",
            requester_id="u",
            definition={},
            workflow_id="remediation-r",
        )


def test_search_attributes_leave_out_what_is_not_given() -> None:
    attributes = temporal.search_attributes("promotion", stage="prod", digest="sha256:abc")
    assert {pair.key.name: pair.value for pair in attributes} == {
        "McpKind": "promotion",
        "McpStage": "prod",
        "McpDigest": "sha256:abc",
    }
    # Given, even empty: as the workflows always did.
    assert temporal.search_attributes("deploy", server_id="").get(temporal.SERVER_ID) == ""


class FakeHandle:
    def __init__(self, status: WorkflowExecutionStatus | None = None, error: RPCError | None = None) -> None:
        self.status, self.error = status, error

    async def describe(self) -> Any:
        if self.error is not None:
            raise self.error
        return type("Description", (), {"status": self.status})()


async def test_an_ended_workflow_is_told_from_one_not_started() -> None:
    assert await has_ended(FakeHandle(WorkflowExecutionStatus.COMPLETED))  # type: ignore[arg-type]
    assert not await has_ended(FakeHandle(WorkflowExecutionStatus.RUNNING))  # type: ignore[arg-type]
    missing = RPCError("workflow execution not found", RPCStatusCode.NOT_FOUND, b"")
    assert not await has_ended(FakeHandle(error=missing))  # type: ignore[arg-type]
    down = RPCError("connection refused", RPCStatusCode.UNAVAILABLE, b"")
    with pytest.raises(Unavailable):
        await has_ended(FakeHandle(error=down), "the governance workflow")  # type: ignore[arg-type]
