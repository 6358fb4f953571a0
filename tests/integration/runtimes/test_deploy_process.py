"""Deployments on the process runtime with a real MCP server from PyPI (mcp-server-time)."""

from __future__ import annotations

import json
import shutil
import uuid

import httpx
import pytest

from runtimes.process import ProcessExecutor
from tests.support.components import require
from tests.support.mcp_client import call_tool, list_tools
from tests.support.stack import Stack, deploy, wait_deployment

TIME = {"type": "package", "package": "mcp-server-time", "args": ["--local-timezone", "UTC"]}
# The reference "everything" server from the npm registry: a stdio server, so it runs behind the bridge.
EVERYTHING = {
    "type": "package",
    "registry": "npm",
    "package": "@modelcontextprotocol/server-everything",
    "version": "2026.8.31",
}


async def running_instances(stack: Stack, server_id: str) -> list[str]:
    executor = ProcessExecutor(stack.settings.state_dir / "process")
    instances = await executor.instances(server_id)
    return [i.deployment_id for i in instances if (await executor.status(i)).state == "running"]


async def test_deploy_serve_redeploy_stop_delete(stack: Stack) -> None:
    client, _ = await stack.user()
    async with client:
        server = (
            await client.post("/api/servers", json={"name": f"time-{uuid.uuid4().hex[:6]}", "source": TIME})
        ).json()
        sid, slug, key = server["id"], server["slug"], server["api_key"]
        gateway = f"{stack.base_url}/mcp/{slug}"

        # Not deployed yet: the gateway says so.
        async with httpx.AsyncClient() as raw:
            idle = await raw.post(gateway, headers={"Authorization": f"Bearer {key}"}, json={})
        assert idle.status_code == 503 and "deploy" in idle.text

        first = await deploy(client, sid)
        assert first["status"] == "running", first
        assert [s["step"] for s in first["steps"]][:5] == [
            "resolve",
            "prepare",
            "launch",
            "health_check",
            "switch_route",
        ]
        assert all(s["status"] == "succeeded" for s in first["steps"] if s["step"] != "retire_previous")

        # The official MCP client, through the gateway, with either header form.
        answer = json.loads(await call_tool(gateway, key, "get_current_time", {"timezone": "UTC"}))
        assert answer["timezone"] == "UTC"
        converted = json.loads(
            await call_tool(
                gateway,
                key,
                "convert_time",
                {"source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"},
                header="x-api-key",
            )
        )
        assert converted["target"]["datetime"].endswith("21:00:00+09:00")

        caps = (await client.get(f"/api/servers/{sid}/capabilities")).json()
        assert {t["name"] for t in caps["tools"]} == {"get_current_time", "convert_time"}
        assert caps["deployment_id"] == first["id"]
        config = (await client.get(f"/api/servers/{sid}/client-config")).json()
        assert config["url"] == gateway and config["mcpServers"][slug]["url"] == gateway
        assert key not in json.dumps(config)
        assert await running_instances(stack, sid) == [first["id"]]

        # Redeploy: a new revision takes over, the previous one is retired; exactly one process remains.
        second = await deploy(client, sid)
        assert second["status"] == "running" and second["seq"] == first["seq"] + 1
        assert json.loads(await call_tool(gateway, key, "get_current_time", {"timezone": "UTC"}))
        assert await running_instances(stack, sid) == [second["id"]]
        history = (await client.get(f"/api/servers/{sid}/deployments")).json()["data"]
        assert [d["status"] for d in history] == ["running", "stopped"]

        logs = (await client.get(f"/api/servers/{sid}/logs")).json()["data"]
        assert any("serving revision 2" in line["message"] for line in logs)

        # Stop: off the gateway, no process left.
        stopped = await client.post(f"/api/servers/{sid}/stop")
        assert stopped.status_code == 202
        await _wait_for(lambda: _server_status(client, sid), "stopped")
        assert await running_instances(stack, sid) == []
        async with httpx.AsyncClient() as raw:
            after = await raw.post(gateway, headers={"Authorization": f"Bearer {key}"}, json={})
        assert after.status_code == 503

        # Delete: the record goes, and so does the route.
        assert (await client.delete(f"/api/servers/{sid}")).status_code == 202
        await _wait_for(lambda: _status_code(client, f"/api/servers/{sid}"), 404)
        async with httpx.AsyncClient() as raw:
            gone = await raw.post(gateway, headers={"Authorization": f"Bearer {key}"}, json={})
        assert gone.status_code == 404


async def _server_status(client: httpx.AsyncClient, sid: str) -> str:
    return str((await client.get(f"/api/servers/{sid}")).json()["status"])


async def _status_code(client: httpx.AsyncClient, path: str) -> int:
    return (await client.get(path)).status_code


async def _wait_for(probe, expected, timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
    import asyncio
    import time

    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = await probe()
        if value == expected:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"expected {expected!r}, last saw {value!r}")


async def test_gateway_rejects_missing_wrong_and_query_keys(stack: Stack) -> None:
    client, _ = await stack.user()
    async with client:
        server = (await client.post("/api/servers", json={"name": f"k-{uuid.uuid4().hex[:6]}", "source": TIME})).json()
        url = f"{stack.base_url}/mcp/{server['slug']}"
        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}
        async with httpx.AsyncClient() as raw:
            assert (await raw.post(url, json=init)).status_code == 401
            wrong = await raw.post(url, json=init, headers={"Authorization": "Bearer mcpk_wrong"})
            assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
            in_query = await raw.post(f"{url}?api_key={server['api_key']}", json=init)
            assert in_query.status_code == 400 and "header" in in_query.text
            other = await raw.post(
                f"{stack.base_url}/mcp/no-such-server",
                json=init,
                headers={"Authorization": f"Bearer {server['api_key']}"},
            )
            assert other.status_code == 404
        # A rotated key replaces the old one at once.
        rotated = (await client.post(f"/api/servers/{server['id']}/api-key")).json()
        async with httpx.AsyncClient() as raw:
            old = await raw.post(url, json=init, headers={"Authorization": f"Bearer {server['api_key']}"})
            new = await raw.post(url, json=init, headers={"Authorization": f"Bearer {rotated['api_key']}"})
        assert old.status_code == 401
        assert new.status_code == 503  # authenticated; the server is simply not deployed


async def test_retried_request_with_idempotency_key_returns_the_same_deployment(stack: Stack) -> None:
    client, _ = await stack.user()
    async with client:
        server = (await client.post("/api/servers", json={"name": f"i-{uuid.uuid4().hex[:6]}", "source": TIME})).json()
        headers = {"Idempotency-Key": "release-42"}
        first = await client.post(f"/api/servers/{server['id']}/deployments", headers=headers)
        again = await client.post(f"/api/servers/{server['id']}/deployments", headers=headers)
        assert first.status_code == again.status_code == 202
        # The same deployment, described as it is now: it may have moved on between the two requests.
        same = ("deployment_id", "workflow_id", "seq")
        assert {k: first.json()[k] for k in same} == {k: again.json()[k] for k in same}
        assert again.json()["status"] in ("pending", "deploying", "running")
        assert again.headers.get("idempotent-replayed") == "true"
        # Without a key, asking again while an identical deployment is under way joins it too.
        done = await wait_deployment(client, first.json()["deployment_id"])
        assert done["status"] == "running"
        deployments = (await client.get(f"/api/servers/{server['id']}/deployments")).json()
        assert deployments["count"] == 1
        # After it finished, the same key still names that deployment rather than starting another.
        later = await client.post(f"/api/servers/{server['id']}/deployments", headers=headers)
        assert later.json()["deployment_id"] == first.json()["deployment_id"]
        assert (await client.delete(f"/api/servers/{server['id']}")).status_code == 202


@pytest.mark.parametrize(
    ("source", "needle"),
    [
        ({"type": "package", "package": "mcphost-no-such-package-7f3a9c"}, "not found on PyPI"),
        ({"type": "package", "package": "mcp-server-time", "version": "0.0.0.1"}, "not found on PyPI"),
        ({"type": "package", "package": "mcp-server-time", "command": "not-a-script"}, "no console script"),
    ],
)
async def test_bad_packages_fail_with_a_readable_reason(stack: Stack, source: dict, needle: str) -> None:
    client, _ = await stack.user()
    async with client:
        server = (
            await client.post("/api/servers", json={"name": f"b-{uuid.uuid4().hex[:6]}", "source": source})
        ).json()
        result = await deploy(client, server["id"])
        assert result["status"] == "failed"
        assert needle in result["error"], result["error"]
        failed_steps = [s for s in result["steps"] if s["status"] == "failed"]
        assert [s["step"] for s in failed_steps] == ["prepare"]
        assert failed_steps[0]["attempts"] == 1  # a permanent error is not retried
        assert (await client.get(f"/api/servers/{server['id']}")).json()["status"] == "failed"
        assert await running_instances(stack, server["id"]) == []


async def test_failed_redeploy_keeps_the_previous_revision_serving(stack: Stack) -> None:
    client, _ = await stack.user()
    async with client:
        server = (await client.post("/api/servers", json={"name": f"k-{uuid.uuid4().hex[:6]}", "source": TIME})).json()
        good = await deploy(client, server["id"])
        assert good["status"] == "running"
        # The server starts but exits at once: the health check must catch it, with its output.
        broken = {**TIME, "args": ["--local-timezone", "Not/AZone"]}
        assert (await client.patch(f"/api/servers/{server['id']}", json={"source": broken})).status_code == 200
        bad = await deploy(client, server["id"])
        assert bad["status"] == "failed"
        assert "health_check" in [s["step"] for s in bad["steps"] if s["status"] == "failed"]
        assert "exited" in bad["error"] or "no MCP answer" in bad["error"]
        gateway = f"{stack.base_url}/mcp/{server['slug']}"
        assert json.loads(await call_tool(gateway, server["api_key"], "get_current_time", {"timezone": "UTC"}))
        assert (await client.get(f"/api/servers/{server['id']}")).json()["active_deployment_id"] == good["id"]
        assert await running_instances(stack, server["id"]) == [good["id"]]
        assert (await client.delete(f"/api/servers/{server['id']}")).status_code == 202


async def test_admin_command_source_that_does_not_exist_fails_cleanly(stack: Stack) -> None:
    client, _ = await stack.user(role="admin")
    async with client:
        server = (
            await client.post(
                "/api/servers",
                json={
                    "name": f"c-{uuid.uuid4().hex[:6]}",
                    "source": {"type": "command", "command": "no-such-binary-x"},
                },
            )
        ).json()
        result = await deploy(client, server["id"])
    assert result["status"] == "failed"
    assert "not found" in result["error"]


async def test_deployment_progress_streams_as_server_sent_events(stack: Stack) -> None:
    client, _ = await stack.user()
    async with client:
        server = (
            await client.post("/api/servers", json={"name": f"sse-{uuid.uuid4().hex[:6]}", "source": TIME})
        ).json()
        accepted = (await client.post(f"/api/servers/{server['id']}/deployments")).json()
        events: list[tuple[str, dict]] = []
        async with client.stream("GET", f"/api/deployments/{accepted['deployment_id']}/events") as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            name = ""
            async for line in response.aiter_lines():
                if line.startswith("event:"):
                    name = line.partition(":")[2].strip()
                elif line.startswith("data:"):
                    events.append((name, json.loads(line.partition(":")[2])))
        assert events[-1] == ("end", {"status": "running"})
        updates = [data for kind, data in events if kind == "deployment"]
        # Each recorded step wakes the stream through Postgres NOTIFY: a deploy of about 2 s records 13
        # step changes, and the 2 s re-read alone would show 2 of them. Steps recorded within the same few
        # milliseconds may share one update, so the bound leaves room for that.
        assert len(updates) >= 6, [(u["step"], len(u["steps"])) for u in updates]
        recorded = [len(u["steps"]) for u in updates]
        assert recorded == sorted(recorded)  # steps only ever accumulate
        final = updates[-1]
        assert final["status"] == "running" and all(s["status"] == "succeeded" for s in final["steps"])

        # Another user cannot follow it; a finished deployment streams its record and ends at once.
        other, _ = await stack.user()
        async with other:
            assert (await other.get(f"/api/deployments/{accepted['deployment_id']}/events")).status_code == 404
        again = await client.get(f"/api/deployments/{accepted['deployment_id']}/events")
        assert again.text.count("event: deployment") == 1 and again.text.rstrip().endswith('{"status": "running"}')


async def test_npm_package_server_runs_behind_the_bridge(stack: Stack) -> None:
    require(shutil.which("npm") is not None, "Node.js and npm for npm package servers (apt-get install nodejs npm)")
    client, _ = await stack.user()
    async with client:
        server = (
            await client.post("/api/servers", json={"name": f"npm-{uuid.uuid4().hex[:6]}", "source": EVERYTHING})
        ).json()
        done = await deploy(client, server["id"], timeout=300)
        assert done["status"] == "running", done
        gateway = f"{stack.base_url}/mcp/{server['slug']}"
        assert "echo" in await list_tools(gateway, server["api_key"])
        assert "through the bridge" in await call_tool(
            gateway, server["api_key"], "echo", {"message": "through the bridge"}
        )
        assert await running_instances(stack, server["id"]) == [done["id"]]

        # A package the npm registry does not have fails the deployment with a reason, and nothing runs.
        missing = (
            await client.post(
                "/api/servers",
                json={
                    "name": f"npm-missing-{uuid.uuid4().hex[:6]}",
                    "source": {
                        "type": "package",
                        "registry": "npm",
                        "package": f"@mcphost-test/none-{uuid.uuid4().hex[:8]}",
                    },
                },
            )
        ).json()
        failed = await deploy(client, missing["id"], timeout=300)
        assert failed["status"] == "failed" and "not found on npm" in failed["error"], failed
        assert await running_instances(stack, missing["id"]) == []
