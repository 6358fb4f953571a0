"""Dependencies shared by the routes: database session, Temporal client, the current user."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from temporalio.client import Client

from api.events import DeploymentEvents, ServerEvents
from core import temporal
from core.crypto import EnvCipher
from core.errors import Forbidden, NotFound, Unauthorized, Unavailable
from core.models import ApiToken, Deployment, RevokedSession, Server, User
from core.ratelimit import LoginThrottle
from core.secretstore import SecretStore, store_from_settings
from core.security import USER_TOKEN_PREFIX, InvalidToken, decode_session_token, hash_token
from core.settings import Settings
from records.deployments import instance_of
from runtimes.base import Executor, Instance

if TYPE_CHECKING:
    from gateway.routes import RouteTable
    from gateway.state import GatewayState

SESSION_COOKIE = "mcphost_session"


@dataclass
class AppState:
    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    gateway: GatewayState
    executors: dict[str, Executor] = field(default_factory=dict)
    cipher: EnvCipher | None = None
    deployment_events: DeploymentEvents | None = None
    server_events: ServerEvents | None = None
    throttle: LoginThrottle | None = None
    secrets: SecretStore | None = None

    @property
    def routes(self) -> RouteTable:
        return self.gateway.routes

    @property
    def env_cipher(self) -> EnvCipher:
        if self.cipher is None:
            self.cipher = self.settings.env_cipher()
        return self.cipher

    @property
    def secret_store(self) -> SecretStore:
        if self.secrets is None:
            self.secrets = store_from_settings(self.settings)
        return self.secrets

    @property
    def login_throttle(self) -> LoginThrottle:
        if self.throttle is None:
            self.throttle = LoginThrottle(
                self.settings.login_rate_per_minute,
                self.settings.login_account_rate_per_minute,
                self.settings.login_account_ceiling,
            )
        return self.throttle

    temporal_client: Client | None = None
    _temporal_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def temporal(self) -> Client:
        """The process's one Temporal client, connected on first use so the API can start before Temporal."""
        if self.temporal_client is not None:
            return self.temporal_client
        async with self._temporal_lock:
            if self.temporal_client is None:
                try:
                    self.temporal_client = await asyncio.wait_for(temporal.connect(self.settings), timeout=5)
                except Exception as exc:
                    raise Unavailable(f"Temporal is not reachable at {self.settings.temporal_address}: {exc}") from None
            return self.temporal_client

    # Instance output read by live log streams, shared: (deployment, tail) -> (read at, the read).
    _log_reads: dict[tuple[str, int], tuple[float, asyncio.Task[list[str]]]] = field(default_factory=dict)

    async def shared_log_tail(self, deployment: Deployment, tail: int, fresh_for: float = 0.5) -> list[str]:
        """`runtime_log_tail` for streams: however many follow one server, its output is read at most once
        per `fresh_for` seconds; callers in between get the same read."""
        key = (str(deployment.id), tail)
        now = time.monotonic()
        cached = self._log_reads.get(key)
        if cached is None or now - cached[0] > fresh_for:
            for old, (at, _) in list(self._log_reads.items()):
                if now - at > 10 * fresh_for:
                    del self._log_reads[old]
            cached = (now, asyncio.ensure_future(self.runtime_log_tail(deployment, tail)))
            self._log_reads[key] = cached
        return list(await asyncio.shield(cached[1]))

    async def runtime_log_tail(self, deployment: Deployment, tail: int) -> list[str]:
        """Read-only look at an instance's output; empty when this host cannot see that runtime."""
        executor = self.executors.get(deployment.runtime or "process")
        record = instance_of(deployment)
        if executor is None or record is None:
            return []
        instance = Instance(
            runtime=record.runtime,
            ref=record.ref,
            deployment_id=record.deployment_id,
            server_id=record.server_id,
            url=record.url,
        )
        try:
            return await executor.logs(instance, tail)
        except Exception:
            return []


def get_state(request: Request) -> AppState:
    return request.app.state.mcphost  # type: ignore[no-any-return]


StateDep = Annotated[AppState, Depends(get_state)]


async def get_session(state: StateDep) -> AsyncIterator[AsyncSession]:
    async with state.sessionmaker() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]


async def get_temporal(state: StateDep) -> Client:
    return await state.temporal()


TemporalDep = Annotated[Client, Depends(get_temporal)]


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


async def get_current_user(request: Request, state: StateDep, session: SessionDep) -> User:
    token = bearer_token(request) or request.cookies.get(SESSION_COOKIE)
    if not token:
        raise Unauthorized("authentication required: log in, or send 'Authorization: Bearer <token>'")
    now = datetime.now(UTC)
    if token.startswith(USER_TOKEN_PREFIX):
        api_token = await session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(token)))
        if api_token is None or (api_token.expires_at is not None and api_token.expires_at <= now):
            raise Unauthorized("invalid or expired API token")
        user = await session.get(User, api_token.user_id)
        if user is None:
            raise Unauthorized("invalid or expired API token")
        await session.execute(update(ApiToken).where(ApiToken.id == api_token.id).values(last_used_at=now))
        await session.commit()
        request.state.session_jti = None
        return user
    settings = state.settings
    try:
        claims = decode_session_token(
            token,
            secret=settings.jwt_secret.get_secret_value(),
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
        )
    except InvalidToken:
        raise Unauthorized("invalid or expired session; log in again") from None
    if await session.get(RevokedSession, claims.jti) is not None:
        raise Unauthorized("this session has been logged out; log in again")
    user = await session.get(User, claims.user_id)
    if user is None:
        raise Unauthorized("invalid or expired session; log in again")
    request.state.session_jti = claims.jti
    request.state.session_expires = claims.expires_at
    # End the read transaction so routes can open their own with `session.begin()`.
    await session.commit()
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]


async def get_admin(user: CurrentUser) -> User:
    if user.role != "admin":
        raise Forbidden("administrator role required")
    return user


AdminUser = Annotated[User, Depends(get_admin)]


async def load_server(session: AsyncSession, user: User, server_id: uuid.UUID, *, lock: bool = False) -> Server:
    """The server if the user may see it. Another user's server is reported as not found."""
    stmt = select(Server).where(Server.id == server_id)
    if user.role != "admin":
        stmt = stmt.where(Server.owner_id == user.id)
    if lock:
        stmt = stmt.with_for_update()
    server = await session.scalar(stmt)
    if server is None:
        raise NotFound(f"server {server_id} not found")
    return server


async def load_visible_run(
    session: AsyncSession, user: User, model: Any, run_id: uuid.UUID, what: str, named: Callable[[Any, User], bool]
) -> Any:
    """A run of a server (`model` has `id` and `server_id`) if the user may see it: its server's owner,
    administrators, and the people the run itself `named` (its approvers). To anyone else it does not exist."""
    row = (
        await session.execute(
            select(model, Server.owner_id).join(Server, Server.id == model.server_id).where(model.id == run_id)
        )
    ).first()
    if row is None or (user.role != "admin" and row[1] != user.id and not named(row[0], user)):
        raise NotFound(f"{what} {run_id} not found")
    return row[0]
