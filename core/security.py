"""Passwords, session tokens, API keys and HMAC signatures."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from argon2.low_level import Type

try:  # CPython's own SHA-256 (_sha2 from 3.12, _sha256 before): for a short input it skips OpenSSL's per-call
    # algorithm fetch, which costs the gateway several µs a request once its caches went cold between calls.
    from _sha2 import sha256 as _sha256  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # pragma: no cover - depends on the Python version
    try:
        from _sha256 import sha256 as _sha256  # type: ignore[import-not-found,no-redef,unused-ignore]
    except ImportError:
        _sha256 = hashlib.sha256  # type: ignore[assignment,unused-ignore]

# OWASP Password Storage Cheat Sheet, argon2id: m=19 MiB, t=2, p=1.
_hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1, hash_len=32, salt_len=16, type=Type.ID)
# A real hash of a random password: verifying against it when the user does not exist keeps the
# time of a failed login independent of whether the email is registered.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))

JWT_ALGORITHM = "HS256"
USER_TOKEN_PREFIX = "mcpt_"
SERVER_KEY_PREFIX = "mcpk_"


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password: str, password_hash: str | None) -> bool:
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def password_needs_rehash(password_hash: str) -> bool:
    return _hasher.check_needs_rehash(password_hash)


@dataclass(frozen=True)
class SessionClaims:
    user_id: uuid.UUID
    jti: str
    expires_at: datetime


class InvalidToken(Exception):
    pass


def issue_session_token(
    user_id: uuid.UUID,
    *,
    secret: str,
    issuer: str,
    audience: str,
    ttl_seconds: int,
    now: datetime | None = None,
) -> tuple[str, SessionClaims]:
    issued = now or datetime.now(UTC)
    expires = issued + timedelta(seconds=ttl_seconds)
    jti = secrets.token_hex(16)
    payload = {
        "sub": str(user_id),
        "iat": int(issued.timestamp()),
        "nbf": int(issued.timestamp()),
        "exp": int(expires.timestamp()),
        "iss": issuer,
        "aud": audience,
        "jti": jti,
    }
    token = jwt.encode(payload, secret, algorithm=JWT_ALGORITHM)
    return token, SessionClaims(user_id=user_id, jti=jti, expires_at=expires)


def decode_session_token(token: str, *, secret: str, issuer: str, audience: str) -> SessionClaims:
    try:
        payload = jwt.decode(
            token,
            secret,
            algorithms=[JWT_ALGORITHM],
            issuer=issuer,
            audience=audience,
            options={"require": ["exp", "iat", "iss", "aud", "sub", "jti"]},
            leeway=5,
        )
        return SessionClaims(
            user_id=uuid.UUID(payload["sub"]),
            jti=str(payload["jti"]),
            expires_at=datetime.fromtimestamp(payload["exp"], UTC),
        )
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        raise InvalidToken(str(exc)) from None


def generate_secret_token(prefix: str) -> str:
    """A CSPRNG token with a recognisable prefix (so leaked keys are easy to spot and scan for)."""
    return prefix + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    # API tokens carry 256 bits of randomness, so a fast hash is enough: no dictionary to attack.
    return _sha256(token.encode()).hexdigest()


def sha256_hex(data: bytes) -> str:
    """The SHA-256 of `data` in hex (what hash_token gives for the token's UTF-8 bytes)."""
    return _sha256(data).hexdigest()


def token_matches(token: str, expected_hash: str) -> bool:
    return hmac.compare_digest(hash_token(token), expected_hash)


def display_prefix(token: str) -> str:
    return token[:12]


def sign_payload(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(secret: str, body: bytes, signature: str) -> bool:
    return hmac.compare_digest(sign_payload(secret, body), signature)
