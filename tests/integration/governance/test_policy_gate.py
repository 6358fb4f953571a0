"""The policy gate on the real stack: a server that requires a certification blocks the deployment of an
uncertified artifact before anything is launched; an evaluation run of the blocked revision (launched as a
candidate) certifies it, and the next deployment is allowed; an expired certification blocks again while the
serving revision keeps serving."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import create_async_engine

from core.models import Certification
from runtimes.process import ProcessExecutor
from tests.integration.governance.test_evaluations import TESTS, add_tests, until_ended
from tests.support import everything
from tests.support.mcp_client import call_tool
from tests.support.stack import Stack, wait_deployment

GOLD = {"tier": "gold", "requirement": "smoke"}


async def start_deploy(owner: httpx.AsyncClient, server_id: str) -> dict[str, Any]:
    started = await owner.post(f"/api/servers/{server_id}/deployments")
    assert started.status_code == 202, started.text
    return await wait_deployment(owner, started.json()["deployment_id"])


@pytest.fixture
async def owner(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    everything.build_wheel()
    client, _ = await stack.user()
    async with client:
        yield client


async def until_certified(owner: httpx.AsyncClient, server_id: str, run_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        listed = (await owner.get(f"/api/servers/{server_id}/certifications")).json()["data"]
        mine = [c for c in listed if c["evaluation_run_id"] == run_id]
        if mine and mine[0]["status"] != "pending":
            return dict(mine[0])
        await asyncio.sleep(0.1)
    raise AssertionError("the certification never settled")


async def test_uncertified_is_blocked_certified_is_allowed_expired_is_blocked(
    stack: Stack, owner: httpx.AsyncClient
) -> None:
    created = await owner.post(
        "/api/servers",
        json={
            "name": f"gated-{uuid.uuid4().hex[:8]}",
            "source": everything.source(),
            "env": {"TEST_REVISION": "1"},
            "required_certifications": [GOLD],
        },
    )
    assert created.status_code == 201, created.text
    server = created.json()
    assert server["required_certifications"] == [GOLD]
    executor = ProcessExecutor(stack.settings.state_dir / "process")

    blocked = await start_deploy(owner, server["id"])
    assert blocked["status"] == "blocked", blocked
    assert "evaluation:missing:gold:smoke" in blocked["error"]
    steps = {s["step"]: s["status"] for s in blocked["steps"]}
    assert steps == {"resolve": "succeeded", "policy": "failed"}, steps  # nothing prepared or launched
    assert await executor.instances(server["id"]) == []
    assert (await owner.get(f"/api/servers/{server['id']}")).json()["status"] == "blocked"
    decisions = (await owner.get(f"/api/servers/{server['id']}/policy-decisions")).json()["data"]
    assert decisions[0]["deployment_id"] == blocked["id"] and not decisions[0]["allowed"]
    assert decisions[0]["notes"] == ["evaluation:missing:gold:smoke"]
    subject = decisions[0]["subject"]
    assert subject == f"pypi:{everything.NAME}@{everything.VERSION}"

    # Certify the blocked revision: it is launched beside (nothing serves yet), evaluated and removed.
    await add_tests(owner, server["id"], TESTS[:3])
    run = await owner.post(
        f"/api/servers/{server['id']}/eval/run",
        json={"deployment_id": blocked["id"], "certify": {**GOLD, "valid_days": 7}},
    )
    assert run.status_code == 202, run.text
    assert run.json()["subject"] == subject
    done = await until_ended(owner, run.json()["id"])
    assert done["run"]["status"] == "passed" and done["run"]["candidate"], done
    certification = await until_certified(owner, server["id"], run.json()["id"])
    assert certification["status"] == "pass" and certification["subject"] == subject
    assert certification["valid_until"] > certification["valid_from"]
    assert await executor.instances(server["id"]) == []

    allowed = await start_deploy(owner, server["id"])
    assert allowed["status"] == "running", allowed
    policy = next(s for s in allowed["steps"] if s["step"] == "policy")
    assert policy["status"] == "succeeded" and "evaluation:certified:gold:smoke" in policy["message"]
    gateway = f"{stack.base_url}/mcp/{server['slug']}"
    assert await call_tool(gateway, server["api_key"], "revision", {}) == "1"

    # Once the certification expires, the next deployment is blocked; the serving revision keeps serving.
    engine = create_async_engine(stack.settings.database_url)
    async with engine.begin() as conn:
        await conn.execute(
            update(Certification)
            .where(Certification.id == uuid.UUID(certification["id"]))
            .values(valid_until=Certification.valid_from)
        )
    await engine.dispose()
    expired = await start_deploy(owner, server["id"])
    assert expired["status"] == "blocked" and "evaluation:expired:gold:smoke" in expired["error"], expired
    detail = (await owner.get(f"/api/servers/{server['id']}")).json()
    assert detail["status"] == "running" and detail["active_deployment_id"] == allowed["id"]
    assert await call_tool(gateway, server["api_key"], "revision", {}) == "1"

    # Retrying the certifying run asks for a new certification of the same artifact, valid again.
    retried = await owner.post(f"/api/evaluations/{run.json()['id']}/retry")
    assert retried.status_code == 202, retried.text
    assert retried.json()["id"] != run.json()["id"]
    await until_ended(owner, retried.json()["id"])
    again = await until_certified(owner, server["id"], retried.json()["id"])
    assert again["status"] == "pass"
    assert (await start_deploy(owner, server["id"]))["status"] == "running"
    await owner.delete(f"/api/servers/{server['id']}")


async def test_an_unpinned_package_cannot_be_certified_and_stays_blocked(owner: httpx.AsyncClient) -> None:
    source = {**everything.source()}
    source.pop("version")
    created = await owner.post(
        "/api/servers",
        json={"name": f"unpinned-{uuid.uuid4().hex[:8]}", "source": source, "required_certifications": [GOLD]},
    )
    assert created.status_code == 201, created.text
    server = created.json()
    blocked = await start_deploy(owner, server["id"])
    assert blocked["status"] == "blocked" and "evaluation:unpinned" in blocked["error"], blocked
    assert "pin an exact version" in blocked["error"]
    await add_tests(owner, server["id"], TESTS[:1])
    refused = await owner.post(
        f"/api/servers/{server['id']}/eval/run", json={"deployment_id": blocked["id"], "certify": GOLD}
    )
    assert refused.status_code == 409 and "no immutable artifact" in refused.text
    # Bad requirement names are a 422 that says which field.
    bad = await owner.patch(f"/api/servers/{server['id']}", json={"required_certifications": [{"tier": "Gold!"}]})
    assert bad.status_code == 422 and "tier" in bad.text
    # Lifting the requirement lets the same source deploy, and no policy step is recorded.
    lifted = await owner.patch(f"/api/servers/{server['id']}", json={"required_certifications": []})
    assert lifted.status_code == 200, lifted.text
    free = await start_deploy(owner, server["id"])
    assert free["status"] == "running", free
    assert "policy" not in {s["step"] for s in free["steps"]}
    await owner.delete(f"/api/servers/{server['id']}")


@pytest.mark.timeout(900)
async def test_a_git_build_is_gated_and_certified_by_its_image_digest(
    database_url: str, temporal_address: str, process_state_dir: Any, docker_engine: Any, git_server: Any
) -> None:
    from tests.integration.builds.test_git_builds import platform
    from tests.support.components import ECHO_IMAGE

    docker_engine.ensure_echo_image()
    settings = {
        "database_url": database_url,
        "temporal_address": temporal_address,
        "state_dir": process_state_dir,
        "docker_host": docker_engine.url,
        "git_allow_insecure_urls": True,
    }
    name = f"gated-git-{uuid.uuid4().hex[:6]}"
    git_server.publish(name, {"Dockerfile": f"FROM {ECHO_IMAGE}\nEXPOSE 8080\n"})
    async with platform(settings) as stack:
        owner, _ = await stack.user()
        async with owner:
            created = await owner.post(
                "/api/servers",
                json={
                    "name": name,
                    "source": {"type": "git", "repo_url": git_server.url(name)},
                    "required_certifications": [GOLD],
                },
            )
            assert created.status_code == 201, created.text
            server = created.json()
            blocked = await start_deploy(owner, server["id"])
            assert blocked["status"] == "blocked", blocked
            steps = [s["step"] for s in blocked["steps"]]
            assert "build" in steps and "launch" not in steps and steps[-1] == "policy", steps
            assert blocked["image_digest"] and blocked["image_digest"].startswith("sha256:")
            decision = (await owner.get(f"/api/servers/{server['id']}/policy-decisions")).json()["data"][0]
            assert decision["subject"] == blocked["image_digest"]

            await add_tests(
                owner,
                server["id"],
                [{"name": "echo", "tool": "echo", "arguments": {"text": "hi"},
                  "expectation": {"kind": "exact", "value": "echo: hi"}}],
            )  # fmt: skip
            artifact_id = blocked["artifact_id"]
            run = await owner.post(f"/api/artifacts/{artifact_id}/evaluations", json={**GOLD, "valid_days": 1})
            assert run.status_code == 202, run.text
            done = await until_ended(owner, run.json()["id"], bound=300)
            assert done["run"]["status"] == "passed" and done["run"]["candidate"], done
            certified = (await owner.get(f"/api/artifacts/{artifact_id}/evaluations")).json()["data"]
            assert [(c["status"], c["subject"]) for c in certified] == [("pass", blocked["image_digest"])]

            # The same commit again reuses the artifact: the same digest, now certified.
            allowed = await start_deploy(owner, server["id"])
            assert allowed["status"] == "running", allowed
            assert allowed["image_digest"] == blocked["image_digest"]
            assert (await owner.get(f"/api/artifacts/{uuid.uuid4()}/evaluations")).status_code == 404
            await owner.delete(f"/api/servers/{server['id']}")
