"""Server secrets sealed at rest: config env (API keys for upstream services, tokens...) and webhook
secrets (the HMAC check needs them in clear, so they are encrypted rather than hashed).

Env maps are stored as an envelope `{"sealed": "<Fernet token>", "names": [...]}` in the same JSONB
columns (`servers.env`, `deployments.spec.env`): values are encrypted and authenticated
(AES-128-CBC + HMAC-SHA256, Fernet), names stay readable so the API can list them. Keys come from
SECRETS_KEY: one or more comma-separated passphrases of 32+ characters, each stretched with
HKDF-SHA256; the first seals, all open, so keys rotate by putting the new one first
(`mcphost secrets reseal` then rewrites every stored env with it). Single secrets are stored as
`fernet:<token>`.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SEALED = "sealed"
TEXT_PREFIX = "fernet:"
_WRONG_KEY = (
    "cannot be decrypted with SECRETS_KEY: the key changed? Put the previous key after the new one "
    "(SECRETS_KEY=new,old)"
)


class SecretsKeyError(ValueError):
    """Stored secrets cannot be opened with the configured keys."""


def split_keys(value: str) -> list[str]:
    return [key.strip() for key in value.split(",") if key.strip()]


def _fernet(passphrase: str) -> Fernet:
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"mcphost/secrets", info=b"config env v1").derive(
        passphrase.encode()
    )
    return Fernet(base64.urlsafe_b64encode(derived))


def is_sealed(stored: Any) -> bool:
    return isinstance(stored, dict) and isinstance(stored.get(SEALED), str)


class EnvCipher:
    def __init__(self, keys: list[str]) -> None:
        if not keys:
            raise ValueError("at least one secrets key is needed")
        self._primary = _fernet(keys[0])
        self._all = MultiFernet([_fernet(k) for k in keys])

    def seal(self, env: dict[str, str]) -> dict[str, Any]:
        token = self._primary.encrypt(json.dumps(env, sort_keys=True).encode()).decode()
        return {SEALED: token, "names": sorted(env)}

    def open(self, stored: dict[str, Any] | None) -> dict[str, str]:
        """The env map from its stored form (an envelope; or a plain map written before sealing)."""
        if not stored:
            return {}
        if not is_sealed(stored):
            return {str(k): str(v) for k, v in stored.items()}
        try:
            return dict(json.loads(self._all.decrypt(stored[SEALED].encode())))
        except InvalidToken:
            raise SecretsKeyError(f"stored config env {_WRONG_KEY}") from None

    def reseal(self, stored: dict[str, Any] | None) -> dict[str, Any] | None:
        """The same env sealed with the primary key (None when nothing needs rewriting)."""
        if not stored:
            return None
        if is_sealed(stored):
            try:
                self._primary.decrypt(stored[SEALED].encode())
                return None  # already sealed with the primary key
            except InvalidToken:
                pass
        return self.seal(self.open(stored))

    def seal_text(self, value: str) -> str:
        return TEXT_PREFIX + self._primary.encrypt(value.encode()).decode()

    def open_text(self, stored: str) -> str:
        """A single secret from its stored form (sealed; or in clear, as written before sealing)."""
        if not stored.startswith(TEXT_PREFIX):
            return stored
        try:
            return self._all.decrypt(stored[len(TEXT_PREFIX) :].encode()).decode()
        except InvalidToken:
            raise SecretsKeyError(f"a stored secret {_WRONG_KEY}") from None

    def reseal_text(self, stored: str) -> str | None:
        """The same secret sealed with the primary key (None when nothing needs rewriting)."""
        if stored.startswith(TEXT_PREFIX):
            try:
                self._primary.decrypt(stored[len(TEXT_PREFIX) :].encode())
                return None
            except InvalidToken:
                pass
        return self.seal_text(self.open_text(stored))


def env_names(stored: dict[str, Any] | None) -> list[str]:
    if not stored:
        return []
    if is_sealed(stored):
        return sorted(str(n) for n in stored.get("names") or [])
    return sorted(stored)


async def reseal_all(database_url: str, cipher: EnvCipher) -> tuple[int, int]:
    """Rewrite every stored secret (server env, webhook secrets, sealed server secrets, deployment env)
    sealed with the primary key: seals what was written in clear before sealing existed, and moves
    secrets to a new key after a rotation. Returns the number of servers and deployments rewritten."""
    from sqlalchemy import select

    from core.db import make_engine, make_sessionmaker
    from core.models import Deployment, Server, ServerSecret

    engine = make_engine(database_url, pool_size=1)
    servers = deployments = 0
    try:
        async with make_sessionmaker(engine)() as session, session.begin():
            for server in await session.scalars(select(Server).with_for_update()):
                sealed = cipher.reseal(server.env)
                webhook = cipher.reseal_text(server.webhook_secret)
                if sealed is not None:
                    server.env = sealed
                if webhook is not None:
                    server.webhook_secret = webhook
                servers += sealed is not None or webhook is not None
            for secret in await session.scalars(
                select(ServerSecret).where(ServerSecret.backend == "sealed").with_for_update()
            ):
                resealed = cipher.reseal_text(secret.sealed or "")
                if resealed is not None:
                    secret.sealed = resealed
            for deployment in await session.scalars(select(Deployment).with_for_update()):
                sealed = cipher.reseal(deployment.spec.get("env"))
                if sealed is not None:
                    deployment.spec, deployments = {**deployment.spec, "env": sealed}, deployments + 1
    finally:
        await engine.dispose()
    return servers, deployments
