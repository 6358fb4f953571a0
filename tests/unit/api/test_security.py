from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import jwt
import pytest

from core import security

SECRET = "s" * 64


def test_passwords_use_argon2id_with_owasp_parameters() -> None:
    hashed = security.hash_password("correct horse battery")
    assert hashed.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert security.verify_password("correct horse battery", hashed)
    assert not security.verify_password("wrong", hashed)
    assert not security.verify_password("anything", None)
    assert not security.verify_password("anything", "not-a-hash")


def test_session_token_roundtrip_and_pinned_claims() -> None:
    uid = uuid.uuid4()
    token, claims = security.issue_session_token(uid, secret=SECRET, issuer="i", audience="a", ttl_seconds=60)
    decoded = security.decode_session_token(token, secret=SECRET, issuer="i", audience="a")
    assert decoded.user_id == uid and decoded.jti == claims.jti
    with pytest.raises(security.InvalidToken):
        security.decode_session_token(token, secret=SECRET, issuer="other", audience="a")
    with pytest.raises(security.InvalidToken):
        security.decode_session_token(token, secret="t" * 40, issuer="i", audience="a")


def test_expired_and_other_algorithm_tokens_are_rejected() -> None:
    uid = uuid.uuid4()
    past = datetime.now(UTC) - timedelta(hours=2)
    old, _ = security.issue_session_token(uid, secret=SECRET, issuer="i", audience="a", ttl_seconds=60, now=past)
    with pytest.raises(security.InvalidToken):
        security.decode_session_token(old, secret=SECRET, issuer="i", audience="a")
    payload = jwt.decode(old, options={"verify_signature": False})
    payload["exp"] = int((datetime.now(UTC) + timedelta(hours=1)).timestamp())
    hs512 = jwt.encode(payload, SECRET, algorithm="HS512")
    with pytest.raises(security.InvalidToken):
        security.decode_session_token(hs512, secret=SECRET, issuer="i", audience="a")


def test_api_keys_are_random_prefixed_and_compared_by_hash() -> None:
    a, b = security.generate_secret_token("mcpk_"), security.generate_secret_token("mcpk_")
    assert a != b and a.startswith("mcpk_") and len(a) >= 45
    stored = security.hash_token(a)
    assert a not in stored
    assert security.token_matches(a, stored)
    assert not security.token_matches(b, stored)


def test_hmac_signatures() -> None:
    signature = security.sign_payload("key", b"body")
    assert signature.startswith("sha256=")
    assert security.verify_signature("key", b"body", signature)
    assert not security.verify_signature("key", b"body!", signature)
    assert not security.verify_signature("other", b"body", signature)


@pytest.mark.parametrize("data", [b"", b"mcph_s_" + b"k" * 43, bytes(range(256)) * 9])
def test_sha256_hex_is_sha256(data: bytes) -> None:
    # The gateway hashes keys and session ids with CPython's own SHA-256: the same digests as OpenSSL's, which
    # the stored key hashes were made with.
    import hashlib

    assert security.sha256_hex(data) == hashlib.sha256(data).hexdigest()
    assert security.hash_token("mcph_s_ä") == hashlib.sha256("mcph_s_ä".encode()).hexdigest()
