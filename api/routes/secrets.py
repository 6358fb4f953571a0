"""A server's secrets: write-only values it gets as environment variables at launch (core.secretstore).
Values go in and never come out; every write, delete and launch that read one is in the secret events."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response, status
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from api.deps import CurrentUser, SessionDep, StateDep, load_server
from api.schemas.common import ListOf, error_responses
from api.schemas.secrets import SECRET_NAME_PATTERN, SecretCreate, SecretEventPublic, SecretPublic, SecretValue
from core.errors import Conflict, NotFound, Unavailable
from core.models import Server, ServerLog, ServerSecret, ServerSecretEvent, User
from core.secretstore import MAX_SECRETS, SecretStoreError

router = APIRouter(prefix="/api/servers", tags=["secrets"])
SecretName = Annotated[str, Path(min_length=1, max_length=128, pattern=SECRET_NAME_PATTERN)]


def _event(server: Server, user: User, name: str, action: str, version: int | None) -> list[object]:
    return [
        ServerSecretEvent(
            server_id=server.id, name=name, action=action, version=version, actor_id=user.id, actor=user.email
        ),
        ServerLog(server_id=server.id, message=f"secret {name} {action} by {user.email}"),
    ]


async def _secret(
    session: AsyncSession, user: User, server_id: uuid.UUID, name: str, *, lock: bool = False, hint: str = ""
) -> tuple[Server, ServerSecret]:
    server = await load_server(session, user, server_id, lock=lock)
    row = await session.scalar(
        select(ServerSecret).where(ServerSecret.server_id == server.id, ServerSecret.name == name)
    )
    if row is None:
        raise NotFound(f"secret {name} not found{hint}")
    return server, row


@router.post(
    "/{server_id}/secrets",
    status_code=status.HTTP_201_CREATED,
    response_model=SecretPublic,
    responses=error_responses(401, 404, 409, 422, 503),
)
async def create_secret(
    server_id: uuid.UUID, body: SecretCreate, user: CurrentUser, session: SessionDep, state: StateDep
) -> ServerSecret:
    """Add a secret. The server gets it as the environment variable `name` from its next launch on
    (a secret wins over a config env variable of the same name). 409 if the name is taken."""
    async with session.begin():
        server = await load_server(session, user, server_id, lock=True)
        if server.status == "deleting":
            raise Conflict("the server is being deleted")
        names = (await session.scalars(select(ServerSecret.name).where(ServerSecret.server_id == server.id))).all()
        if body.name in names:
            raise Conflict(f"secret {body.name} exists; PUT /api/servers/{server_id}/secrets/{body.name} rotates it")
        if len(names) >= MAX_SECRETS:
            raise Conflict(f"a server may have at most {MAX_SECRETS} secrets; delete one first")
        try:
            written = await state.secret_store.write(str(server.id), body.name, body.value)
        except SecretStoreError as exc:
            raise Unavailable(str(exc)) from None
        row = ServerSecret(
            server_id=server.id,
            name=body.name,
            backend=written.backend,
            sealed=written.sealed,
            vault_path=written.path,
            vault_version=written.version,
            version=1,
            created_by=user.id,
        )
        session.add_all([row, *_event(server, user, body.name, "created", 1)])
    await session.refresh(row)
    return row


@router.get("/{server_id}/secrets", response_model=ListOf[SecretPublic], responses=error_responses(401, 404, 422))
async def list_secrets(server_id: uuid.UUID, user: CurrentUser, session: SessionDep) -> ListOf[SecretPublic]:
    """The server's secrets: names, where they are kept and their versions. Never their values."""
    server = await load_server(session, user, server_id)
    rows = (
        await session.scalars(
            select(ServerSecret).where(ServerSecret.server_id == server.id).order_by(ServerSecret.name)
        )
    ).all()
    return ListOf[SecretPublic](count=len(rows), data=[SecretPublic.model_validate(r) for r in rows])


@router.get("/{server_id}/secrets/{name}", response_model=SecretPublic, responses=error_responses(401, 404, 422))
async def get_secret(server_id: uuid.UUID, name: SecretName, user: CurrentUser, session: SessionDep) -> ServerSecret:
    """One secret's metadata."""
    _, row = await _secret(session, user, server_id, name)
    return row


@router.put("/{server_id}/secrets/{name}", response_model=SecretPublic, responses=error_responses(401, 404, 422, 503))
async def rotate_secret(
    server_id: uuid.UUID, name: SecretName, body: SecretValue, user: CurrentUser, session: SessionDep, state: StateDep
) -> ServerSecret:
    """Replace a secret's value (rotation). Running instances keep the old value until their next launch:
    redeploy to hand it out. In Vault this writes a new KV version; the database then points at it."""
    async with session.begin():
        hint = f"; POST /api/servers/{server_id}/secrets creates it"
        server, row = await _secret(session, user, server_id, name, lock=True, hint=hint)
        try:
            written = await state.secret_store.write(str(server.id), name, body.value)
        except SecretStoreError as exc:
            raise Unavailable(str(exc)) from None
        row.backend, row.sealed = written.backend, written.sealed
        row.vault_path, row.vault_version = written.path, written.version
        row.version += 1
        row.updated_at = datetime.now(UTC)
        session.add_all(_event(server, user, name, "rotated", row.version))
    await session.refresh(row)
    return row


@router.delete(
    "/{server_id}/secrets/{name}", status_code=status.HTTP_204_NO_CONTENT, responses=error_responses(401, 404, 422, 503)
)
async def delete_secret(
    server_id: uuid.UUID, name: SecretName, user: CurrentUser, session: SessionDep, state: StateDep
) -> Response:
    """Delete a secret (in Vault: every version). Running instances keep it until their next launch."""
    async with session.begin():
        server, row = await _secret(session, user, server_id, name, lock=True)
        await session.delete(row)
        session.add_all(_event(server, user, name, "deleted", row.version))
        await session.flush()
        try:
            # Last, inside the transaction: if Vault refuses, the row stays and the caller can retry.
            await state.secret_store.delete(row.backend, row.vault_path)
        except SecretStoreError as exc:
            raise Unavailable(str(exc)) from None
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{server_id}/secret-events",
    response_model=ListOf[SecretEventPublic],
    responses=error_responses(401, 404, 422),
)
async def secret_events(
    server_id: uuid.UUID,
    user: CurrentUser,
    session: SessionDep,
    name: Annotated[str | None, Query(max_length=128, description="Only this secret")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> ListOf[SecretEventPublic]:
    """Who touched the server's secrets, newest first: created, rotated, deleted (by whom) and injected
    (read by the worker for a launch of which deployment)."""
    server = await load_server(session, user, server_id)
    stmt = select(ServerSecretEvent).where(ServerSecretEvent.server_id == server.id)
    if name is not None:
        stmt = stmt.where(ServerSecretEvent.name == name)
    rows = (await session.scalars(stmt.order_by(ServerSecretEvent.at.desc(), ServerSecretEvent.id).limit(limit))).all()
    total = await session.scalar(select(func.count()).select_from(stmt.subquery()))
    return ListOf[SecretEventPublic](count=int(total or 0), data=[SecretEventPublic.model_validate(r) for r in rows])
