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
    # Put the test platform's key back in front, for the other tests sharing this database.
    await reseal_all(stack.settings.database_url, EnvCipher([old_keys, new_key]))
    env_back, _ = await stored(stack.settings.database_url, server["id"])
    assert current.open(json.loads(env_back)) == {"UPSTREAM_TOKEN": VALUE}
