"""Server secrets, sealed in Postgres and in Vault KV v2 (real OpenBao): write-only values a real MCP
server gets at launch, rotation, audit, and the values absent from responses, logs, the database (or
only as a path and version) and Temporal history."""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

import hvac
import hvac.exceptions
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.support import everything
from tests.support.components import OpenBao
from tests.support.mcp_client import call_tool
from tests.support.stack import Stack, deploy

pytestmark = pytest.mark.timeout(300)


async def stored(stack: Stack, server_id: str) -> list[dict[str, Any]]:
    engine = create_async_engine(stack.settings.database_url)
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "select name, backend, sealed, vault_path, vault_version, version from server_secrets "
                    "where server_id = :id order by name"
                ),
                {"id": server_id},
            )
        ).all()
    await engine.dispose()
    return [dict(r._mapping) for r in rows]


def vault_value(openbao: OpenBao, stack: Stack, path: str, version: int | None = None) -> str:
    client = hvac.Client(url=openbao.addr, token=OpenBao.TOKEN)
    read = client.secrets.kv.v2.read_secret_version(
        path=path, version=version, mount_point=stack.settings.vault_mount, raise_on_deleted_version=True
    )
    return str(read["data"]["data"]["value"])


async def histories(stack: Stack, workflow_ids: list[str]) -> str:
    from temporalio.client import Client

    temporal = await Client.connect(stack.settings.temporal_address)
    dumps = []
    for workflow_id in workflow_ids:
        history = await temporal.get_workflow_handle(workflow_id).fetch_history()
        dumps.append(json.dumps(history.to_json_dict()))
    return "\n".join(dumps)


@pytest.fixture(params=["sealed", "vault"])
def backend(request: pytest.FixtureRequest) -> tuple[str, Stack, OpenBao | None]:
    """The platform keeping secrets sealed in Postgres, then one keeping them in Vault (real OpenBao)."""
    if request.param == "sealed":
        return "sealed", request.getfixturevalue("stack"), None
    return "vault", request.getfixturevalue("vault_stack"), request.getfixturevalue("openbao")


async def test_a_secret_reaches_the_server_and_nothing_else(
    backend: tuple[str, Stack, OpenBao | None], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    kind, stack, openbao = backend
    everything.build_wheel()
    first, second = "v1-" + uuid.uuid4().hex, "v2-" + uuid.uuid4().hex
    owner, me = await stack.user()
    outsider, _ = await stack.user()
    async with owner, outsider:
        created = await owner.post(
            "/api/servers",
            json={
                "name": f"secret-{uuid.uuid4().hex[:8]}",
                "source": everything.source(),
                "env": {"TEST_REVISION": "from-config-env"},
            },
        )
        assert created.status_code == 201, created.text
        server = created.json()
        base = f"/api/servers/{server['id']}/secrets"

        made = await owner.post(base, json={"name": "TEST_REVISION", "value": first})
        assert made.status_code == 201, made.text
        assert first not in made.text
        assert made.json()["backend"] == kind and made.json()["version"] == 1

        # What is refused, and that it says why.
        for body, status, words in [
            ({"name": "TEST_REVISION", "value": "x"}, 409, "exists"),
            ({"name": "PORT", "value": "x"}, 422, "set by the platform"),
            ({"name": "MCPHOST_X", "value": "x"}, 422, "set by the platform"),
            ({"name": "1BAD", "value": "x"}, 422, "not a valid environment variable name"),
            ({"name": "OK", "value": "a\x00b"}, 422, "NUL"),
            ({"name": "OK", "value": "x" * 40000}, 422, ""),
            ({"name": "OK"}, 422, ""),
        ]:
            refused = await owner.post(base, json=body)
            assert refused.status_code == status, (body, refused.text)
            assert words in refused.text
        assert (await owner.put(f"{base}/NOPE", json={"value": "x"})).status_code == 404
        # Another user's server is a 404 for every verb, and changes nothing.
        assert (await outsider.get(base)).status_code == 404
        assert (await outsider.post(base, json={"name": "EVIL", "value": "x"})).status_code == 404
        assert (await outsider.put(f"{base}/TEST_REVISION", json={"value": "x"})).status_code == 404
        assert (await outsider.delete(f"{base}/TEST_REVISION")).status_code == 404

        listed = await owner.get(base)
        assert [s["name"] for s in listed.json()["data"]] == ["TEST_REVISION"] and first not in listed.text

        # At rest: sealed, or only a path and a version in the database and the value in Vault.
        (row,) = await stored(stack, server["id"])
        assert first not in json.dumps(row, default=str)
        if kind == "sealed":
            assert row["sealed"].startswith("fernet:") and row["vault_path"] is None
        else:
            assert openbao is not None and row["sealed"] is None
            assert row["vault_path"] == f"{stack.settings.vault_prefix}/{server['id']}/TEST_REVISION"
            assert vault_value(openbao, stack, row["vault_path"]) == first

        # The server gets the secret (over the config env variable of the same name).
        url = f"{stack.base_url}/mcp/{server['slug']}"
        one = await deploy(owner, server["id"])
        assert one["status"] == "running", one
        assert await call_tool(url, server["api_key"], "revision", {}) == first

        # Rotation: a new version, handed out at the next launch.
        rotated = await owner.put(f"{base}/TEST_REVISION", json={"value": second})
        assert rotated.status_code == 200, rotated.text
        assert rotated.json()["version"] == 2 and second not in rotated.text
        if kind == "vault":
            assert openbao is not None and rotated.json()["vault_version"] == 2
            path = rotated.json()["vault_path"]
            assert vault_value(openbao, stack, path, 1) == first and vault_value(openbao, stack, path) == second
        assert await call_tool(url, server["api_key"], "revision", {}) == first  # until relaunched
        two = await deploy(owner, server["id"])
        assert await call_tool(url, server["api_key"], "revision", {}) == second

        # The audit names who did what, and which launches read the value.
        events = (await owner.get(f"/api/servers/{server['id']}/secret-events")).json()["data"]
        actions = [(e["action"], e["version"], e["actor"]) for e in events]
        assert ("created", 1, me["email"]) in actions and ("rotated", 2, me["email"]) in actions
        injected = {(e["deployment_id"], e["version"]) for e in events if e["action"] == "injected"}
        assert injected == {(one["id"], 1), (two["id"], 2)}
        assert (await outsider.get(f"/api/servers/{server['id']}/secret-events")).status_code == 404

        # Nowhere else: responses, server logs, the platform's own logs, Temporal history.
        seen = [
            (await owner.get(f"/api/servers/{server['id']}")).text,
            (await owner.get(f"/api/deployments/{one['id']}")).text,
            (await owner.get(f"/api/deployments/{two['id']}")).text,
            (await owner.get(f"/api/servers/{server['id']}/logs")).text,
            json.dumps(events),
            caplog.text,
            await histories(stack, [one["workflow_id"], two["workflow_id"]]),
        ]
        assert any("secret TEST_REVISION rotated" in s for s in seen)  # the log line is there...
        for where in seen:
            assert first not in where and second not in where  # ...and the values are not

        # Delete: the secret is gone from the store; the server keeps its config env value from its next launch.
        assert (await owner.delete(f"{base}/TEST_REVISION")).status_code == 204
        assert (await owner.get(f"{base}/TEST_REVISION")).status_code == 404
        assert await stored(stack, server["id"]) == []
        if kind == "vault":
            assert openbao is not None
            with pytest.raises(hvac.exceptions.InvalidPath):
                vault_value(openbao, stack, path)

        # Deleting the server takes its secrets with it (in Vault too).
        again = await owner.post(base, json={"name": "OTHER", "value": first})
        assert again.status_code == 201, again.text
        deleting = await owner.delete(f"/api/servers/{server['id']}")
        assert deleting.status_code == 202, deleting.text
        await until_gone(owner, server["id"])
        assert await stored(stack, server["id"]) == []
        if kind == "vault":
            assert openbao is not None
            with pytest.raises(hvac.exceptions.InvalidPath):
                vault_value(openbao, stack, again.json()["vault_path"])


async def until_gone(owner: Any, server_id: str) -> None:
    import asyncio
    import time

    deadline = time.monotonic() + 90
    while (await owner.get(f"/api/servers/{server_id}")).status_code != 404:
        assert time.monotonic() < deadline, "the server was not deleted"
        await asyncio.sleep(0.2)
