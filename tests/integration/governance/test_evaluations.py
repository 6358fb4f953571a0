"""Evaluations on the real stack: tests of every expectation kind run by EvaluationRunWorkflow against a
real MCP server deployed by the platform, a candidate revision launched beside the serving one and removed
after, the scoreboard and the ranking, and the boundaries (validation, tenancy, idempotency)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from runtimes.process import ProcessExecutor
from tests.support import everything
from tests.support.stack import Stack, WorkerProcess, wait_deployment

TESTS: list[dict[str, Any]] = [
    {
        "name": "echo exact",
        "tool": "echo",
        "arguments": {"text": "hi"},
        "expectation": {"kind": "exact", "value": "echo: hi"},
    },
    {
        "name": "echo similar",
        "tool": "echo",
        "arguments": {"text": "hello wrld"},
        "expectation": {"kind": "similarity", "value": "echo: hello world", "threshold": 0.9},
    },
    {
        "name": "add subset",
        "tool": "add",
        "arguments": {"a": 2, "b": 3},
        "expectation": {"kind": "json_subset", "value": {"result": 5}},
    },
    {
        "name": "add schema",
        "tool": "add",
        "arguments": {"a": 2, "b": 3},
        "expectation": {
            "kind": "json_schema",
            "schema": {"type": "object", "properties": {"result": {"type": "integer"}}, "required": ["result"]},
        },
    },
    {"name": "revision", "tool": "revision", "arguments": {}, "expectation": {"kind": "regex", "pattern": "^1$"}},
    {
        "name": "error expected",
        "tool": "test_error_handling",
        "arguments": {},
        "expect_error": True,
        "expectation": {"kind": "contains", "value": "error", "ignore_case": True},
    },
]
FAILING: list[dict[str, Any]] = [
    {"name": "wrong", "tool": "echo", "arguments": {"text": "hi"}, "expectation": {"kind": "contains", "value": "bye"}},
    {
        "name": "too slow",
        "tool": "sleep",
        "arguments": {"seconds": 30},
        "timeout_seconds": 0.5,
        "expectation": {"kind": "contains", "value": "slept"},
    },
    {"name": "no such tool", "tool": "nope", "arguments": {}, "expectation": {"kind": "exact", "value": ""}},
]


async def until_ended(owner: httpx.AsyncClient, run_id: str, bound: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        response = await owner.get(f"/api/evaluations/{run_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        if body["run"]["status"] not in ("pending", "running"):
            return body
        await asyncio.sleep(0.2)
    raise AssertionError(f"evaluation run {run_id} still under way after {bound} s")


async def add_tests(owner: httpx.AsyncClient, server_id: str, tests: list[dict[str, Any]]) -> None:
    for test in tests:
        created = await owner.post(f"/api/servers/{server_id}/eval/tests", json=test)
        assert created.status_code == 201, created.text


async def evaluate(owner: httpx.AsyncClient, server_id: str, **body: Any) -> dict[str, Any]:
    started = await owner.post(f"/api/servers/{server_id}/eval/run", json=body)
    assert started.status_code == 202, started.text
    return await until_ended(owner, started.json()["id"])


async def new_server(owner: httpx.AsyncClient, revision: str = "1") -> dict[str, Any]:
    created = await owner.post(
        "/api/servers",
        json={
            "name": f"eval-{uuid.uuid4().hex[:8]}",
            "source": everything.source(),
            "env": {"TEST_REVISION": revision},
        },
    )
    assert created.status_code == 201, created.text
    return dict(created.json())


async def deploy(owner: httpx.AsyncClient, server_id: str) -> dict[str, Any]:
    started = await owner.post(f"/api/servers/{server_id}/deployments")
    assert started.status_code == 202, started.text
    done = await wait_deployment(owner, started.json()["deployment_id"])
    assert done["status"] == "running", done
    return done


@pytest.fixture
async def owner(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    everything.build_wheel()
    client, _ = await stack.user()
    async with client:
        yield client


async def test_a_run_scores_every_kind_of_expectation_against_the_serving_revision(
    stack: Stack, owner: httpx.AsyncClient
) -> None:
    server = await new_server(owner)
    deployed = await deploy(owner, server["id"])
    await add_tests(owner, server["id"], TESTS)
    listed = (await owner.get(f"/api/servers/{server['id']}/eval/tests")).json()
    assert [t["name"] for t in listed["data"]] == [t["name"] for t in TESTS]

    passed = await evaluate(owner, server["id"])
    run = passed["run"]
    assert run["status"] == "passed", passed
    assert run["deployment_id"] == deployed["id"] and run["seq"] == deployed["seq"] and not run["candidate"]
    assert (run["total"], run["passed"]) == (len(TESTS), len(TESTS))
    by_name = {r["test_name"]: r for r in passed["results"]}
    assert set(by_name) == {t["name"] for t in TESTS}
    assert by_name["echo exact"]["excerpt"] == "echo: hi" and by_name["echo exact"]["score"] == 1.0
    assert 0.9 <= by_name["echo similar"]["score"] < 1.0
    assert all(r["latency_ms"] is not None and r["latency_ms"] > 0 for r in passed["results"])
    assert run["score"] is not None and run["score"] > 0.9

    # Failures are results, not errors: a wrong answer, a timeout and an unknown tool each say what happened.
    await add_tests(owner, server["id"], FAILING)
    failed = await evaluate(owner, server["id"])
    assert failed["run"]["status"] == "failed", failed
    assert failed["run"]["total"] == len(TESTS) + len(FAILING)
    assert failed["run"]["passed"] == len(TESTS)
    details = {r["test_name"]: r for r in failed["results"]}
    assert "not in the answer" in details["wrong"]["detail"]
    assert "within 0.5 s" in details["too slow"]["detail"], details["too slow"]
    assert not details["no such tool"]["passed"]
    # The newest run's results are the server's results; an earlier one can be named.
    latest = (await owner.get(f"/api/servers/{server['id']}/eval/results")).json()
    assert latest["run"]["id"] == failed["run"]["id"]
    earlier = (await owner.get(f"/api/servers/{server['id']}/eval/results", params={"run_id": run["id"]})).json()
    assert earlier["run"]["status"] == "passed"
    # Only the named tests run when asked.
    subset = await evaluate(owner, server["id"], tests=["echo exact", "wrong"])
    assert subset["run"]["total"] == 2 and subset["run"]["passed"] == 1
    # The workflow is filterable by kind in the Temporal UI.
    temporal = await stack.state.temporal()
    found = [w.id async for w in temporal.list_workflows(f"McpKind = 'evaluation' AND McpServerId = '{server['id']}'")]
    assert f"eval-{run['id']}" in found
    await owner.delete(f"/api/servers/{server['id']}")


async def test_a_candidate_revision_is_launched_beside_the_serving_one_and_removed_after(
    stack: Stack, owner: httpx.AsyncClient
) -> None:
    server = await new_server(owner, revision="1")
    first = await deploy(owner, server["id"])
    patched = await owner.patch(f"/api/servers/{server['id']}", json={"env": {"TEST_REVISION": "2"}})
    assert patched.status_code == 200, patched.text
    second = await deploy(owner, server["id"])
    await add_tests(
        owner,
        server["id"],
        [{"name": "revision", "tool": "revision", "arguments": {}, "expectation": {"kind": "exact", "value": "1"}}],
    )
    executor = ProcessExecutor(stack.settings.state_dir / "process")
    before = {i.deployment_id for i in await executor.instances(server["id"])}
    assert first["id"] not in before, "the first revision was retired by the second"

    candidate = await evaluate(owner, server["id"], deployment_id=first["id"])
    assert candidate["run"]["status"] == "passed", candidate
    assert candidate["run"]["candidate"] and candidate["run"]["seq"] == first["seq"]
    assert candidate["results"][0]["excerpt"] == "1"
    # The serving revision never changed, and the candidate is gone again.
    serving = await evaluate(owner, server["id"])
    assert serving["run"]["status"] == "failed" and serving["results"][0]["excerpt"] == "2"
    assert serving["run"]["deployment_id"] == second["id"]
    after = {i.deployment_id for i in await executor.instances(server["id"])}
    assert after == before, (before, after)
    detail = (await owner.get(f"/api/servers/{server['id']}")).json()
    assert detail["active_deployment_id"] == second["id"]
    await owner.delete(f"/api/servers/{server['id']}")


async def test_scoreboard_summary_and_boundaries(stack: Stack, owner: httpx.AsyncClient) -> None:
    good, poor = await new_server(owner), await new_server(owner)
    for server in (good, poor):
        await deploy(owner, server["id"])
    await add_tests(owner, good["id"], TESTS[:2])
    await add_tests(owner, poor["id"], [TESTS[0], FAILING[0]])
    good_run = await evaluate(owner, good["id"])
    poor_run = await evaluate(owner, poor["id"])

    board = (await owner.get("/api/evaluations")).json()
    ids = [row["id"] for row in board["data"]]
    assert ids.index(poor_run["run"]["id"]) < ids.index(good_run["run"]["id"])  # newest first
    assert {row["server_name"] for row in board["data"]} >= {good["name"], poor["name"]}
    failed_only = (await owner.get("/api/evaluations", params={"status": "failed"})).json()
    assert {row["status"] for row in failed_only["data"]} == {"failed"}
    assert (await owner.get("/api/evaluations", params={"status": "great"})).status_code == 422
    summary = (await owner.get("/api/evaluations/summary")).json()["data"]
    ranked = [row["server_id"] for row in summary]
    assert ranked.index(good["id"]) < ranked.index(poor["id"])
    assert summary[ranked.index(good["id"])]["rank"] < summary[ranked.index(poor["id"])]["rank"]
    assert summary[ranked.index(poor["id"])]["average_score"] == pytest.approx(0.5)

    # Another tenant sees none of it: its runs, tests and results are not found, its board is empty.
    other, _ = await stack.user()
    async with other:
        assert (await other.get(f"/api/evaluations/{good_run['run']['id']}")).status_code == 404
        assert (await other.get(f"/api/servers/{good['id']}/eval/tests")).status_code == 404
        assert (await other.post(f"/api/servers/{good['id']}/eval/run", json={})).status_code == 404
        assert (await other.get("/api/evaluations")).json()["count"] == 0
        assert (await other.get("/api/evaluations/summary")).json()["count"] == 0

    # Bad input is a 4xx that says what to fix, and records nothing.
    path = f"/api/servers/{good['id']}/eval/tests"
    bad_regex = await owner.post(path, json={**TESTS[0], "name": "x", "expectation": {"kind": "regex", "pattern": "("}})
    assert bad_regex.status_code == 422 and "regular expression" in bad_regex.text
    duplicate = await owner.post(path, json=TESTS[0])
    assert duplicate.status_code == 409 and "already has a test" in duplicate.text
    unknown = await owner.post(f"/api/servers/{good['id']}/eval/run", json={"tests": ["missing"]})
    assert unknown.status_code == 422 and "missing" in unknown.text
    elsewhere = await owner.post(f"/api/servers/{good['id']}/eval/run", json={"deployment_id": str(uuid.uuid4())})
    assert elsewhere.status_code == 404
    assert (await owner.get(path)).json()["count"] == 2
    empty = await new_server(owner)
    await deploy(owner, empty["id"])
    none = await owner.post(f"/api/servers/{empty['id']}/eval/run")
    assert none.status_code == 409 and "no evaluation tests" in none.text

    # The same Idempotency-Key returns the same run and starts nothing more.
    headers = {"Idempotency-Key": f"eval-{uuid.uuid4()}"}
    once = await owner.post(f"/api/servers/{good['id']}/eval/run", json={}, headers=headers)
    again = await owner.post(f"/api/servers/{good['id']}/eval/run", json={}, headers=headers)
    assert once.status_code == again.status_code == 202
    assert once.json()["id"] == again.json()["id"] and again.headers.get("idempotent-replayed") == "true"
    await until_ended(owner, once.json()["id"])
    runs = (await owner.get(f"/api/servers/{good['id']}/eval/runs")).json()
    assert runs["count"] == 2

    # A test can be deleted; runs that used it keep their results.
    test_id = (await owner.get(path)).json()["data"][0]["id"]
    assert (await owner.delete(f"{path}/{test_id}")).status_code == 204
    assert (await owner.delete(f"{path}/{test_id}")).status_code == 404
    kept = (await owner.get(f"/api/evaluations/{good_run['run']['id']}")).json()
    assert len(kept["results"]) == 2
    for server in (good, poor, empty):
        await owner.delete(f"/api/servers/{server['id']}")


async def test_a_worker_killed_mid_run_ends_the_run_correct_once(api_only: tuple[Stack, WorkerProcess]) -> None:
    """SIGKILL the worker while a candidate's tests are being called: a new worker carries on with the
    tests not yet recorded, each result is written once, and the candidate is removed after."""
    stack, worker = api_only
    everything.build_wheel()
    executor = ProcessExecutor(stack.settings.state_dir / "process")
    owner, _ = await stack.user()
    async with owner:
        server = await new_server(owner, revision="1")
        first = await deploy(owner, server["id"])
        await owner.patch(f"/api/servers/{server['id']}", json={"env": {"TEST_REVISION": "2"}})
        second = await deploy(owner, server["id"])
        slow = [
            {
                "name": f"slow {n}",
                "tool": "sleep",
                "arguments": {"seconds": 1},
                "expectation": {"kind": "exact", "value": "slept 1 s"},
            }
            for n in range(4)
        ]
        await add_tests(owner, server["id"], [*slow, TESTS[4]])
        started = await owner.post(f"/api/servers/{server['id']}/eval/run", json={"deployment_id": first["id"]})
        assert started.status_code == 202, started.text
        run_id = started.json()["id"]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            results = (await owner.get(f"/api/evaluations/{run_id}")).json()["results"]
            if results:
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("no result was recorded")
        worker.kill()
        assert (await owner.get(f"/api/evaluations/{run_id}")).json()["run"]["status"] == "running"
        worker.start()
        done = await until_ended(owner, run_id, bound=240)
        assert done["run"]["status"] == "passed", done
        names = [r["test_name"] for r in done["results"]]
        assert sorted(names) == sorted(t["name"] for t in [*slow, TESTS[4]]), names  # each once
        assert done["run"]["candidate"] and done["run"]["total"] == 5
        running = {i.deployment_id for i in await executor.instances(server["id"])}
        assert running == {second["id"]}, running
        await owner.delete(f"/api/servers/{server['id']}")
