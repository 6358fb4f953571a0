"""Promotions on the real stack: one digest dev -> staging -> prod, with verification (an evaluation run
that certifies it) in dev, two release-manager approvals under four-eyes in staging, and a soak and a
promotion window in prod; out-of-order promotions are a 409 that says why; auto-promotion, holds,
rejected digests, abort and stage rollback; every workflow filterable by McpStage/McpKind/McpDigest."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

from api.routes import promotions as promotion_routes
from core import temporal as attributes
from core.models import Deployment
from runtimes.process import ProcessExecutor
from tests.integration.governance.test_evaluations import TESTS, add_tests
from tests.integration.governance.test_governance import RELEASE, grant
from tests.support import everything
from tests.support.hostile import local_wheel
from tests.support.mcp_client import call_tool
from tests.support.sse import EventStream
from tests.support.stack import Stack, WorkerProcess, deploy

GOLD = {"tier": "gold", "requirement": "smoke"}


async def new_server(owner: httpx.AsyncClient, prefix: str, source: dict[str, Any] | None = None) -> dict[str, Any]:
    created = await owner.post(
        "/api/servers",
        json={"name": f"{prefix}-{uuid.uuid4().hex[:6]}", "source": source or everything.source()},
    )
    assert created.status_code == 201, created.text
    server: dict[str, Any] = created.json()
    return server


async def until_promotion(
    client: httpx.AsyncClient, promotion_id: str, *wanted: str, bound: float = 180
) -> dict[str, Any]:
    deadline = time.monotonic() + bound
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = (await client.get(f"/api/promotions/{promotion_id}")).json()
        if body["status"] in wanted:
            return body
        await asyncio.sleep(0.2)
    raise AssertionError(f"promotion {promotion_id} never became {' or '.join(wanted)}: {body}")


def window_around_now() -> dict[str, Any]:
    """An allow window open from an hour ago to two hours from now (UTC), whatever the time of day."""
    now = datetime.now(UTC)
    start, end = now - timedelta(hours=1), now + timedelta(hours=2)
    return {"kind": "allow", "start": start.strftime("%H:%M"), "end": end.strftime("%H:%M")}


async def deployments_of(stack: Stack, server_id: str) -> list[tuple[str, str]]:
    """(status, package version) of each of the server's deployments, oldest first."""
    engine = create_async_engine(stack.settings.database_url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                select(Deployment.status, Deployment.spec)
                .where(Deployment.server_id == uuid.UUID(server_id))
                .order_by(Deployment.seq)
            )
            return [(status, spec["source"]["version"]) for status, spec in rows]
    finally:
        await engine.dispose()


async def test_a_digest_goes_dev_staging_prod_verified_approved_soaked_in_window(stack: Stack) -> None:
    everything.build_wheel()
    owner, owner_user = await stack.user()
    rm1, rm1_user = await stack.user()
    rm2, rm2_user = await stack.user()
    outsider, _ = await stack.user()
    async with owner, rm1, rm2, outsider:
        for person in (owner_user, rm1_user, rm2_user):
            await grant(stack, person, "release-manager")
        dev, staging, prod = [await new_server(owner, name) for name in ("dev", "staging", "prod")]
        await add_tests(owner, dev["id"], TESTS[:2])
        definition = await owner.post("/api/governance/workflows", json={"name": "staging", "steps": [RELEASE]})
        assert definition.status_code == 201, definition.text
        stages = [
            {"name": "dev", "servers": [dev["id"]], "verification": {**GOLD, "valid_days": 7}},
            {
                "name": "staging",
                "servers": [staging["id"]],
                "required_certifications": [GOLD],
                "governance_workflow_id": definition.json()["id"],
            },
            {"name": "prod", "servers": [prod["id"]], "soak_seconds": 1, "windows": [window_around_now()]},
        ]
        # A stage naming someone else's server, or a server in two stages, is refused.
        foreign = await outsider.post("/api/promotions/tracks", json={"name": "t", "stages": stages})
        assert foreign.status_code == 404, foreign.text
        twice = [stages[0], {**stages[1], "servers": [dev["id"]]}]
        assert (await owner.post("/api/promotions/tracks", json={"name": "t", "stages": twice})).status_code == 422
        created = await owner.post("/api/promotions/tracks", json={"name": "release", "stages": stages})
        assert created.status_code == 201, created.text
        track = created.json()
        assert track["current"] == {"dev": None, "staging": None, "prod": None}

        first = await deploy(owner, dev["id"])
        assert first["status"] == "running", first
        # Out of order: not active in staging yet.
        early = await owner.post(
            "/api/promotions/schedule", json={"track_id": track["id"], "stage": "prod", "deployment_id": first["id"]}
        )
        assert early.status_code == 409 and "promotion:not-active:staging" in early.text, early.text

        # dev: the server already runs the digest; the verification run certifies it.
        into_dev = await owner.post(
            "/api/promotions/schedule", json={"track_id": track["id"], "stage": "dev", "deployment_id": first["id"]}
        )
        assert into_dev.status_code == 202, into_dev.text
        subject = into_dev.json()["subject"]
        assert subject == f"pypi:{everything.NAME}@{everything.VERSION}"
        dev_done = await until_promotion(owner, into_dev.json()["id"], "active", "failed")
        assert dev_done["status"] == "active", dev_done
        assert dev_done["evaluation_run_id"] and dev_done["deployments"] == {dev["id"]: first["id"]}
        certified = (await owner.get(f"/api/servers/{dev['id']}/certifications")).json()["data"]
        assert [(c["status"], c["subject"]) for c in certified] == [("pass", subject)]
        again = await owner.post(
            "/api/promotions/schedule", json={"track_id": track["id"], "stage": "dev", "subject": subject}
        )
        assert again.status_code == 409 and "already active" in again.text

        # staging: two release managers, the requester (a release manager too) refused under four-eyes.
        into_staging = await owner.post(
            "/api/promotions/schedule", json={"track_id": track["id"], "stage": "staging", "subject": subject}
        )
        assert into_staging.status_code == 202, into_staging.text
        promotion = await until_promotion(owner, into_staging.json()["id"], "awaiting_approval")
        own = await owner.post(f"/api/promotions/{promotion['id']}/approve", json={"comment": "mine"})
        assert own.status_code == 403 and "four eyes" in own.text, own.text
        stranger = await outsider.post(f"/api/promotions/{promotion['id']}/approve")
        assert stranger.status_code == 404, stranger.text
        assert (await rm1.post(f"/api/promotions/{promotion['id']}/approve")).status_code == 200
        duplicate = await rm1.post(f"/api/promotions/{promotion['id']}/approve")
        assert duplicate.status_code == 409, duplicate.text
        assert (await rm2.post(f"/api/promotions/{promotion['id']}/approve")).status_code == 200
        staged = await until_promotion(owner, promotion["id"], "active", "failed", "rejected")
        assert staged["status"] == "active", staged
        closed = await rm2.post(f"/api/promotions/{promotion['id']}/approve")
        assert closed.status_code == 409, closed.text
        audit = (await owner.get(f"/api/governance/runs/{staged['governance_run_id']}")).json()["audit"]
        refused = [a for a in audit if not a["accepted"]]
        assert [a["actor"] for a in refused] == [owner_user["email"], rm1_user["email"], rm2_user["email"]]

        # prod: a soak after staging and an open window, then the deployment.
        into_prod = await owner.post(
            "/api/promotions/schedule", json={"track_id": track["id"], "stage": "prod", "subject": subject}
        )
        assert into_prod.status_code == 202, into_prod.text
        produced = await until_promotion(owner, into_prod.json()["id"], "active", "failed")
        assert produced["status"] == "active", produced
        assert "evaluation:certified:gold:smoke" not in produced["notes"]  # prod requires nothing itself

        # The same digest runs in all three, with one deployment per stage.
        listed = (await owner.get(f"/api/promotions/tracks/{track['id']}")).json()
        assert listed["current"] == {"dev": subject, "staging": subject, "prod": subject}
        for server in (dev, staging, prod):
            assert await deployments_of(stack, server["id"]) == [("running", everything.VERSION)]
            gateway = f"{stack.base_url}/mcp/{server['slug']}"
            assert await call_tool(gateway, server["api_key"], "echo", {"text": "x"}) == "echo: x"
        history = (await owner.get("/api/promotions/history", params={"track_id": track["id"]})).json()["data"]
        assert [(p["stage"], p["status"]) for p in history] == [
            ("prod", "active"),
            ("staging", "active"),
            ("dev", "active"),
        ]
        only = (await owner.get("/api/promotions/history", params={"stage": "staging", "status": "active"})).json()
        assert [p["id"] for p in only["data"]] == [promotion["id"]]
        assert (await outsider.get("/api/promotions/history")).json()["count"] == 0
        assert (await outsider.get(f"/api/promotions/{promotion['id']}")).status_code == 404

        # Every workflow of it is filterable in the Temporal UI by stage, kind and digest.
        client = await stack.state.temporal()
        query = f"McpStage = 'prod' AND McpKind = 'promotion' AND McpDigest = '{subject}'"
        # (Other tests promote the same package version into stages named prod too.)
        assert produced["workflow_id"] in [w.id async for w in client.list_workflows(query)]
        staged_deploys = [
            w
            async for w in client.list_workflows(
                f"McpStage = 'prod' AND McpKind = 'deploy' AND McpServerId = '{prod['id']}'"
            )
        ]
        assert len(staged_deploys) == 1
        assert staged_deploys[0].typed_search_attributes.get(attributes.DIGEST) == subject
        governed = [w.id async for w in client.list_workflows("McpStage = 'staging' AND McpKind = 'governance'")]
        assert f"governance-{staged['governance_run_id']}" in governed
        for server in (dev, staging, prod):
            await owner.delete(f"/api/servers/{server['id']}")


async def test_auto_promotion_hold_rejection_abort_and_rollback(stack: Stack) -> None:
    everything.build_wheel()
    second = f"{everything.VERSION}.1"
    local_wheel(everything.NAME, second, everything.SOURCE, "mcphost-everything")
    owner, _ = await stack.user()
    async with owner:
        dev, staging = await new_server(owner, "dev"), await new_server(owner, "staging")
        stages = [
            {"name": "dev", "servers": [dev["id"]]},
            {"name": "staging", "servers": [staging["id"]], "auto_promote": True},
        ]
        track = (await owner.post("/api/promotions/tracks", json={"name": "auto", "stages": stages})).json()
        first = await deploy(owner, dev["id"])
        into_dev = await owner.post(
            "/api/promotions/schedule", json={"track_id": track["id"], "stage": "dev", "deployment_id": first["id"]}
        )
        assert into_dev.status_code == 202, into_dev.text
        subject_a = into_dev.json()["subject"]
        await until_promotion(owner, into_dev.json()["id"], "active")
        # Active in dev: staging takes it by itself.
        deadline = time.monotonic() + 180
        while True:
            auto = (await owner.get("/api/promotions/history", params={"stage": "staging"})).json()["data"]
            if auto and auto[0]["status"] == "active":
                break
            assert time.monotonic() < deadline, auto
            await asyncio.sleep(0.2)
        assert auto[0]["kind"] == "auto" and auto[0]["subject"] == subject_a

        # Version B: staging's auto-promotion held, so B stays in dev.
        held = await owner.post(f"/api/promotions/tracks/{track['id']}/stages/staging/hold")
        assert held.status_code == 200 and held.json()["held"] == ["staging"]
        patched = await owner.patch(
            f"/api/servers/{dev['id']}", json={"source": {**everything.source(), "version": second}}
        )
        assert patched.status_code == 200, patched.text
        b_deploy = await deploy(owner, dev["id"])
        assert b_deploy["status"] == "running", b_deploy
        into_dev_b = await owner.post(
            "/api/promotions/schedule", json={"track_id": track["id"], "stage": "dev", "deployment_id": b_deploy["id"]}
        )
        subject_b = into_dev_b.json()["subject"]
        assert subject_b.endswith(f"@{second}")
        await until_promotion(owner, into_dev_b.json()["id"], "active")
        staging_history = (await owner.get("/api/promotions/history", params={"stage": "staging"})).json()["data"]
        assert [p["subject"] for p in staging_history] == [subject_a]
        released = await owner.delete(f"/api/promotions/tracks/{track['id']}/stages/staging/hold")
        assert released.json()["held"] == []

        # B promoted by hand into staging, then the stage rolled back to A.
        into_staging = await owner.post(
            "/api/promotions/schedule", json={"track_id": track["id"], "stage": "staging", "subject": subject_b}
        )
        assert into_staging.status_code == 202, into_staging.text
        await until_promotion(owner, into_staging.json()["id"], "active")
        rolled = await owner.post(f"/api/promotions/tracks/{track['id']}/stages/staging/rollback")
        assert rolled.status_code == 202, rolled.text
        assert rolled.json()["kind"] == "rollback" and rolled.json()["subject"] == subject_a
        await until_promotion(owner, rolled.json()["id"], "active")
        assert (await owner.get(f"/api/promotions/{into_staging.json()['id']}")).json()["status"] == "rolled_back"
        gateway = f"{stack.base_url}/mcp/{staging['slug']}"
        assert await call_tool(gateway, staging["api_key"], "echo", {"text": "a"}) == "echo: a"
        versions = await deployments_of(stack, staging["id"])
        assert [v for _, v in versions] == [everything.VERSION, second, everything.VERSION], versions
        assert versions[-1][0] == "running"

        # B rejected on the track: never promoted there again, by hand or automatically.
        rejected = await owner.post(
            f"/api/promotions/tracks/{track['id']}/rejections", json={"subject": subject_b, "reason": "leaks memory"}
        )
        assert rejected.status_code == 201, rejected.text
        refused = await owner.post(
            "/api/promotions/schedule", json={"track_id": track["id"], "stage": "staging", "subject": subject_b}
        )
        assert refused.status_code == 409 and "leaks memory" in refused.text, refused.text
        rejections = (await owner.get(f"/api/promotions/tracks/{track['id']}/rejections")).json()["data"]
        assert [r["subject"] for r in rejections] == [subject_b]
        # Auto-promoted workflows are filterable like the others.
        client = await stack.state.temporal()
        autos = [
            w.id
            async for w in client.list_workflows(
                f"McpKind = 'promotion' AND McpStage = 'staging' AND McpDigest = '{subject_a}'"
            )
        ]
        assert auto[-1]["workflow_id"] in autos, autos
        gone = await owner.delete(f"/api/promotions/tracks/{track['id']}")
        assert gone.status_code == 204, gone.text
        assert (await owner.get(f"/api/promotions/tracks/{track['id']}")).status_code == 404

        for server in (dev, staging):
            await owner.delete(f"/api/servers/{server['id']}")


@pytest.mark.timeout(900)
async def test_a_git_server_is_promoted_by_its_image_digest_built_once(
    database_url: str,
    temporal_address: str,
    process_state_dir: Any,
    docker_engine: Any,
    git_server: Any,
    registry: Any,
    workdir: Any,
) -> None:
    from tests.integration.builds.test_git_builds import platform, registry_settings
    from tests.support.components import ECHO_IMAGE

    docker_engine.ensure_echo_image()
    base = {
        "database_url": database_url,
        "temporal_address": temporal_address,
        "state_dir": process_state_dir,
        "docker_host": docker_engine.url,
        "git_allow_insecure_urls": True,
    }
    name = f"promoted-git-{uuid.uuid4().hex[:6]}"
    git_server.publish(name, {"Dockerfile": f"FROM {ECHO_IMAGE}\nEXPOSE 8080\n"})
    source = {"type": "git", "repo_url": git_server.url(name)}
    async with platform(base, **registry_settings(registry, workdir)) as stack:
        owner, owner_user = await stack.user()
        rm1, rm1_user = await stack.user()
        rm2, rm2_user = await stack.user()
        async with owner, rm1, rm2:
            for person in (owner_user, rm1_user, rm2_user):
                await grant(stack, person, "release-manager")
            dev, staging, prod = [await new_server(owner, n, source) for n in ("dev", "staging", "prod")]
            await add_tests(
                owner,
                dev["id"],
                [{"name": "echo", "tool": "echo", "arguments": {"text": "hi"},
                  "expectation": {"kind": "exact", "value": "echo: hi"}}],
            )  # fmt: skip
            definition = await owner.post("/api/governance/workflows", json={"name": "gate", "steps": [RELEASE]})
            stages = [
                {"name": "dev", "servers": [dev["id"]], "verification": {**GOLD, "valid_days": 7}},
                {
                    "name": "staging",
                    "servers": [staging["id"]],
                    "required_certifications": [GOLD],
                    "governance_workflow_id": definition.json()["id"],
                },
                {
                    "name": "prod",
                    "servers": [prod["id"]],
                    "required_certifications": [GOLD],
                    "soak_seconds": 1,
                    "windows": [window_around_now()],
                },
            ]
            track = (await owner.post("/api/promotions/tracks", json={"name": "git", "stages": stages})).json()
            built = await deploy(owner, dev["id"], timeout=600)
            assert built["status"] == "running", built
            digest = built["image_digest"]
            assert digest and digest.startswith("sha256:")

            async def promote(stage: str, **what: str) -> dict[str, Any]:
                asked = await owner.post(
                    "/api/promotions/schedule", json={"track_id": track["id"], "stage": stage, **what}
                )
                assert asked.status_code == 202, asked.text
                return dict(asked.json())

            dev_promotion = await promote("dev", deployment_id=built["id"])
            assert dev_promotion["subject"] == digest
            assert (await until_promotion(owner, dev_promotion["id"], "active", "failed", bound=300))[
                "status"
            ] == "active"
            staging_promotion = await promote("staging", subject=digest)
            await until_promotion(owner, staging_promotion["id"], "awaiting_approval")
            assert (await owner.post(f"/api/promotions/{staging_promotion['id']}/approve")).status_code == 403
            for approver in (rm1, rm2):
                assert (await approver.post(f"/api/promotions/{staging_promotion['id']}/approve")).status_code == 200
            staged = await until_promotion(owner, staging_promotion["id"], "active", "failed", bound=300)
            assert staged["status"] == "active", staged
            assert "evaluation:certified:gold:smoke" in staged["notes"]
            prod_promotion = await promote("prod", subject=digest)
            done = await until_promotion(owner, prod_promotion["id"], "active", "failed", bound=300)
            assert done["status"] == "active", done

            # One deployment per stage, all of the same digest; staging and prod reused dev's build.
            for server in (dev, staging, prod):
                deployments = (await owner.get(f"/api/servers/{server['id']}/deployments")).json()["data"]
                assert [(d["status"], d["image_digest"]) for d in deployments] == [("running", digest)], deployments
                gateway = f"{stack.base_url}/mcp/{server['slug']}"
                assert await call_tool(gateway, server["api_key"], "echo", {"text": "x"}) == "echo: x"
            for server, promoted in ((staging, staged), (prod, done)):
                detail = (await owner.get(f"/api/deployments/{promoted['deployments'][server['id']]}")).json()
                build = next(s for s in detail["steps"] if s["step"] == "build")
                assert build["message"].startswith("reused the artifact"), build
            # The build, push and supervisor children are filterable by kind too; the stage's by stage.
            client = await stack.state.temporal()
            for kind in ("build", "push"):
                found = [
                    w.id async for w in client.list_workflows(f"McpKind = '{kind}' AND McpServerId = '{dev['id']}'")
                ]
                assert found == [f"{kind}-{built['id']}"], (kind, found)
            staged_deploys = [w.id async for w in client.list_workflows("McpStage = 'staging' AND McpKind = 'deploy'")]
            assert f"deploy-{staging['id']}-1" in staged_deploys
            for server in (dev, staging, prod):
                await owner.delete(f"/api/servers/{server['id']}")


async def test_a_worker_killed_during_the_deploy_step_ends_active_once(api_only: tuple[Stack, WorkerProcess]) -> None:
    """SIGKILL the worker while a promotion's stage deployments are under way: a new worker carries on, the
    promotion ends `active` once, and each stage server has one deployment and one instance."""
    stack, worker = api_only
    everything.build_wheel()
    executor = ProcessExecutor(stack.settings.state_dir / "process")
    owner, _ = await stack.user()
    async with owner:
        origin = await new_server(owner, "origin")
        first, second = await new_server(owner, "edge-a"), await new_server(owner, "edge-b")
        stages = [{"name": "edge", "servers": [first["id"], second["id"]]}]
        track = (await owner.post("/api/promotions/tracks", json={"name": "kill", "stages": stages})).json()
        built = await deploy(owner, origin["id"])
        asked = await owner.post(
            "/api/promotions/schedule", json={"track_id": track["id"], "stage": "edge", "deployment_id": built["id"]}
        )
        assert asked.status_code == 202, asked.text
        promotion_id = asked.json()["id"]
        deadline = time.monotonic() + 120
        while True:
            body = (await owner.get(f"/api/promotions/{promotion_id}")).json()
            if body["step"] == "deploy" and len(body["deployments"]) == 2:
                steps = [
                    (await owner.get(f"/api/deployments/{d}")).json()["step"] for d in body["deployments"].values()
                ]
                if any(s in ("prepare", "launch", "health_check") for s in steps):
                    break
            assert time.monotonic() < deadline, body
            await asyncio.sleep(0.05)
        worker.kill()
        assert (await owner.get(f"/api/promotions/{promotion_id}")).json()["status"] == "approved"
        worker.start()
        done = await until_promotion(owner, promotion_id, "active", "failed", bound=240)
        assert done["status"] == "active", done
        for server in (first, second):
            listed = (await owner.get(f"/api/servers/{server['id']}/deployments")).json()["data"]
            assert [d["status"] for d in listed] == ["running"], listed
            assert {d["id"] for d in listed} == {done["deployments"][server["id"]]}
            assert len(await executor.instances(server["id"])) == 1
        client = await stack.state.temporal()
        runs = [w async for w in client.list_workflows(f"WorkflowId = '{done['workflow_id']}'")]
        assert len(runs) == 1
        history = (await owner.get("/api/promotions/history", params={"track_id": track["id"]})).json()
        assert history["count"] == 1
        for server in (origin, first, second):
            await owner.delete(f"/api/servers/{server['id']}")


async def test_one_promotion_at_a_time_per_stage_abort_reject_and_the_stream(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The promotion's stream looks again only when notified: each event below was announced by its record.
    monkeypatch.setattr(promotion_routes, "RECHECK_SECONDS", 3600.0)
    """A second digest waits for the stage while the first awaits approval; aborting the first lets the second
    go on; a reject vote ends it `rejected`; the stream shows each change and ends."""
    everything.build_wheel()
    second = f"{everything.VERSION}.1"
    local_wheel(everything.NAME, second, everything.SOURCE, "mcphost-everything")
    owner, _ = await stack.user()
    approver, approver_user = await stack.user()
    async with owner, approver:
        origin_a = await new_server(owner, "a")
        origin_b = await new_server(owner, "b", {**everything.source(), "version": second})
        target = await new_server(owner, "gated")
        steps = [{"kind": "approval", "name": "go", "users": [approver_user["email"]]}]
        definition = (await owner.post("/api/governance/workflows", json={"name": "q", "steps": steps})).json()
        stages = [{"name": "gated", "servers": [target["id"]], "governance_workflow_id": definition["id"]}]
        track = (await owner.post("/api/promotions/tracks", json={"name": "queue", "stages": stages})).json()
        deployed_a, deployed_b = await deploy(owner, origin_a["id"]), await deploy(owner, origin_b["id"])

        async def schedule(deployment: dict[str, Any]) -> dict[str, Any]:
            asked = await owner.post(
                "/api/promotions/schedule",
                json={"track_id": track["id"], "stage": "gated", "deployment_id": deployment["id"]},
            )
            assert asked.status_code == 202, asked.text
            return dict(asked.json())

        first = await schedule(deployed_a)
        await until_promotion(owner, first["id"], "awaiting_approval")
        busy = await owner.delete(f"/api/promotions/tracks/{track['id']}")
        assert busy.status_code == 409 and "abort it first" in busy.text, busy.text
        queued = await schedule(deployed_b)
        assert (await schedule(deployed_b))["id"] == queued["id"]  # asking again returns the open one
        async with EventStream(owner, f"/api/promotions/{queued['id']}/stream") as events:
            _, seen = await events.until(lambda name, _: name == "promotion")
            assert (seen["status"], seen["step"]) == ("scheduled", "queued"), seen
            # Once it has asked for its turn (and been told to wait), it is still queued behind the first.
            client = await stack.state.temporal()
            handle = client.get_workflow_handle(queued["workflow_id"])
            deadline = time.monotonic() + 60
            while True:
                history = await handle.fetch_history()
                if any(e.HasField("activity_task_completed_event_attributes") for e in history.events[1:]) and any(
                    e.HasField("timer_started_event_attributes") for e in history.events
                ):
                    break
                assert time.monotonic() < deadline, "the queued promotion never asked for its turn"
                await asyncio.sleep(0.1)
            assert (await owner.get(f"/api/promotions/{queued['id']}")).json()["status"] == "scheduled"
            aborted = await owner.post(f"/api/promotions/{first['id']}/abort")
            assert aborted.status_code == 202, aborted.text
            ended = await until_promotion(owner, first["id"], "aborted")
            governance = (await owner.get(f"/api/governance/runs/{ended['governance_run_id']}")).json()
            assert governance["status"] == "cancelled", governance
            assert (await owner.post(f"/api/promotions/{first['id']}/abort")).status_code == 409
            await events.until(lambda name, data: name == "promotion" and data["status"] == "awaiting_approval")
            no = await approver.post(f"/api/promotions/{queued['id']}/reject", json={"comment": "not today"})
            assert no.status_code == 200, no.text
            _, end = await events.until(lambda name, _: name == "end")
            assert end["status"] == "rejected"
        rejected = (await owner.get(f"/api/promotions/{queued['id']}")).json()
        assert rejected["status"] == "rejected" and rejected["reason"].startswith("governance rejected"), rejected
        # Nothing was deployed to the gated server.
        assert await deployments_of(stack, target["id"]) == []
        for server in (origin_a, origin_b, target):
            await owner.delete(f"/api/servers/{server['id']}")
