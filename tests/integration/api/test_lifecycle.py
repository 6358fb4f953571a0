"""A server's life on the real stack: the generic redeploy webhook, rollback, and the deployment failure
paths that must keep the serving revision serving. Faults are injected into one named activity of the
real worker with a Temporal interceptor; everything else is the real platform."""

from __future__ import annotations

import base64
import json
import re
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)

from api.routes.webhooks import REJECTED_RECORDS_PER_MINUTE
from tests.support.mcp_client import call_tool
from tests.support.stack import Stack, deploy, make_settings, running, wait_deployment

TIME = {"type": "package", "package": "mcp-server-time", "args": ["--local-timezone", "UTC"]}


class FailActivity(Interceptor):
    """Fails every attempt of one activity, permanently, while `armed`."""

    def __init__(self, name: str) -> None:
        self.name, self.armed, self.failed = name, False, 0

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:  # noqa: A002
        outer = self

        class Inbound(ActivityInboundInterceptor):
            async def execute_activity(self, input: ExecuteActivityInput) -> Any:  # noqa: A002
                if outer.armed and activity.info().activity_type == outer.name:
                    outer.failed += 1
                    raise ApplicationError(f"injected failure of {outer.name}", type="injected", non_retryable=True)
                return await super().execute_activity(input)

        return Inbound(next)


async def create_time_server(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.post("/api/servers", json={"name": f"life-{uuid.uuid4().hex[:6]}", "source": TIME})
    assert response.status_code == 201, response.text
    return dict(response.json())


async def current_time(stack: Stack, server: dict[str, Any]) -> dict[str, Any]:
    url = f"{stack.base_url}/mcp/{server['slug']}"
    return dict(json.loads(await call_tool(url, server["api_key"], "get_current_time", {"timezone": "UTC"})))


async def test_a_failure_after_the_route_switch_never_removes_the_serving_instance(
    database_url: str, temporal_address: str, process_state_dir: Path
) -> None:
    """retire_previous fails for good after the new revision took the route: the new revision must keep
    serving (before, its instance was removed as "cleanup" and the server pointed at a dead upstream)."""
    fault = FailActivity("retire_instances")
    settings = make_settings(database_url, temporal_address, process_state_dir)
    async with running(settings, worker_interceptors=[fault]) as stack:
        client, _ = await stack.user()
        async with client:
            server = await create_time_server(client)
            first = await deploy(client, server["id"])
            assert first["status"] == "running", first
            fault.armed = True
            second = await deploy(client, server["id"])
            assert fault.failed >= 1
            assert second["status"] == "running", second
            assert "retire_previous failed after the switch" in (second["error"] or "")
            steps = {s["step"]: s["status"] for s in second["steps"]}
            assert steps["switch_route"] == "succeeded" and steps["retire_previous"] == "failed"
            detail = (await client.get(f"/api/servers/{server['id']}")).json()
            assert detail["status"] == "running"
            assert detail["active_deployment_id"] == second["id"]
            # The revision the gateway points at answers.
            assert (await current_time(stack, server))["timezone"] == "UTC"
            fault.armed = False
            # The next deployment retires what was left behind.
            third = await deploy(client, server["id"])
            assert third["status"] == "running" and not third["error"], third
            history = (await client.get(f"/api/servers/{server['id']}/deployments")).json()["data"]
            assert [d["status"] for d in history] == ["running", "stopped", "stopped"]
            assert (await client.post(f"/api/servers/{server['id']}/stop")).status_code == 202


async def workflow_runs(stack: Stack, workflow_id: str) -> int:
    temporal = await stack.state.temporal()
    return len([run async for run in temporal.list_workflows(f"WorkflowId = '{workflow_id}'")])


async def test_a_replayed_idempotency_key_after_the_deployment_ended_starts_nothing(stack: Stack) -> None:
    client, _ = await stack.user()
    async with client:
        server = await create_time_server(client)
        headers = {"Idempotency-Key": f"ci-{uuid.uuid4().hex}"}
        accepted = await client.post(f"/api/servers/{server['id']}/deployments", headers=headers)
        assert accepted.status_code == 202, accepted.text
        done = await wait_deployment(client, accepted.json()["deployment_id"])
        assert done["status"] == "running", done
        again = await client.post(f"/api/servers/{server['id']}/deployments", headers=headers)
        assert again.status_code == 202 and again.headers.get("idempotent-replayed") == "true"
        assert again.json()["deployment_id"] == done["id"] and again.json()["status"] == "running"
        # Exactly one run of the deployment's workflow, and still one deployment.
        assert await workflow_runs(stack, done["workflow_id"]) == 1
        history = (await client.get(f"/api/servers/{server['id']}/deployments")).json()["data"]
        assert len(history) == 1
        assert (await client.post(f"/api/servers/{server['id']}/stop")).status_code == 202


def _payloads(node: Any) -> list[dict[str, Any]]:
    if isinstance(node, list):
        return [p for item in node for p in _payloads(item)]
    if not isinstance(node, dict):
        return []
    found = [p for p in node.get("payloads") or [] if isinstance(p, dict) and "data" in p]
    return found + [p for key, value in node.items() if key != "payloads" for p in _payloads(value)]


async def test_tool_lists_are_stored_by_the_health_check_not_carried_in_workflow_history(stack: Stack) -> None:
    client, _ = await stack.user()
    async with client:
        server = await create_time_server(client)
        done = await deploy(client, server["id"])
        assert done["status"] == "running", done
        caps = (await client.get(f"/api/servers/{server['id']}/capabilities")).json()
        assert {t["name"] for t in caps["tools"]} == {"get_current_time", "convert_time"}
        health = next(s for s in done["steps"] if s["step"] == "health_check")
        assert "2 tools" in health["message"]
        temporal = await stack.state.temporal()
        history = (await temporal.get_workflow_handle(done["workflow_id"]).fetch_history()).to_json_dict()
        # Every payload anywhere in the history (activity inputs and results, local activity markers), decoded.
        carried = "".join(
            base64.b64decode(payload["data"]).decode(errors="replace") for payload in _payloads(history["events"])
        )
        # The history holds the health check's counts, never the lists.
        assert "get_current_time" in json.dumps(caps) and re.search(r'"counts":\{[^}]*"tools":2\b', carried)
        assert "convert_time" not in carried, "tool lists travel through workflow history"
        assert (await client.post(f"/api/servers/{server['id']}/stop")).status_code == 202


async def test_wrong_secrets_cannot_flood_the_delivery_records(stack: Stack) -> None:
    client, _ = await stack.user()
    async with client:
        server = await create_time_server(client)
        sid, secret = server["id"], server["webhook_secret"]
        hook = f"{stack.base_url}/api/servers/{sid}/webhook"
        async with httpx.AsyncClient() as raw:
            for _ in range(REJECTED_RECORDS_PER_MINUTE + 10):
                assert (await raw.post(hook, headers={"X-Webhook-Secret": "guess"})).status_code == 401
            # An authentic delivery is recorded still (this one asks for something a package server lacks).
            genuine = await raw.post(hook, headers={"X-Webhook-Secret": secret}, json={"revision": "b" * 40})
            assert genuine.status_code == 422
        deliveries = (await client.get(f"/api/servers/{sid}/webhook-deliveries?limit=100")).json()["data"]
        assert deliveries[0]["status_code"] == 422
        assert [d["status_code"] for d in deliveries].count(401) == REJECTED_RECORDS_PER_MINUTE
        assert (await client.get(f"/api/servers/{sid}/deployments")).json()["count"] == 0


async def test_generic_webhook_redeploys_with_the_secret_and_records_every_delivery(stack: Stack) -> None:
    client, _ = await stack.user()
    async with client:
        server = await create_time_server(client)
        sid, secret = server["id"], server["webhook_secret"]
        hook = f"{stack.base_url}/api/servers/{sid}/webhook"
        async with httpx.AsyncClient() as raw:
            missing = await raw.post(hook)
            wrong = await raw.post(hook, headers={"X-Webhook-Secret": "not-the-secret"})
            assert missing.status_code == 401 and "X-Webhook-Secret" in missing.json()["detail"]
            assert wrong.status_code == 401
            # A git revision for a package server is the caller's mistake: 422, recorded, nothing started.
            bad = await raw.post(hook, headers={"X-Webhook-Secret": secret}, json={"revision": "a" * 40})
            assert bad.status_code == 422, bad.text
            odd = await raw.post(hook, headers={"X-Webhook-Secret": secret}, json={"branch": "main"})
            assert odd.status_code == 422
            assert (await client.get(f"/api/servers/{sid}/deployments")).json()["count"] == 0
            unknown = await raw.post(
                f"{stack.base_url}/api/servers/{uuid.uuid4()}/webhook", headers={"X-Webhook-Secret": secret}
            )
            assert unknown.status_code == 404

            key = {"X-Webhook-Secret": secret, "Idempotency-Key": f"build-{uuid.uuid4().hex[:8]}"}
            accepted = await raw.post(hook, headers=key)
            assert accepted.status_code == 202, accepted.text
            assert accepted.json()["outcome"] == "accepted"
            deployment_id = accepted.json()["deployment_id"]
            # CI retrying the same delivery deploys nothing more.
            replay = await raw.post(hook, headers=key)
            assert replay.status_code == 200 and replay.json()["outcome"] == "ignored"
            assert "already handled" in replay.json()["reason"]
        done = await wait_deployment(client, deployment_id)
        assert done["status"] == "running", done
        assert (await client.get(f"/api/servers/{sid}/deployments")).json()["count"] == 1
        deliveries = (await client.get(f"/api/servers/{sid}/webhook-deliveries")).json()["data"]
        assert [d["outcome"] for d in deliveries] == [
            "ignored",
            "accepted",
            "rejected",
            "rejected",
            "rejected",
            "rejected",
        ]
        assert [d["status_code"] for d in deliveries] == [200, 202, 422, 422, 401, 401]
        assert deliveries[1]["deployment_id"] == deployment_id
        assert secret not in json.dumps(deliveries)

        # Another user sees none of it.
        other, _ = await stack.user()
        async with other:
            assert (await other.get(f"/api/servers/{sid}/webhook-deliveries")).status_code == 404
        assert (await client.post(f"/api/servers/{sid}/stop")).status_code == 202


async def test_webhook_body_is_capped(stack: Stack) -> None:
    client, _ = await stack.user()
    async with client:
        server = await create_time_server(client)
        cap = stack.settings.webhook_max_body_bytes
        async with httpx.AsyncClient() as raw:
            big = await raw.post(
                f"{stack.base_url}/api/servers/{server['id']}/webhook",
                headers={"X-Webhook-Secret": server["webhook_secret"], "Content-Type": "application/json"},
                content=b" " * (cap + 1),
            )
        assert big.status_code == 413
        assert (await client.get(f"/api/servers/{server['id']}/deployments")).json()["count"] == 0
        [delivery] = (await client.get(f"/api/servers/{server['id']}/webhook-deliveries")).json()["data"]
        assert delivery["outcome"] == "rejected" and delivery["status_code"] == 413


async def test_rollback_serves_an_earlier_revision_again(stack: Stack) -> None:
    client, _ = await stack.user()
    async with client:
        server = await create_time_server(client)
        sid = server["id"]
        nothing = await client.post(f"/api/servers/{sid}/rollback")
        assert nothing.status_code == 409 and "nothing to roll back" in nothing.json()["detail"]
        first = await deploy(client, sid)
        # The second revision's config differs: rolling back brings the first one's back.
        patched = await client.patch(f"/api/servers/{sid}", json={"env": {"MARKER": "second"}})
        assert patched.status_code == 200, patched.text
        second = await deploy(client, sid)
        assert first["status"] == second["status"] == "running"
        serving = await client.post(f"/api/servers/{sid}/rollback", json={"seq": second["seq"]})
        assert serving.status_code == 409 and "serving now" in serving.json()["detail"]
        assert (await client.post(f"/api/servers/{sid}/rollback", json={"seq": 99})).status_code == 404

        accepted = await client.post(f"/api/servers/{sid}/rollback")
        assert accepted.status_code == 202, accepted.text
        assert accepted.json()["rolled_back_to"] == first["seq"]
        third = await wait_deployment(client, accepted.json()["deployment_id"])
        assert third["status"] == "running", third
        assert (await current_time(stack, server))["timezone"] == "UTC"
        detail = (await client.get(f"/api/servers/{sid}")).json()
        assert detail["active_deployment_id"] == third["id"]
        logs = (await client.get(f"/api/servers/{sid}/logs")).json()["data"]
        assert any(f"rollback to revision {first['seq']}" in line["message"] for line in logs)
        assert (await client.post(f"/api/servers/{sid}/stop")).status_code == 202


@pytest.mark.parametrize("path", ["webhook", "github", "gitlab"])
async def test_webhooks_of_an_unknown_server_are_404(stack: Stack, path: str) -> None:
    async with httpx.AsyncClient() as raw:
        response = await raw.post(f"{stack.base_url}/api/servers/{uuid.uuid4()}/{path}", content=b"{}")
    assert response.status_code == 404
