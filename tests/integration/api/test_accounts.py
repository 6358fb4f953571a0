"""Accounts against the real API and Postgres: registration, sessions, tokens, bad credentials."""

from __future__ import annotations

import time
import uuid

import jwt

from tests.support.stack import PASSWORD, Stack


async def test_health_reports_both_components(stack: Stack) -> None:
    async with stack.client() as client:
        response = await client.get("/api/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "temporal": "ok"}


async def test_register_login_me_and_cookie_session(stack: Stack) -> None:
    email = f"Cookie-{uuid.uuid4().hex[:6]}@Example.com"
    async with stack.client() as client:
        reg = await client.post("/api/register", json={"email": email, "password": PASSWORD})
        assert reg.status_code == 202
        assert PASSWORD not in reg.text and "hash" not in reg.text
        login = await client.post("/api/login", json={"email": email.upper(), "password": PASSWORD})
        assert login.status_code == 200
        cookie = login.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        # The cookie alone authenticates (httpx keeps it in the client's jar).
        me = await client.get("/api/me")
        assert me.status_code == 200
        assert me.json()["email"] == email.lower()
        assert me.json()["role"] == "user"  # only the setup token makes an administrator
        assert me.json()["server_quota"] >= 0


async def test_jwt_claims_are_pinned(stack: Stack) -> None:
    client, user = await stack.user()
    async with client:
        token = client.headers["authorization"].split()[1]
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
    assert header["alg"] == "HS256"
    assert {"exp", "iat", "iss", "aud", "sub", "jti"} <= set(claims)
    assert claims["sub"] == user["id"]


async def test_bad_credentials_and_forged_tokens_are_401(stack: Stack) -> None:
    client, user = await stack.user()
    await client.aclose()
    secret = stack.settings.jwt_secret.get_secret_value()
    now = int(time.time())
    base = {"sub": user["id"], "iss": "mcphost", "aud": "mcphost-api", "jti": "x" * 16, "iat": now, "nbf": now}
    forged = {
        "wrong secret": jwt.encode({**base, "exp": now + 600}, "another-secret-" + "y" * 40, algorithm="HS256"),
        "expired": jwt.encode({**base, "exp": now - 3600, "iat": now - 7200, "nbf": now - 7200}, secret, "HS256"),
        "wrong audience": jwt.encode({**base, "aud": "other", "exp": now + 600}, secret, algorithm="HS256"),
        "no exp": jwt.encode(base, secret, algorithm="HS256"),
        "alg none": jwt.encode({**base, "exp": now + 600}, None, algorithm="none"),  # type: ignore[arg-type]
        "garbage": "not-a-token",
        "unknown api token": "mcpt_" + "a" * 43,
    }
    async with stack.client() as anon:
        wrong = await anon.post("/api/login", json={"email": user["email"], "password": "wrong password!!"})
        assert wrong.status_code == 401
        assert wrong.json()["detail"] == "invalid email or password"
        nobody = await anon.post("/api/login", json={"email": "nobody@example.com", "password": PASSWORD})
        assert nobody.status_code == 401
        assert nobody.json()["detail"] == wrong.json()["detail"]
        assert (await anon.get("/api/me")).status_code == 401
        for label, token in forged.items():
            response = await anon.get("/api/me", headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == 401, label
            assert response.headers.get("www-authenticate") == "Bearer", label


async def test_logout_revokes_the_session(stack: Stack) -> None:
    client, _ = await stack.user()
    async with client:
        assert (await client.get("/api/me")).status_code == 200
        assert (await client.post("/api/logout")).status_code == 204
        again = await client.get("/api/me")
    assert again.status_code == 401
    assert "logged out" in again.json()["detail"]


async def test_personal_api_tokens_shown_once_and_revocable(stack: Stack) -> None:
    client, user = await stack.user()
    async with client:
        created = await client.post("/api/tokens", json={"name": "ci"})
        assert created.status_code == 201
        token = created.json()["token"]
        assert token.startswith("mcpt_")
        listed = await client.get("/api/tokens")
        assert listed.json()["count"] == 1
        assert "token" not in listed.json()["data"][0]
        async with stack.client(token) as with_token:
            me = await with_token.get("/api/me")
            assert me.status_code == 200 and me.json()["id"] == user["id"]
            deleted = await client.delete(f"/api/tokens/{created.json()['id']}")
            assert deleted.status_code == 204
            assert (await with_token.get("/api/me")).status_code == 401


async def test_registration_input_errors(stack: Stack) -> None:
    email = f"dup-{uuid.uuid4().hex[:6]}@example.com"
    async with stack.client() as anon:
        first = await anon.post("/api/register", json={"email": email, "password": PASSWORD})
        assert first.status_code == 202
        # A taken email gets the very same answer (tests/security/test_accounts.py shows why).
        duplicate = await anon.post("/api/register", json={"email": email.upper(), "password": PASSWORD})
        assert (duplicate.status_code, duplicate.json()) == (first.status_code, first.json())
        short = await anon.post("/api/register", json={"email": "short@example.com", "password": "Zq9!xw"})
        assert short.status_code == 422
        assert "Zq9!xw" not in short.text  # the password is never echoed back
        bad_email = await anon.post("/api/register", json={"email": "not-an-email", "password": PASSWORD})
        assert bad_email.status_code == 422
