"""Remediation playbooks on the real stack (Temporal, Postgres, the process runtime, a real MCP server): a
server that turns degraded runs its bound playbook (notify, restart, an HTTP hook) once; an approval
follows the governance rules (four-eyes, named approvers) and every change needs the current version
(a stale one is 409); cancel stops a run after the step under way; while a run is active the server is
not evaluated; a worker SIGKILLed during a step resumes it and the run ends once."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.api.test_lifecycle import create_time_server, current_time
from tests.integration.workflows.test_supervisor import kill_instance, running_count
from tests.support.cli import Cli
from tests.support.stack import Stack, WorkerProcess, deploy, make_settings, running, wait_for

pytestmark = pytest.mark.timeout(300)
BASE = "/api/trust/remediation"


class Hook:
    """An HTTP endpoint a playbook calls: records each call's Idempotency-Key; `hold` keeps the first call
    waiting until released (or the caller goes away)."""

    def __init__(self, hold: bool = False) -> None:
        self.keys: list[str] = []
        self.hold = hold
        self.release = threading.Event()
        self.arrived = threading.Event()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length", "0"))
                self.rfile.read(length)
                hook.keys.append(self.headers.get("Idempotency-Key", ""))
                first = len(hook.keys) == 1
                hook.arrived.set()
                if hook.hold and first:
                    hook.release.wait(120)
                body = b'{"paged": true}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/page"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook() -> Iterator[Hook]:
    endpoint = Hook()
    yield endpoint
    endpoint.close()


async def make_playbook(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    response = await client.post(f"{BASE}/playbooks", json={"name": f"pb-{uuid.uuid4().hex[:6]}", **body})
    assert response.status_code == 201, response.text
    return dict(response.json())


async def runs_of(client: httpx.AsyncClient, sid: str) -> list[dict[str, Any]]:
    response = await client.get(f"{BASE}/runs", params={"server_id": sid})
    assert response.status_code == 200, response.text
    return list(response.json()["data"])


async def ended(client: httpx.AsyncClient, run_id: str) -> dict[str, Any] | None:
    run = (await client.get(f"{BASE}/runs/{run_id}")).json()
    return run if run["status"] not in ("awaiting_approval", "running") else None


async def artifacts(client: httpx.AsyncClient, run_id: str) -> list[dict[str, Any]]:
    return list((await client.get(f"{BASE}/runs/{run_id}/artifacts")).json()["data"])


async def test_a_degraded_server_runs_its_bound_playbook_once(
    database_url: str, temporal_address: str, process_state_dir: Path, hook: Hook
) -> None:
    settings = make_settings(
        database_url,
        temporal_address,
        process_state_dir,
        supervisor_interval_seconds=0.5,
        supervisor_failure_threshold=2,
        supervisor_window_seconds=600,
        supervisor_backoff_max_seconds=2,
        remediation_allow_private_urls=True,
    )
    async with running(settings) as stack:
        client, _ = await stack.user()
        async with client:
            server = await create_time_server(client)
            sid = server["id"]
            assert (await deploy(client, sid))["status"] == "running"
            playbook = await make_playbook(
                client,
                steps=[
                    {"name": "tell", "kind": "notify", "message": "the server degraded: restarting it"},
                    {"name": "restart", "kind": "restart"},
                    {"name": "page", "kind": "http", "url": hook.url, "expect_status": [200]},
                ],
            )
            bound = await client.put(f"{BASE}/playbooks/{playbook['id']}/servers/{sid}")
            assert bound.status_code == 204, bound.text
            for n in (1, 2):
                await kill_instance(stack, sid)
                await wait_for(lambda n=n: _restarted(client, sid, n), f"restart {n}")
            (run,) = await wait_for(lambda: runs_of(client, sid), "a remediation run")
            assert run["trigger"] == "degraded"
            done = await wait_for(lambda: ended(client, run["id"]), "the run's end")
            assert done["status"] == "succeeded" and done["exit_code"] == 0, done
            assert [(r["step"], r["status"], r["exit_code"]) for r in done["results"]] == [
                ("tell", "ok", 0),
                ("restart", "ok", 0),
                ("page", "ok", 0),
            ]
            assert hook.keys == [f"remediation-{run['id']}-2"]
            kinds = [a["kind"] for a in await artifacts(client, run["id"])]
            assert kinds.count("step") == 3 and kinds[-1] == "end"
            logs = (await client.get(f"/api/servers/{sid}/logs")).text
            assert "remediation: the server degraded: restarting it" in logs
            assert (await current_time(stack, server))["timezone"] == "UTC"
            await wait_for(lambda: _one_instance(stack, sid), "one instance")
            # Still degraded within the window: the playbook is not started again for the same failure.
            assert len(await runs_of(client, sid)) == 1
            assert (await client.delete(f"/api/servers/{sid}")).status_code == 202


async def _one_instance(stack: Stack, sid: str) -> bool:
    return await running_count(stack, sid) == 1


async def _restarted(client: httpx.AsyncClient, sid: str, n: int) -> bool:
    response = await client.get(f"/api/servers/{sid}/metrics", params={"event": "restart"})
    return len(response.json()["data"]) >= n


async def grant(stack: Stack, user: dict[str, Any], *roles: str) -> None:
    admin, _ = await stack.user(role="admin")
    async with admin:
        response = await admin.put(f"/api/users/{user['id']}/roles", json={"roles": list(roles)})
        assert response.status_code == 200, response.text


async def test_approval_versions_cancel_and_the_evaluation_gate(stack: Stack, tmp_path: Path) -> None:
    owner, me = await stack.user()
    sre, sre_user = await stack.user()
    outsider, _ = await stack.user()
    await grant(stack, me, "sre")
    await grant(stack, sre_user, "sre")
    async with owner, sre, outsider:
        server = await create_time_server(owner)
        sid = server["id"]
        bad = await owner.post(f"{BASE}/playbooks", json={"name": "bad", "steps": [{"name": "x", "kind": "resources"}]})
        assert bad.status_code == 422 and "changes nothing" in bad.text
        playbook = await make_playbook(
            owner,
            approval={"name": "ok", "kind": "approval", "roles": ["sre"]},
            steps=[
                {"name": "grow", "kind": "resources", "memory_mib": 384},
                {"name": "hold", "kind": "wait", "seconds": 600},
                {"name": "after", "kind": "notify", "message": "never"},
            ],
        )
        started = await owner.post(f"{BASE}/playbooks/{playbook['id']}/runs", json={"server_id": sid})
        assert started.status_code == 202, started.text
        run = started.json()
        assert run["status"] == "awaiting_approval" and started.headers["ETag"] == f'"{run["version"]}"'
        again = await owner.post(f"{BASE}/playbooks/{playbook['id']}/runs", json={"server_id": sid})
        assert again.status_code == 409 and "already active" in again.text
        assert (await outsider.get(f"{BASE}/runs/{run['id']}")).status_code == 404

        # While the run is active, the server is not evaluated.
        gated = await owner.post(f"/api/servers/{sid}/eval/run", json={})
        assert gated.status_code == 409 and "policy_hook:remediation_gate" in gated.text

        version = (await sre.get(f"{BASE}/runs/{run['id']}")).json()["version"]
        path = f"{BASE}/runs/{run['id']}"
        missing = await sre.post(f"{path}/approve", json={})
        assert missing.status_code == 422  # If-Match is required
        own = await owner.post(f"{path}/approve", json={}, headers={"If-Match": f'"{version}"'})
        assert own.status_code == 403 and "four eyes" in own.text  # the requester, though an sre
        stale = await sre.post(f"{path}/approve", json={}, headers={"If-Match": f'"{version - 1}"'})
        assert stale.status_code == 409 and "read it again" in stale.text
        stranger = await outsider.post(f"{path}/approve", json={}, headers={"If-Match": f'"{version}"'})
        assert stranger.status_code == 404
        approved = await sre.post(f"{path}/approve", json={"comment": "go"}, headers={"If-Match": f'"{version}"'})
        assert approved.status_code == 200, approved.text

        running_now = await wait_for(lambda: _at(owner, run["id"], "hold"), "the wait step")
        assert (await owner.get(f"/api/servers/{sid}")).json()["memory_limit"] == 384
        cancelled = await owner.post(f"{path}/cancel", headers={"If-Match": f'"{running_now["version"] - 1}"'})
        assert cancelled.status_code == 409
        cli = await Cli.for_user(owner, stack.base_url, tmp_path)
        result = await cli("remediation", "cancel", run["id"])
        assert result.code == 0, result.err
        done = await wait_for(lambda: ended(owner, run["id"]), "the cancelled end")
        assert done["status"] == "cancelled" and done["exit_code"] == 30, done
        assert done["reason"] == "cancelled before step 'after'"
        assert [r["step"] for r in done["results"]] == ["grow", "hold"]
        trail = await artifacts(owner, run["id"])
        refused = [a["content"] for a in trail if a["kind"] == "refused"]
        assert len(refused) == 2 and any("four eyes" in r for r in refused)
        assert [a["content"] for a in trail if a["kind"] == "vote"] == [f"approved by {sre_user['email']}: go"]
        listed = await cli("remediation", "list", "--server", sid, "--json")
        assert json.loads(listed.out)["data"][0]["status"] == "cancelled"

        # A rejected run ends without a step; a vote after the end is 409.
        second = (await owner.post(f"{BASE}/playbooks/{playbook['id']}/runs", json={"server_id": sid})).json()
        rejected = await sre.post(
            f"{BASE}/runs/{second['id']}/reject", json={}, headers={"If-Match": f'"{second["version"]}"'}
        )
        assert rejected.status_code == 200, rejected.text
        done = await wait_for(lambda: ended(owner, second["id"]), "the rejected end")
        assert done["status"] == "rejected" and done["exit_code"] == 20 and done["results"] == []
        late = await sre.post(
            f"{BASE}/runs/{second['id']}/approve", json={}, headers={"If-Match": f'"{done["version"]}"'}
        )
        assert late.status_code == 409
        # Once no run is active, evaluations are scheduled again (this one has no tests to run: 409 says so).
        after = await owner.post(f"/api/servers/{sid}/eval/run", json={})
        assert "remediation_gate" not in after.text


async def _at(client: httpx.AsyncClient, run_id: str, step: str) -> dict[str, Any] | None:
    run = (await client.get(f"{BASE}/runs/{run_id}")).json()
    return run if run["current_step"] == step and run["status"] == "running" else None


async def test_a_worker_killed_during_a_step_resumes_it_and_the_run_ends_once(
    database_url: str, temporal_address: str, process_state_dir: Path, workdir: Path
) -> None:
    hook = Hook(hold=True)
    settings = make_settings(database_url, temporal_address, process_state_dir, remediation_allow_private_urls=True)
    stack = Stack(settings, in_process_worker=False)
    await stack.start()
    worker = WorkerProcess(settings, workdir / f"worker-{uuid.uuid4().hex[:6]}.log")
    worker.start()
    try:
        client, _ = await stack.user()
        async with client:
            server = await create_time_server(client)
            playbook = await make_playbook(
                client,
                steps=[
                    {"name": "page", "kind": "http", "url": hook.url, "timeout_seconds": 300},
                    {"name": "tell", "kind": "notify", "message": "paged"},
                ],
            )
            started = await client.post(f"{BASE}/playbooks/{playbook['id']}/runs", json={"server_id": server["id"]})
            assert started.status_code == 202, started.text
            run_id = started.json()["id"]
            assert await asyncio.to_thread(hook.arrived.wait, 120), "the step never called the hook"
            worker.kill()
            worker.start()
            done = await wait_for(lambda: ended(client, run_id), "the run's end", timeout=180)
            assert done["status"] == "succeeded", done
            # The step ran again on the new worker with the same key (one effect at the hook), and the run
            # recorded it once.
            assert len(hook.keys) >= 2 and set(hook.keys) == {f"remediation-{run_id}-0"}
            assert [r["step"] for r in done["results"]] == ["page", "tell"]
            trail = [a["content"] for a in await artifacts(client, run_id)]
            assert sum(1 for t in trail if t.startswith("http step 'page' started")) == 1
            assert sum(1 for t in trail if t.startswith("run ended")) == 1
    finally:
        hook.close()
        worker.stop()
        await stack.stop()
