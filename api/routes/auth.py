from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request, Response, status
from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from api.deps import SESSION_COOKIE, AdminUser, CurrentUser, SessionDep, StateDep
from api.schemas.auth import (
    Credentials,
    Registration,
    RegistrationAccepted,
    RolesUpdate,
    SessionToken,
    TokenCreate,
    TokenCreated,
    TokenPublic,
    UserPublic,
)
from api.schemas.common import ErrorBody, ListOf, error_responses
from core.errors import Conflict, Forbidden, NotFound, Unauthorized
from core.models import ApiToken, RevokedSession, User
from core.security import (
    USER_TOKEN_PREFIX,
    display_prefix,
    generate_secret_token,
    hash_password,
    hash_token,
    issue_session_token,
    password_needs_rehash,
    verify_password,
)
from records.setup_tokens import forget_setup_token_file, spend_setup_token

router = APIRouter(prefix="/api", tags=["accounts"])

RATE_LIMITED: dict[int | str, dict[str, Any]] = {
    429: {
        "model": ErrorBody,
        "description": "Too many attempts from this address (login and registration together, "
        "LOGIN_RATE_PER_MINUTE) or, for login, too many failed logins for this account from this address "
        "(LOGIN_ACCOUNT_RATE_PER_MINUTE) or from all addresses together (LOGIN_ACCOUNT_CEILING_PER_MINUTE).",
        "headers": {
            "Retry-After": {"description": "Seconds to wait before trying again.", "schema": {"type": "integer"}}
        },
    }
}


REGISTRATION_ACCEPTED = RegistrationAccepted(
    detail="registration received: log in with this email and password (if the email already had an account, "
    "that account is unchanged and only its own password logs in)"
)


def client_address(request: Request) -> str:
    # The connection's peer: `mcphost api` trusts no X-Forwarded-For, so a client cannot pick its address.
    return request.client.host if request.client else "unknown"


async def add_account(
    session: AsyncSession, *, email: str, password_hash: str, role: str, server_quota: int
) -> uuid.UUID | None:
    """Insert the account unless the email has one (None then). The same statement runs either way, so the
    database's work does not tell the two apart either."""
    return await session.scalar(
        insert(User)
        .values(
            id=uuid.uuid4(),
            email=email,
            password_hash=password_hash,
            role=role,
            roles=[],
            server_quota=server_quota,
        )
        .on_conflict_do_nothing(index_elements=[User.email])
        .returning(User.id)
    )


@router.post(
    "/register",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=RegistrationAccepted,
    responses={
        **RATE_LIMITED,
        403: {
            "model": ErrorBody,
            "description": "Registration is closed (ALLOW_REGISTRATION=false) and no setup token was given; or "
            "the setup token is wrong or used (which is not said).",
        },
        409: {
            "model": ErrorBody,
            "description": "Only with the live setup token: the email already has an account (the token is "
            "not spent; claim with another email).",
        },
    },
)
async def register(body: Registration, request: Request, state: StateDep, session: SessionDep) -> RegistrationAccepted:
    """Create an account. The answer is the same whether or not the email already had one (which it leaves
    unchanged). With the installation's one-time `setup_token`, the account is its administrator; without
    it, never."""
    state.login_throttle.attempt_from(client_address(request))
    email = body.email.lower()
    # Hashed whether or not the email is free, so the time the answer takes does not tell either. argon2
    # spends tens of milliseconds of CPU on purpose: on the event loop it would stall every other request
    # of this process, gateway traffic included.
    password_hash = await asyncio.to_thread(hash_password, body.password)
    async with session.begin():
        claims = await spend_setup_token(session, body.setup_token)
        if not claims and not state.settings.allow_registration:
            raise Forbidden("registration is closed on this installation; ask an administrator")
        created = await add_account(
            session,
            email=email,
            password_hash=password_hash,
            role="admin" if claims else "user",
            server_quota=state.settings.default_server_quota,
        )
        # Only the holder of the live token gets here, and it is the installation's operator: telling them
        # the email is taken (and keeping the token for another try) gives nothing away.
        if claims and created is None:
            raise Conflict(
                "an account with this email already exists; claim the installation with another email (the "
                "setup token is still valid), or, if that account is yours, make it an administrator on the host "
                "with `mcphost admin promote --email ...`"
            )
    if claims:
        await asyncio.to_thread(forget_setup_token_file, state.settings.state_dir)
    return REGISTRATION_ACCEPTED


@router.post("/login", response_model=SessionToken, responses={**RATE_LIMITED, **error_responses(401)})
async def login(
    body: Credentials, request: Request, response: Response, state: StateDep, session: SessionDep
) -> SessionToken:
    """Exchange email and password for a session: an HttpOnly cookie and the same token as a bearer token."""
    throttle = state.login_throttle
    address = client_address(request)
    throttle.attempt_from(address)
    email = body.email.lower()
    # Counted whether or not the account exists, so a 429 says nothing about which emails are registered.
    throttle.attempt_on(email, address)
    try:
        user = await session.scalar(select(User).where(User.email == email))
        verified = await asyncio.to_thread(verify_password, body.password, user.password_hash if user else None)
    except BaseException:
        throttle.release(email, address)
        raise
    if not verified or user is None:
        raise Unauthorized("invalid email or password")
    throttle.release(email, address)
    if password_needs_rehash(user.password_hash):
        user.password_hash = await asyncio.to_thread(hash_password, body.password)
        await session.commit()
    settings = state.settings
    token, claims = issue_session_token(
        user.id,
        secret=settings.jwt_secret.get_secret_value(),
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        ttl_seconds=settings.jwt_ttl_seconds,
    )
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=settings.jwt_ttl_seconds,
        httponly=True,
        samesite="strict",
        secure=settings.session_cookie_secure,
        path="/",
    )
    return SessionToken(access_token=token, expires_at=claims.expires_at)


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
async def logout(request: Request, user: CurrentUser, state: StateDep, session: SessionDep) -> Response:
    """End this session: the token stops working even before it expires. API tokens are deleted instead."""
    jti = getattr(request.state, "session_jti", None)
    if jti:
        await session.execute(
            insert(RevokedSession).values(jti=jti, expires_at=request.state.session_expires).on_conflict_do_nothing()
        )
        await session.execute(delete(RevokedSession).where(RevokedSession.expires_at < func.now()))
        await session.commit()
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    response.delete_cookie(
        SESSION_COOKIE, path="/", httponly=True, samesite="strict", secure=state.settings.session_cookie_secure
    )
    return response


@router.get("/me", response_model=UserPublic)
async def me(user: CurrentUser) -> User:
    return user


@router.put("/users/{user_id}/roles", response_model=UserPublic, responses=error_responses(401, 403, 404, 422))
async def set_roles(user_id: uuid.UUID, body: RolesUpdate, admin: AdminUser, session: SessionDep) -> User:
    """Give a person their governance roles (replacing the ones they had). Administrators only."""
    async with session.begin():
        target = await session.get(User, user_id, with_for_update=True)
        if target is None:
            raise NotFound(f"user {user_id} not found")
        target.roles = sorted(set(body.roles))
    await session.refresh(target)
    return target


@router.post(
    "/tokens", status_code=status.HTTP_201_CREATED, response_model=TokenCreated, responses=error_responses(409)
)
async def create_token(body: TokenCreate, user: CurrentUser, session: SessionDep) -> TokenCreated:
    """A personal API token for the CLI and CI. It is shown once; only its hash is stored."""
    token = generate_secret_token(USER_TOKEN_PREFIX)
    expires = datetime.now(UTC) + timedelta(days=body.expires_in_days) if body.expires_in_days else None
    row = ApiToken(
        user_id=user.id,
        name=body.name,
        token_hash=hash_token(token),
        prefix=display_prefix(token),
        expires_at=expires,
    )
    session.add(row)
    try:
        await session.commit()
    except IntegrityError:
        raise Conflict("token collision; try again") from None
    await session.refresh(row)
    return TokenCreated(**TokenPublic.model_validate(row).model_dump(), token=token)


@router.get("/tokens", response_model=ListOf[TokenPublic])
async def list_tokens(user: CurrentUser, session: SessionDep) -> ListOf[TokenPublic]:
    rows = (
        await session.scalars(select(ApiToken).where(ApiToken.user_id == user.id).order_by(ApiToken.created_at))
    ).all()
    return ListOf[TokenPublic](count=len(rows), data=[TokenPublic.model_validate(r) for r in rows])


@router.delete("/tokens/{token_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_token(token_id: uuid.UUID, user: CurrentUser, session: SessionDep) -> Response:
    result = await session.execute(delete(ApiToken).where(ApiToken.id == token_id, ApiToken.user_id == user.id))
    if result.rowcount == 0:  # type: ignore[attr-defined]
        raise NotFound(f"token {token_id} not found")
    await session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
