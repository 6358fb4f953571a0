"""Config env is sealed in the database, never returned, and re-sealed under a new key on rotation."""

from __future__ import annotations

import json
import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from core.crypto import EnvCipher, SecretsKeyError, reseal_all
from tests.support.stack import Stack, deploy

VALUE = "s3cr3t-" + uuid.uuid4().hex


async def stored(database_url: str, server_id: str) -> tuple[str, str]:
    engine = create_async_engine(database_url)
    async with engine.connect() as conn:
        env = await conn.scalar(text("select env::text from servers where id = :id"), {"id": server_id})
        spec = await conn.scalar(
            text("select coalesce(string_agg(spec::text, ''), '') from deployments where server_id = :id"),
            {"id": server_id},
        )
    await engine.dispose()
    return str(env), str(spec)


async def stored_webhook_secret(database_url: str, server_id: str) -> str:
    engine = create_async_engine(database_url)
    async with engine.connect() as conn:
        value = await conn.scalar(text("select webhook_secret from servers where id = :id"), {"id": server_id})
    await engine.dispose()
    return str(value)


async def test_env_is_sealed_at_rest_and_rotates(stack: Stack) -> None:
    client, _ = await stack.user()
    async with client:
        created = await client.post(
            "/api/servers",
            json={
                "name": f"sealed-{uuid.uuid4().hex[:6]}",
                "source": {"type": "package", "package": "mcp-server-time"},
                "env": {"UPSTREAM_TOKEN": VALUE},
            },
        )
        assert created.status_code == 201, created.text
        server = created.json()
        assert server["env_keys"] == ["UPSTREAM_TOKEN"] and VALUE not in created.text
        # The deployed server gets the value (decrypted by the worker only).
        deployed = await deploy(client, server["id"])
        assert deployed["status"] == "running", deployed
        shown = await client.get(f"/api/servers/{server['id']}")
        assert VALUE not in shown.text

    env, spec = await stored(stack.settings.database_url, server["id"])
    assert VALUE not in env and '"sealed"' in env
    assert VALUE not in spec and '"sealed"' in spec
    current = stack.settings.env_cipher()

    # Rotation: a new key goes first, reseal rewrites everything under it, the old key alone no longer opens.
    new_key = "rotated-" + "r" * 40
    old_keys = stack.settings.secrets_key.get_secret_value()
    rotating = EnvCipher([new_key, old_keys])
    servers, _ = await reseal_all(stack.settings.database_url, rotating)
    assert servers >= 1
    env_after, _ = await stored(stack.settings.database_url, server["id"])
    envelope = json.loads(env_after)
    assert EnvCipher([new_key]).open(envelope) == {"UPSTREAM_TOKEN": VALUE}
    with pytest.raises(SecretsKeyError):
        current.open(envelope)
    hook = await stored_webhook_secret(stack.settings.database_url, server["id"])
    assert EnvCipher([new_key]).open_text(hook) == server["webhook_secret"]  # moved to the new key too
    # Put the test platform's key back in front, for the other tests sharing this database.
    await reseal_all(stack.settings.database_url, EnvCipher([old_keys, new_key]))
    env_back, _ = await stored(stack.settings.database_url, server["id"])
    assert current.open(json.loads(env_back)) == {"UPSTREAM_TOKEN": VALUE}


async def test_webhook_secret_is_sealed_shown_once_and_rotates(stack: Stack) -> None:
    client, _ = await stack.user()
    async with client:
        created = await client.post(
            "/api/servers",
            json={"name": f"hook-{uuid.uuid4().hex[:6]}", "source": {"type": "package", "package": "mcp-server-time"}},
        )
        assert created.status_code == 201, created.text
        server = created.json()
        secret = server["webhook_secret"]
        assert len(secret) == 64
        assert secret not in (await client.get(f"/api/servers/{server['id']}")).text

        async def column() -> str:
            return await stored_webhook_secret(stack.settings.database_url, server["id"])

        cipher = stack.settings.env_cipher()
        stored_secret = await column()
        assert secret not in stored_secret and stored_secret.startswith("fernet:")
        assert cipher.open_text(stored_secret) == secret

        rotated = await client.post(f"/api/servers/{server['id']}/webhook-secret")
        assert rotated.status_code == 200, rotated.text
        new_secret = rotated.json()["webhook_secret"]
        assert new_secret != secret and cipher.open_text(await column()) == new_secret
        logs = (await client.get(f"/api/servers/{server['id']}/logs")).json()["data"]
        assert any("webhook secret rotated" in line["message"] for line in logs)
        assert new_secret not in json.dumps(logs)

        # Another user's server is a 404, and its secret stays as it was.
        other, _ = await stack.user()
        async with other:
            assert (await other.post(f"/api/servers/{server['id']}/webhook-secret")).status_code == 404
        assert cipher.open_text(await column()) == new_secret
