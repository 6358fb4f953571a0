"""The `mcphost` command, run as a subprocess against the running platform."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from tests.support import everything
from tests.support.cli import Cli
from tests.support.stack import Stack, wait_deployment


async def test_create_deploy_list_logs_and_stop(stack: Stack, tmp_path: Path) -> None:
    client, _ = await stack.user()
    async with client:
        cli = await Cli.for_user(client, stack.base_url, tmp_path)
        name = f"cli-{uuid.uuid4().hex[:6]}"
        created = await cli(
            "servers", "create", name, "--package", "mcp-server-time", "--arg=--local-timezone", "--arg=UTC"
        )
        assert created.code == 0, created.err
        assert "API key:" in created.out and "shown once" in created.out

        deployed = await cli("deploy", name)
        assert deployed.code == 0, deployed.out + deployed.err
        assert "running" in deployed.out and "health_check" in deployed.out
        # It follows the record until it settles: the step after `running` is shown too.
        assert "retire_previous" in deployed.out

        listed = await cli("servers", "list", "--json")
        assert listed.code == 0
        [mine] = [s for s in json.loads(listed.out)["data"] if s["name"] == name]
        assert mine["status"] == "running"

        # A deployment that has ended cannot be cancelled; the CLI says why.
        [deployment] = (await client.get(f"/api/servers/{mine['id']}/deployments")).json()["data"]
        late = await cli("cancel", deployment["id"])
        assert late.code != 0 and "already ended" in late.err, late.out + late.err

        logs = await cli("logs", name)
        assert logs.code == 0 and "serving revision 1" in logs.out

        stopped = await cli("stop", name)
        assert stopped.code == 0 and "stopping" in stopped.out


async def test_bad_input_exits_non_zero_with_the_reason(stack: Stack, tmp_path: Path) -> None:
    client, _ = await stack.user()
    async with client:
        cli = await Cli.for_user(client, stack.base_url, tmp_path)
        both = await cli("servers", "create", "x", "--package", "a", "--image", "b")
        assert both.code == 2 and "exactly one of" in both.err
        bad = await cli("servers", "create", "x", "--git", "ext::sh -c id")
        assert bad.code == 1 and "error 422" in bad.err and "remote helpers" in bad.err
        missing = await cli("deploy", "no-such-server")
        assert missing.code != 0 and "no-such-server" in (missing.out + missing.err)
        nobody = Cli(stack.base_url, "mcpt_not-a-token", tmp_path)
        assert (await nobody("servers", "list")).code == 2


async def test_gateway_keys_from_the_cli(stack: Stack, tmp_path: Path) -> None:
    owner, _ = await stack.user()
    async with owner:
        cli = await Cli.for_user(owner, stack.base_url, tmp_path)
        name = f"keys-{uuid.uuid4().hex[:6]}"
        created = await cli("servers", "create", name, "--package", "mcp-server-time")
        assert created.code == 0, created.err
        made = await cli("keys", "create", name, "bot", "--tool", "get_current_time", "--expires-in-days", "30")
        assert made.code == 0, made.err
        key = made.out.strip().splitlines()[-1]
        assert key.startswith("mcpk_")
        listed = await cli("keys", "list", name, "--json")
        entry = json.loads(listed.out)["data"][0]
        assert entry["name"] == "bot" and entry["tools"] == ["get_current_time"] and key not in listed.out
        again = await cli("keys", "create", name, "bot")
        assert again.code != 0 and "already has a live key" in again.err
        revoked = await cli("keys", "revoke", name, "bot")
        assert revoked.code == 0, revoked.err
        missing = await cli("keys", "revoke", name, "bot")
        assert missing.code == 1 and "no live key" in missing.err


async def test_secrets_set_rotate_list_events_and_rm_from_the_cli(stack: Stack, tmp_path: Path) -> None:
    owner, _ = await stack.user()
    value, rotated = "cli-" + uuid.uuid4().hex, "cli2-" + uuid.uuid4().hex
    async with owner:
        cli = await Cli.for_user(owner, stack.base_url, tmp_path)
        name = f"secrets-{uuid.uuid4().hex[:6]}"
        assert (await cli("servers", "create", name, "--package", "mcp-server-time")).code == 0
        made = await cli("secrets", "set", name, "UPSTREAM_TOKEN", stdin=value.encode() + b"\n")
        assert made.code == 0 and "created (sealed)" in made.err, made.err
        again = await cli("secrets", "set", name, "UPSTREAM_TOKEN", stdin=rotated.encode())
        assert again.code == 0 and "rotated (version 2)" in again.err, again.err
        listed = await cli("secrets", "list", name, "--json")
        (entry,) = json.loads(listed.out)["data"]
        assert entry["name"] == "UPSTREAM_TOKEN" and entry["version"] == 2
        events = await cli("secrets", "events", name)
        assert events.code == 0 and "rotated" in events.out and "created" in events.out
        bad = await cli("secrets", "set", name, "PORT", stdin=b"x")
        assert bad.code != 0 and "set by the platform" in bad.err
        gone = await cli("secrets", "rm", name, "UPSTREAM_TOKEN")
        assert gone.code == 0, gone.err
        missing = await cli("secrets", "rm", name, "UPSTREAM_TOKEN")
        assert missing.code != 0 and "not found" in missing.err
        for result in (made, again, listed, events, bad, gone):
            assert value not in result.out + result.err and rotated not in result.out + result.err


async def test_eval_add_run_results_and_board(stack: Stack, tmp_path: Path) -> None:
    client, _ = await stack.user()
    async with client:
        cli = await Cli.for_user(client, stack.base_url, tmp_path)
        name = f"cli-eval-{uuid.uuid4().hex[:6]}"
        created = await cli(
            "servers", "create", name, "--package", "mcp-server-time", "--arg=--local-timezone", "--arg=UTC"
        )
        assert created.code == 0, created.err
        assert (await cli("deploy", name)).code == 0
        utc = await cli(
            "eval", "add", name, "utc", "--tool", "get_current_time", "--args", '{"timezone": "UTC"}',
            "--expect", 'json_subset:{"timezone": "UTC"}',
        )  # fmt: skip
        assert utc.code == 0, utc.out + utc.err
        schema = tmp_path / "schema.json"
        schema.write_text(json.dumps({"type": "object", "required": ["datetime", "is_dst"]}))
        shaped = await cli(
            "eval", "add", name, "shape", "--tool", "get_current_time", "--args", '{"timezone": "UTC"}',
            "--expect", f"json_schema:@{schema}",
        )  # fmt: skip
        assert shaped.code == 0, shaped.out + shaped.err
        bad = await cli("eval", "add", name, "bad", "--tool", "get_current_time", "--expect", "regex:(")
        assert bad.code != 0 and "regular expression" in bad.err, bad.out + bad.err
        missing = await cli("eval", "add", name, "bad", "--tool", "t", "--expect", f"json_schema:@{tmp_path}/none.json")
        assert missing.code == 2 and "cannot read" in missing.err, missing.out + missing.err
        no_kind = await cli("eval", "add", name, "bad", "--tool", "get_current_time", "--expect", "UTC")
        assert no_kind.code == 2 and "KIND:VALUE" in no_kind.err
        listed = await cli("eval", "tests", name)
        assert listed.code == 0 and "utc" in listed.out and "shape" in listed.out

        ran = await cli("eval", "run", name)
        assert ran.code == 0, ran.out + ran.err
        assert "passed: 2/2 passed" in ran.out and "the serving revision" in ran.out
        again = await cli("eval", "results", name, "--json")
        assert again.code == 0 and json.loads(again.out)["run"]["status"] == "passed"
        board = await cli("eval", "board")
        assert board.code == 0 and name in board.out
        # No version pinned: nothing immutable to certify, and the CLI says so.
        unpinned = await cli("eval", "run", name, "--certify", "gold:smoke")
        assert unpinned.code != 0 and "no immutable artifact" in unpinned.err, unpinned.out + unpinned.err
        certs = await cli("eval", "certifications", name)
        assert certs.code == 0

        assert (await cli("eval", "add", name, "wrong", "--tool", "get_current_time",
                          "--args", '{"timezone": "UTC"}', "--expect", "contains:Mars")).code == 0  # fmt: skip
        failed = await cli("eval", "run", name, "--test", "wrong")
        assert failed.code == 1 and "failed: 0/1 passed" in failed.out, failed.out + failed.err
        removed = await cli("eval", "rm", name, "wrong")
        assert removed.code == 0 and (await cli("eval", "rm", name, "wrong")).code == 1
        assert (await cli("stop", name)).code == 0


async def test_approvals_list_show_approve_and_refusals(stack: Stack, tmp_path: Path) -> None:
    everything.build_wheel()
    owner, _ = await stack.user()
    approver, approver_user = await stack.user()
    async with owner, approver:
        created = await owner.post(
            "/api/servers", json={"name": f"cli-gov-{uuid.uuid4().hex[:6]}", "source": everything.source()}
        )
        server = created.json()
        started = await owner.post(f"/api/servers/{server['id']}/deployments")
        assert (await wait_deployment(owner, started.json()["deployment_id"]))["status"] == "running"
        step = {"kind": "approval", "name": "go", "users": [approver_user["email"]]}
        definition = (await owner.post("/api/governance/workflows", json={"name": "cli", "steps": [step]})).json()
        run = (
            await owner.post(
                f"/api/governance/workflows/{definition['id']}/runs", json={"server_id": server["id"], "tier": "gold"}
            )
        ).json()
        mine = await Cli.for_user(owner, stack.base_url, tmp_path / "owner")
        theirs = await Cli.for_user(approver, stack.base_url, tmp_path / "approver")
        listed = await theirs("approvals", "list")
        assert listed.code == 0 and run["id"] in listed.out, listed.out + listed.err
        refused = await mine("approvals", "approve", run["id"])
        assert refused.code == 1 and "may not vote" in refused.err, refused.out + refused.err
        approved = await theirs("approvals", "approve", run["id"], "-m", "ship it")
        assert approved.code == 0 and "ship it" in approved.out, approved.out + approved.err
        shown = await mine("approvals", "show", run["id"])
        assert shown.code == 0 and "refused" in shown.out and "ship it" in shown.out
        await owner.delete(f"/api/servers/{server['id']}")


async def test_promote_create_track_schedule_follow_history_and_refusals(stack: Stack, tmp_path: Path) -> None:
    everything.build_wheel()
    owner, _ = await stack.user()
    async with owner:
        servers = []
        for stage in ("dev", "prod"):
            created = await owner.post(
                "/api/servers", json={"name": f"cli-{stage}-{uuid.uuid4().hex[:6]}", "source": everything.source()}
            )
            servers.append(created.json())
        started = await owner.post(f"/api/servers/{servers[0]['id']}/deployments")
        deployment = await wait_deployment(owner, started.json()["deployment_id"])
        cli = await Cli.for_user(owner, stack.base_url, tmp_path)
        stages = tmp_path / "stages.json"
        stages.write_text(json.dumps([{"name": "dev", "servers": [servers[0]["id"]]},
                                      {"name": "prod", "servers": [servers[1]["id"]]}]))  # fmt: skip
        unreadable = await cli("promote", "create-track", "rel", "--stages", "@/nonexistent/stages.json")
        assert unreadable.code == 2 and "cannot read" in unreadable.err
        made = await cli("promote", "create-track", "rel", "--stages", f"@{stages}")
        assert made.code == 0 and "dev -> prod" in made.out, made.out + made.err
        early = await cli("promote", "schedule", "rel", "prod", "--deployment", deployment["id"])
        assert early.code == 1 and "promotion:not-active:dev" in early.err, early.out + early.err
        into_dev = await cli("promote", "schedule", "rel", "dev", "--deployment", deployment["id"], "--follow")
        assert into_dev.code == 0 and "active" in into_dev.out, into_dev.out + into_dev.err
        subject = f"pypi:{everything.NAME}@{everything.VERSION}"
        into_prod = await cli("promote", "schedule", "rel", "prod", "--digest", subject, "-f")
        assert into_prod.code == 0 and "deploy" in into_prod.out, into_prod.out + into_prod.err
        history = await cli("promote", "history", "--track", "rel", "--json")
        assert [p["stage"] for p in json.loads(history.out)["data"]] == ["prod", "dev"]
        tracks = await cli("promote", "tracks")
        assert tracks.code == 0 and "prod=pypi" in tracks.out, tracks.out
        rollback = await cli("promote", "rollback", "rel", "prod")
        assert rollback.code == 1 and "no earlier digest" in rollback.err
        deleted = await cli("promote", "delete-track", "rel")
        assert deleted.code == 0 and "deleted track rel" in deleted.out, deleted.out + deleted.err
        for server in servers:
            await owner.delete(f"/api/servers/{server['id']}")
