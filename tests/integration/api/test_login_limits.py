"""Login and registration against the real API: rate limits per address and per account, and password
hashing kept off the event loop."""

from __future__ import annotations

import threading
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from api.routes import auth
from tests.support.components import free_port
from tests.support.stack import PASSWORD, Stack


@pytest.fixture
async def limited(stack: Stack) -> AsyncIterator[Stack]:
    """A second API process on the same database, with small limits of its own."""
    settings = stack.settings.model_copy(
        update={"bind_port": free_port(), "login_rate_per_minute": 6, "login_account_rate_per_minute": 2}
    )
    api = Stack(settings, in_process_worker=False)
    await api.start()
    try:
        yield api
    finally:
        await api.stop()


def _email() -> str:
    return f"limits-{uuid.uuid4().hex[:8]}@example.com"


def _assert_rate_limited(response: Any) -> None:
    assert response.status_code == 429, response.text
    assert response.json()["code"] == "rate_limited"
    assert 1 <= int(response.headers["retry-after"]) <= 60


async def test_failed_logins_lock_the_account_and_attempts_are_limited_per_address(limited: Stack) -> None:
    victim, bystander = _email(), _email()
    async with limited.client() as anon:
        # 1: address budget 6, account budget 2 failures
        assert (await anon.post("/api/register", json={"email": victim, "password": PASSWORD})).status_code == 202
        for _ in range(2):  # 2, 3
            wrong = await anon.post("/api/login", json={"email": victim, "password": "not the password"})
            assert wrong.status_code == 401
        # 4: even the right password is refused from this address once the account has had its failures
        # from it (other addresses: tests/security/test_accounts.py) ...
        locked = await anon.post("/api/login", json={"email": victim.upper(), "password": PASSWORD})
        _assert_rate_limited(locked)
        assert "account" in locked.json()["detail"]
        # 5: ... while other accounts (registered or not) are not affected.
        other = await anon.post("/api/login", json={"email": bystander, "password": PASSWORD})
        assert other.status_code == 401
        # 6: registrations count against the same per-address budget as logins.
        assert (await anon.post("/api/register", json={"email": bystander, "password": PASSWORD})).status_code == 202
        refused = await anon.post("/api/register", json={"email": _email(), "password": PASSWORD})
        _assert_rate_limited(refused)
        assert "address" in refused.json()["detail"]
        _assert_rate_limited(await anon.post("/api/login", json={"email": bystander, "password": PASSWORD}))


async def test_successful_logins_do_not_count_as_failures(limited: Stack) -> None:
    email = _email()
    throttle = limited.state.login_throttle
    async with limited.client() as anon:
        assert (await anon.post("/api/register", json={"email": email, "password": PASSWORD})).status_code == 202
        for _ in range(4):
            login = await anon.post("/api/login", json={"email": email, "password": PASSWORD})
            assert login.status_code == 200, login.text
    assert len(throttle.accounts) == 0


async def test_rate_limit_is_documented_in_openapi(stack: Stack) -> None:
    async with stack.client() as anon:
        spec = (await anon.get("/openapi.json")).json()
    for path in ("/api/login", "/api/register"):
        response = spec["paths"][path]["post"]["responses"]["429"]
        assert "Retry-After" in response["headers"]
        assert response["headers"]["Retry-After"]["schema"] == {"type": "integer"}
        assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}


async def test_password_hashing_runs_off_the_event_loop(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    loop_thread = threading.get_ident()
    threads: dict[str, int] = {}

    def recording(name: str, function: Any) -> Any:
        def wrapper(*args: Any) -> Any:
            threads[name] = threading.get_ident()
            return function(*args)

        return wrapper

    monkeypatch.setattr(auth, "hash_password", recording("hash", auth.hash_password))
    monkeypatch.setattr(auth, "verify_password", recording("verify", auth.verify_password))
    email = _email()
    async with stack.client() as anon:
        assert (await anon.post("/api/register", json={"email": email, "password": PASSWORD})).status_code == 202
        assert (await anon.post("/api/login", json={"email": email, "password": PASSWORD})).status_code == 200
    # The API serves from this test's own event loop, so its thread is the one that must stay free.
    assert set(threads) == {"hash", "verify"}
    assert loop_thread not in threads.values()
