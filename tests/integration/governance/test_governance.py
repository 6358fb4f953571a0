"""Governance on the real stack: two distinct approvals from role `release-manager` with four-eyes; the
requester's own vote, a non-approver, a second vote by the same person and a vote on an ended run are
refused with 403/409, kept in the audit trail and never in the workflow's history; a vote sent while no
worker runs is applied once one starts."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import httpx
import pytest

from api.routes import governance as governance_routes
from tests.integration.governance.test_evaluations import TESTS, add_tests, until_ended
from tests.support import everything
from tests.support.sse import EventStream
from tests.support.stack import Stack, WorkerProcess, wait_deployment

RELEASE = {
    "kind": "approval",
    "name": "staging sign-off",
    "roles": ["release-manager"],
    "required": 2,
    "allow_requester": False,
}


async def served_server(owner: httpx.AsyncClient) -> dict[str, Any]:
    created = await owner.post(
        "/api/servers", json={"name": f"gov-{uuid.uuid4().hex[:8]}", "source": everything.source()}
    )
    assert created.status_code == 201, created.text
    server: dict[str, Any] = created.json()
    started = await owner.post(f"/api/servers/{server['id']}/deployments")
    done = await wait_deployment(owner, started.json()["deployment_id"])
    assert done["status"] == "running", done
    return server


async def grant(stack: Stack, user: dict[str, Any], *roles: str) -> None:
    admin, _ = await stack.user(role="admin")
    async with admin:
        response = await admin.put(f"/api/users/{user['id']}/roles", json={"roles": list(roles)})
        assert response.status_code == 200, response.text
        assert response.json()["roles"] == sorted(roles)


async def until_status(client: httpx.AsyncClient, run_id: str, wanted: str, bound: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        body: dict[str, Any] = (await client.get(f"/api/governance/runs/{run_id}")).json()
        if body["status"] == wanted:
            return body
        await asyncio.sleep(0.2)
    raise AssertionError(f"governance run {run_id} never became {wanted}: {body}")


async def test_quorum_four_eyes_and_refusals_in_the_audit_not_in_history(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The run's event stream looks again only when notified: with no timer to fall back on, every event
    # below arrives because the vote's record announced it.
    monkeypatch.setattr(governance_routes, "RECHECK_SECONDS", 3600.0)
    everything.build_wheel()
    owner, owner_user = await stack.user()
    rm1, rm1_user = await stack.user()
    rm2, rm2_user = await stack.user()
    stranger, _ = await stack.user()
    async with owner, rm1, rm2, stranger:
        # The requester is a release manager too: four-eyes must still stop them approving their own run.
        for person in (owner_user, rm1_user, rm2_user):
            await grant(stack, person, "release-manager")
        # Only administrators give roles: no one grants themselves a vote.
        selfmade = await stranger.put(f"/api/users/{owner_user['id']}/roles", json={"roles": ["release-manager"]})
        assert selfmade.status_code == 403, selfmade.text
        server = await served_server(owner)
        steps = [RELEASE, {"kind": "check", "name": "certified", "tier": "gold", "requirement": "smoke"}]
        created = await owner.post("/api/governance/workflows", json={"name": "staging", "steps": steps})
        assert created.status_code == 201, created.text
        definition = created.json()
        started = await owner.post(
            f"/api/governance/workflows/{definition['id']}/runs", json={"server_id": server["id"], "tier": "gold"}
        )
        assert started.status_code == 202, started.text
        run = started.json()
        assert run["subject"] == f"pypi:{everything.NAME}@{everything.VERSION}"
        path = f"/api/governance/runs/{run['id']}"
        async with EventStream(owner, f"{path}/stream") as events:
            await events.until(lambda name, data: name == "audit" and data["action"] == "step_started")

            own = await owner.post(f"{path}/approve", json={"comment": "mine, looks fine"})
            assert own.status_code == 403 and "four eyes" in own.json()["detail"], own.text
            # A refused vote never reaches the workflow: only its own record's notification shows it.
            _, refusal = await events.until(lambda name, data: name == "audit" and data["action"] == "refused")
            assert refusal["actor"] == owner_user["email"] and "four eyes" in refusal["comment"], refusal
            # Someone the definition does not name cannot even see the run.
            assert (await stranger.post(f"{path}/approve")).status_code == 404
            first = await rm1.post(f"{path}/approve", json={"comment": "ok from rm1"})
            assert first.status_code == 200, first.text
            assert first.json()["status"] == "running"  # one of two
            twice = await rm1.post(f"{path}/approve")
            assert twice.status_code == 409 and "already voted" in twice.json()["detail"], twice.text
            await events.until(lambda name, data: name == "audit" and data["action"] == "approve")
            second = await rm2.post(f"{path}/approve", json={"comment": "ok from rm2"})
            assert second.status_code == 200, second.text

            # The check step then needs a gold certification, which this artifact lacks: the run is rejected.
            ended = await until_status(owner, run["id"], "rejected")
            assert "evaluation:missing:gold:smoke" in ended["reason"]
            _, end = await events.until(lambda name, _: name == "end")
            assert end == {"status": "rejected"}
        late = await rm2.post(f"{path}/reject")
        assert late.status_code == 409, late.text

        audit = (await owner.get(path)).json()["audit"]
        refused = [a for a in audit if not a["accepted"]]
        assert [a["action"] for a in refused] == ["refused"] * 3
        assert {a["actor"] for a in refused} == {owner_user["email"], rm1_user["email"], rm2_user["email"]}
        accepted_votes = [a for a in audit if a["action"] == "approve"]
        assert [(a["actor"], a["comment"]) for a in accepted_votes] == [
            (rm1_user["email"], "ok from rm1"),
            (rm2_user["email"], "ok from rm2"),
        ]
        # History holds the two accepted updates only.
        temporal = await stack.state.temporal()
        history = await temporal.get_workflow_handle(run["workflow_id"]).fetch_history()
        updates = [e for e in history.events if e.HasField("workflow_execution_update_accepted_event_attributes")]
        assert len(updates) == 2
        raw = json.dumps([str(e) for e in history.events])
        assert "mine, looks fine" not in raw and "four eyes" not in raw
        listed = [
            w.id async for w in temporal.list_workflows(f"McpKind = 'governance' AND McpServerId = '{server['id']}'")
        ]
        assert run["workflow_id"] in listed

        # Certify the artifact, and a new run of the same definition passes its check.
        await add_tests(owner, server["id"], TESTS[:1])
        certify = await owner.post(
            f"/api/servers/{server['id']}/eval/run", json={"certify": {"tier": "gold", "requirement": "smoke"}}
        )
        assert (await until_ended(owner, certify.json()["id"]))["run"]["status"] == "passed"
        again = (
            await owner.post(
                f"/api/governance/workflows/{definition['id']}/runs", json={"server_id": server["id"], "tier": "gold"}
            )
        ).json()
        for client in (rm1, rm2):
            assert (await client.post(f"/api/governance/runs/{again['id']}/approve")).status_code == 200
        approved = await until_status(owner, again["id"], "approved")
        assert approved["reason"] == "every step passed"
        await owner.delete(f"/api/servers/{server['id']}")


async def test_a_vote_sent_while_no_worker_runs_is_applied_when_one_starts(
    api_only: tuple[Stack, WorkerProcess],
) -> None:
    stack, worker = api_only
    everything.build_wheel()
    owner, _ = await stack.user()
    approver, approver_user = await stack.user()
    async with owner, approver:
        server = await served_server(owner)
        step = {"kind": "approval", "name": "go", "users": [approver_user["email"]]}
        definition = (await owner.post("/api/governance/workflows", json={"name": "go", "steps": [step]})).json()
        run = (
            await owner.post(
                f"/api/governance/workflows/{definition['id']}/runs", json={"server_id": server["id"], "tier": "gold"}
            )
        ).json()
        await until_status(owner, run["id"], "running")
        worker.stop()
        queued = await approver.post(f"/api/governance/runs/{run['id']}/approve", json={"comment": "while down"})
        assert queued.status_code == 202 and "queued" in queued.text, queued.text
        worker.start()
        approved = await until_status(owner, run["id"], "approved", bound=180)
        votes = [a for a in approved["audit"] if a["action"] == "approve"]
        assert [(v["actor"], v["comment"]) for v in votes] == [(approver_user["email"], "while down")]
        await owner.delete(f"/api/servers/{server['id']}")
