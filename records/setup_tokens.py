"""Who administers an installation: the one-time setup token that claims a new one, and administrators
made on the host.

A new installation is not given to whoever registers first (on a reachable address that may be anyone):
its first API start makes a random setup token, keeps only its SHA-256 in the database, and shows the
token to the operator alone (the API's log and a 0600 file in the state directory). Registering with it
makes the administrator and spends it. On the host, `mcphost admin create` does the same without it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import uuid
from pathlib import Path

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.db import make_engine, make_sessionmaker
from core.errors import Forbidden
from core.models import SetupToken, User
from core.security import generate_secret_token, hash_password, hash_token, token_matches
from core.settings import Settings

log = logging.getLogger("mcphost.setup")

SETUP_TOKEN_PREFIX = "mcps_"
SETUP_TOKEN_FILE = "setup-token"
# Held by everything that decides who administers the installation (making the token, spending it, making an
# administrator on the host), so that exactly one of them wins.
CLAIM_LOCK = 0x6D6370

INVALID_SETUP_TOKEN = (
    "this setup token does not claim this installation: it is wrong, or it has been used "
    "(an installation is claimed once; its administrators make the other accounts administrators)"
)


def setup_token_path(state_dir: Path) -> Path:
    return state_dir / SETUP_TOKEN_FILE


def claim_instructions(path: Path) -> str:
    return (
        f"claim it: `mcphost register --email you@example.com --setup-token-file {path}` (or POST /api/register "
        'with "setup_token"), or on this host `mcphost admin create --email you@example.com`'
    )


def setup_token_notice(state_dir: Path) -> str | None:
    """What `mcphost up` tells its operator while the installation has not been claimed (None once it has:
    claiming removes the file)."""
    path = setup_token_path(state_dir)
    if not path.is_file():
        return None
    return f"This installation has no administrator yet; {claim_instructions(path)}"


async def _lock(session: AsyncSession) -> None:
    await session.execute(select(func.pg_advisory_xact_lock(CLAIM_LOCK)))


async def has_admin(session: AsyncSession) -> bool:
    return await session.scalar(select(User.id).where(User.role == "admin").limit(1)) is not None


def _write_token_file(path: Path, token: str) -> None:
    """Write `token` readable by this user alone. Written beside the file and renamed over it, so that an
    existing file (or a link planted there) keeps neither its mode nor its target."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(token + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def forget_setup_token_file(state_dir: Path) -> None:
    """Remove the setup token file once the installation has an administrator: it can claim nothing more."""
    try:
        setup_token_path(state_dir).unlink(missing_ok=True)
    except OSError as exc:
        log.warning("could not remove the spent setup token %s: %s", setup_token_path(state_dir), exc)


async def ensure_setup_token(settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    """At API start: make the setup token of an installation without an administrator, unless one is
    already waiting to be used; tell the operator how to claim the installation."""
    path = setup_token_path(settings.state_dir)
    token: str | None = None
    where = ""
    async with sessionmaker() as session, session.begin():
        await _lock(session)
        if await has_admin(session):
            await session.execute(delete(SetupToken))
            claimed = True
        else:
            claimed = False
            if await session.scalar(select(SetupToken.token_hash).limit(1)) is None:
                token = generate_secret_token(SETUP_TOKEN_PREFIX)
                session.add(SetupToken(token_hash=hash_token(token)))
                # Written before the row is committed: a crash in between leaves a file no row matches (the
                # next start makes another), never a token nobody was shown.
                try:
                    await asyncio.to_thread(_write_token_file, path, token)
                    where = f"kept in {path} (0600) until used"
                except OSError as exc:
                    where = f"not saved to {path}: {exc}"
    if claimed:
        await asyncio.to_thread(forget_setup_token_file, settings.state_dir)
    elif token is not None:
        log.warning(
            "This installation has no administrator. Its one-time setup token is %s (%s); %s",
            token,
            where,
            claim_instructions(path),
        )
    else:
        shown = f"it is in {path}" if path.is_file() else "it was logged by the API process that made it"
        log.warning(
            "This installation has no administrator yet and its setup token is unused (%s); %s",
            shown,
            claim_instructions(path),
        )


async def spend_setup_token(session: AsyncSession, token: str | None) -> bool:
    """Within the caller's transaction: whether this registration claims the installation. A registration
    without a token does not (False); with the live token it does, and the token is spent when the
    transaction commits; any other token is a 403 that does not say whether it was wrong or used."""
    if token is None:
        return False
    await _lock(session)
    live = (await session.scalars(select(SetupToken.token_hash))).all()
    # Compared in constant time, and against every live hash, so the answer's timing says nothing of the token.
    matched = [token_matches(token, expected) for expected in live]
    if not any(matched) or await has_admin(session):
        raise Forbidden(INVALID_SETUP_TOKEN)
    await session.execute(delete(SetupToken))
    return True


async def _on_host(settings: Settings, email: str, password: str | None) -> bool:
    engine = make_engine(settings.database_url)
    try:
        async with make_sessionmaker(engine)() as session, session.begin():
            await _lock(session)
            if password is None:
                result = await session.execute(
                    update(User).where(User.email == email).values(role="admin").returning(User.id)
                )
            else:
                password_hash = await asyncio.to_thread(hash_password, password)
                result = await session.execute(
                    insert(User)
                    .values(
                        id=uuid.uuid4(),
                        email=email,
                        password_hash=password_hash,
                        role="admin",
                        roles=[],
                        server_quota=settings.default_server_quota,
                    )
                    .on_conflict_do_nothing(index_elements=[User.email])
                    .returning(User.id)
                )
            done = result.first() is not None
            if done:
                await session.execute(delete(SetupToken))
    finally:
        await engine.dispose()
    if done:
        await asyncio.to_thread(forget_setup_token_file, settings.state_dir)
    return done


async def create_admin(settings: Settings, email: str, password: str) -> bool:
    """Make a new administrator account directly in the database (False: the email already has an account).
    Any setup token is spent: the installation has an administrator."""
    return await _on_host(settings, email.lower(), password)


async def promote_admin(settings: Settings, email: str) -> bool:
    """Make an existing account an administrator (False: there is none with that email)."""
    return await _on_host(settings, email.lower(), None)
