"""Server records: validation at the boundary, quotas, tenancy, secrets shown once."""

from __future__ import annotations

import uuid

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import create_async_engine

from core.models import Server, User
from core.security import hash_token
from tests.support.stack import Stack

TIME = {"type": "package", "package": "mcp-server-time"}


def _name() -> str:
    return f"srv-{uuid.uuid4().hex[:8]}"


async def _count_servers(stack: Stack) -> int:
    engine = create_async_engine(stack.settings.database_url)
    async with engine.connect() as conn:
        count = await conn.scalar(select(func.count()).select_from(Server))
    await engine.dispose()
    return int(count or 0)


async def _set_quota(stack: Stack, user_id: str, quota: int) -> None:
    engine = create_async_engine(stack.settings.database_url)
    async with engine.begin() as conn:
        await conn.execute(update(User).where(User.id == uuid.UUID(user_id)).values(server_quota=quota))
    await engine.dispose()


async def test_create_returns_secrets_once_and_stores_hashes(stack: Stack) -> None:
    client, _ = await stack.user()
    async with client:
        created = await client.post(
            "/api/servers", json={"name": "My Time Server", "source": TIME, "env": {"TOKEN": "s3cret-value"}}
        )
        assert created.status_code == 201, created.text
        body = created.json()
        assert body["slug"].startswith("my-time-server")
        assert body["api_key"].startswith("mcpk_") and len(body["api_key"]) > 40
        assert len(body["webhook_secret"]) == 64
        assert body["gateway_url"].endswith(f"/mcp/{body['slug']}")
        shown = await client.get(f"/api/servers/{body['id']}")
        assert shown.status_code == 200
        assert "api_key" not in shown.json() and "webhook_secret" not in shown.json()
        assert shown.json()["env_keys"] == ["TOKEN"]
        assert "s3cret-value" not in shown.text
        listed = await client.get("/api/servers")
        assert "s3cret-value" not in listed.text and body["api_key"] not in listed.text
    engine = create_async_engine(stack.settings.database_url)
    async with engine.connect() as conn:
        stored = await conn.scalar(select(Server.api_key_hash).where(Server.id == uuid.UUID(body["id"])))
    await engine.dispose()
    assert stored == hash_token(body["api_key"]) and body["api_key"] not in stored


async def test_invalid_input_is_a_clear_4xx_and_writes_nothing(stack: Stack) -> None:
    client, _ = await stack.user()
    before = await _count_servers(stack)
    cases = {
        "invalid slug": ({"name": _name(), "slug": "Bad_Slug!", "source": TIME}, 422, "slug"),
        "slug with trailing dash": ({"name": _name(), "slug": "abc-", "source": TIME}, 422, "slug"),
        "bad package name": ({"name": _name(), "source": {"type": "package", "package": "-rf /"}}, 422, "package"),
        "bad image ref": ({"name": _name(), "source": {"type": "image", "image": "UPPER/Case image"}}, 422, "image"),
        "unknown source type": ({"name": _name(), "source": {"type": "ftp", "url": "x"}}, 422, "source"),
        "reserved env": ({"name": _name(), "source": TIME, "env": {"PORT": "1"}}, 422, "PORT"),
        "bad env name": ({"name": _name(), "source": TIME, "env": {"1BAD": "x"}}, 422, "environment"),
        "unknown runtime": ({"name": _name(), "source": TIME, "runtime": "lxc"}, 422, "runtime"),
        "unconfigured virtual machines": (
            {"name": _name(), "source": {"type": "image", "image": "a/b:1"}, "runtime": "virtual-machine"},
            422,
            "VM_LIBVIRT_URI",
        ),
        "unconfigured kubernetes": (
            {"name": _name(), "source": {"type": "image", "image": "a/b:1"}, "runtime": "kubernetes"},
            422,
            "K8S_KUBECONFIG",
        ),
        "package on kubernetes": ({"name": _name(), "source": TIME, "runtime": "kubernetes"}, 422, "not configured"),
        "image on process": (
            {"name": _name(), "source": {"type": "image", "image": "a/b:1"}, "runtime": "process"},
            422,
            "cannot run",
        ),
        "extra field": ({"name": _name(), "source": TIME, "surprise": 1}, 422, "surprise"),
        "empty name": ({"name": "   ", "source": TIME}, 422, "name"),
    }
    async with client:
        for label, (body, status, needle) in cases.items():
            response = await client.post("/api/servers", json=body)
            assert response.status_code == status, (label, response.text)
            assert needle.lower() in response.text.lower(), (label, response.text)
    assert await _count_servers(stack) == before


async def test_command_sources_are_for_admins_only(stack: Stack) -> None:
    client, _ = await stack.user()
    async with client:
        response = await client.post(
            "/api/servers", json={"name": _name(), "source": {"type": "command", "command": "/bin/sh"}}
        )
    assert response.status_code == 403
    assert "administrator" in response.json()["detail"]


async def test_duplicate_name_and_slug_are_409(stack: Stack) -> None:
    client, _ = await stack.user()
    other, _ = await stack.user()
    name = _name()
    async with client, other:
        assert (await client.post("/api/servers", json={"name": name, "source": TIME})).status_code == 201
        same_name = await client.post("/api/servers", json={"name": name, "source": TIME, "slug": _name()})
        assert same_name.status_code == 409 and "named" in same_name.json()["detail"]
        taken_slug = await other.post("/api/servers", json={"name": _name(), "slug": name, "source": TIME})
        assert taken_slug.status_code == 409 and "slug" in taken_slug.json()["detail"]


async def test_quota_is_enforced_with_a_clear_message(stack: Stack) -> None:
    client, user = await stack.user()
    await _set_quota(stack, user["id"], 1)
    async with client:
        assert (await client.post("/api/servers", json={"name": _name(), "source": TIME})).status_code == 201
        over = await client.post("/api/servers", json={"name": _name(), "source": TIME})
        assert over.status_code == 403
        assert "quota" in over.json()["detail"] and "1 of 1" in over.json()["detail"]
        assert (await client.get("/api/servers")).json()["count"] == 1


async def test_another_users_server_is_404_and_admin_sees_all(stack: Stack) -> None:
    owner, _ = await stack.user()
    stranger, _ = await stack.user()
    async with owner, stranger:
        server = (await owner.post("/api/servers", json={"name": _name(), "source": TIME})).json()
        sid = server["id"]
        for method, path in [
            ("GET", f"/api/servers/{sid}"),
            ("PATCH", f"/api/servers/{sid}"),
            ("DELETE", f"/api/servers/{sid}"),
            ("POST", f"/api/servers/{sid}/deployments"),
            ("POST", f"/api/servers/{sid}/stop"),
            ("GET", f"/api/servers/{sid}/capabilities"),
            ("GET", f"/api/servers/{sid}/client-config"),
            ("POST", f"/api/servers/{sid}/api-key"),
        ]:
            response = await stranger.request(method, path, json={} if method == "PATCH" else None)
            assert response.status_code == 404, (method, path, response.text)
        assert sid not in (await stranger.get("/api/servers")).text
        assert (await owner.get(f"/api/servers/{sid}")).status_code == 200
    admin, _ = await stack.user(role="admin")
    async with admin:
        assert (await admin.get(f"/api/servers/{sid}")).status_code == 200
        assert sid in (await admin.get("/api/servers")).text


async def test_patch_updates_and_validates(stack: Stack) -> None:
    client, _ = await stack.user()
    async with client:
        server = (await client.post("/api/servers", json={"name": _name(), "source": TIME})).json()
        patched = await client.patch(
            f"/api/servers/{server['id']}",
            json={"name": "renamed-" + server["name"], "env": {"A": "1"}, "source": {**TIME, "version": "2025.9.25"}},
        )
        assert patched.status_code == 200, patched.text
        assert patched.json()["env_keys"] == ["A"] and patched.json()["source"]["version"] == "2025.9.25"
        bad = await client.patch(f"/api/servers/{server['id']}", json={"source": {"type": "package", "package": ""}})
        assert bad.status_code == 422
        unchanged = await client.get(f"/api/servers/{server['id']}")
        assert unchanged.json()["source"]["version"] == "2025.9.25"
