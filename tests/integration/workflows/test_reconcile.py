"""The reconciler sets right what a workflow could not record and removes instances nobody owns.

A Postgres outage longer than the record activities' retries fails a deployment's workflow with its
record still `deploying` and its instance running. The test makes that state on the real stack by
terminating the workflow mid-health-check (what the failed workflow leaves behind is the same), and
adds a `pending` record whose workflow never started; one reconciler pass sets both right."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import create_async_engine
from temporalio.common import SearchAttributePair, TypedSearchAttributes

from core import temporal as temporal_names
from core.models import Deployment
from runtimes.process import ProcessExecutor
from tests.support.mcp_client import call_tool
from tests.support.stack import Stack, deploy, wait_deployment
from worker.main import keep_reconcile_schedule
from workflows.contracts.governance import GovernanceInput
from workflows.contracts.reconcile import ReconcileOutcome, ReconcileRun

TIME = {"type": "package", "package": "mcp-server-time", "args": ["--local-timezone", "UTC"]}


async def running_instances(executor: ProcessExecutor, server_id: str) -> list[str]:
    return [
        i.deployment_id for i in await executor.instances(server_id) if (await executor.status(i)).state == "running"
    ]


async def reconcile(stack: Stack) -> ReconcileOutcome:
    client = await stack.state.temporal()
    result: ReconcileOutcome = await client.execute_workflow(
        "ReconcileWorkflow",
        ReconcileRun(host_queue=stack.settings.host_task_queue, grace_seconds=0),
        id=f"reconcile-test-{uuid.uuid4().hex[:8]}",
        task_queue=stack.settings.temporal_task_queue,
        result_type=ReconcileOutcome,
    )
    return result


async def test_the_reconciler_settles_records_whose_workflow_ended_and_removes_their_instances(stack: Stack) -> None:
    executor = ProcessExecutor(stack.settings.state_dir / "process")
    temporal = await stack.state.temporal()
    client, _ = await stack.user()
    async with client:
        server = (await client.post("/api/servers", json={"name": f"rc-{uuid.uuid4().hex[:6]}", "source": TIME})).json()
        sid = server["id"]
        first = await deploy(client, sid)
        assert first["status"] == "running", first

        # The second revision's workflow dies once its instance runs (as after an outage of the database).
        second = (await client.post(f"/api/servers/{sid}/deployments")).json()
        deadline = time.monotonic() + 120
        while second["deployment_id"] not in await running_instances(executor, sid):
            assert time.monotonic() < deadline, "the second revision never launched"
            await asyncio.sleep(0.05)
        await temporal.get_workflow_handle(second["workflow_id"]).terminate("the database was away too long")
        # What it leaves: a record that says deploying for ever, and an instance that nothing owns.
        stuck = (await client.get(f"/api/deployments/{second['deployment_id']}")).json()
        assert stuck["status"] == "deploying"
        assert second["deployment_id"] in await running_instances(executor, sid)

        # And a record whose workflow never started at all.
        engine = create_async_engine(stack.settings.database_url)
        vanished = uuid.uuid4()
        async with engine.begin() as conn:
            spec = (
                await conn.execute(select(Deployment.spec).where(Deployment.id == uuid.UUID(first["id"])))
            ).scalar_one()
            await conn.execute(
                insert(Deployment).values(
                    id=vanished,
                    server_id=uuid.UUID(sid),
                    seq=1000,
                    idempotency_key=f"test:{vanished}",
                    workflow_id=f"deploy-{sid}-never-started",
                    status="pending",
                    runtime="process",
                    spec=spec,
                    created_at=datetime.now(UTC) - timedelta(minutes=10),
                )
            )
        await engine.dispose()

        # A governance run of the server may last for days and launches nothing: it must not hold the pass up.
        governance = await temporal.start_workflow(
            "GovernanceRunWorkflow",
            GovernanceInput(
                run_id=str(uuid.uuid4()), requester_id="", steps=[{"kind": "wait", "name": "soak", "seconds": 86400}]
            ),
            id=f"governance-test-{uuid.uuid4()}",
            task_queue=stack.settings.temporal_task_queue,
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(temporal_names.SERVER_ID, sid),
                    SearchAttributePair(temporal_names.KIND, "governance"),
                ]
            ),
        )

        # The terminated run must have left the visibility store's running list, or the pass waits for it.
        query = (
            f"{temporal_names.SERVER_ID.name} = '{sid}' AND ExecutionStatus = 'Running' "
            "AND WorkflowType = 'DeployWorkflow'"
        )
        deadline = time.monotonic() + 30
        while [w async for w in temporal.list_workflows(query)]:
            assert time.monotonic() < deadline, "a workflow of the server still runs"
            await asyncio.sleep(0.1)

        outcome = await reconcile(stack)
        assert not outcome.warnings, outcome
        text = json.dumps(outcome.actions)
        assert "deployment 2: failed (ended terminated)" in text, outcome
        assert "deployment 1000: failed (does not exist" in text, outcome
        assert any(second["deployment_id"] in line and "removed process instance" in line for line in outcome.actions)

        settled = await wait_deployment(client, second["deployment_id"], timeout=5)
        assert settled["status"] == "failed" and "reconciler" in settled["error"], settled
        assert all(s["status"] != "started" for s in settled["steps"]), settled["steps"]
        never = (await client.get(f"/api/deployments/{vanished}")).json()
        assert never["status"] == "failed" and "does not exist" in never["error"]
        # The revision that served before serves still, alone.
        assert await running_instances(executor, sid) == [first["id"]]
        detail = (await client.get(f"/api/servers/{sid}")).json()
        assert detail["status"] == "running" and detail["active_deployment_id"] == first["id"]
        gateway = f"{stack.base_url}/mcp/{server['slug']}"
        assert json.loads(await call_tool(gateway, server["api_key"], "get_current_time", {"timezone": "UTC"}))
        logs = (await client.get(f"/api/servers/{sid}/logs")).json()["data"]
        assert any("reconciler: removed process instance" in line["message"] for line in logs)

        # A second pass finds nothing more to do.
        again = await reconcile(stack)
        assert not [line for line in again.actions if sid in line], again
        await governance.terminate("test over")

        assert (await client.delete(f"/api/servers/{sid}")).status_code == 202


async def test_each_worker_keeps_its_reconcile_schedule(stack: Stack) -> None:
    temporal = await stack.state.temporal()
    settings = stack.settings.model_copy(update={"reconcile_interval_seconds": 3600.0})
    handle = temporal.get_schedule_handle(f"reconcile-{settings.host_task_queue}")
    try:
        await keep_reconcile_schedule(temporal, settings)
        described = await handle.describe()
        assert described.schedule.spec.intervals[0].every == timedelta(hours=1)
        # Kept up to date with the settings on the next start.
        await keep_reconcile_schedule(temporal, settings.model_copy(update={"reconcile_interval_seconds": 600.0}))
        assert (await handle.describe()).schedule.spec.intervals[0].every == timedelta(minutes=10)
    finally:
        # Interval 0 turns it off.
        await keep_reconcile_schedule(temporal, settings.model_copy(update={"reconcile_interval_seconds": 0.0}))
    with pytest.raises(Exception, match="not found|NotFound|not exist"):
        await handle.describe()
