"""Accounts, sessions, API tokens and governance roles."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field

from core.governance import Role


class Credentials(BaseModel):
    email: EmailStr
    password: str = Field(min_length=1, max_length=1024)


class Registration(BaseModel):
    email: EmailStr
    password: str = Field(min_length=12, max_length=1024, description="At least 12 characters")
    setup_token: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="The one-time setup token of an installation without an administrator: the account made "
        "with it is the administrator. Made on the API's first start, logged once and kept in "
        "<STATE_DIR>/setup-token until used.",
    )


class RegistrationAccepted(BaseModel):
    detail: str = Field(
        description="The same whether or not the email already had an account, so that registering tells "
        "no one which emails have one: logging in is what shows the account is yours."
    )


class UserPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    email: str
    role: str
    roles: list[str] = Field(default_factory=list, description="Governance roles, given by an administrator")
    server_quota: int
    created_at: datetime


class SessionToken(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_at: datetime


class TokenCreate(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    expires_in_days: int | None = Field(default=None, ge=1, le=3650)


class TokenPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None


class TokenCreated(TokenPublic):
    token: str = Field(description="Shown only once; store it now")


class RolesUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    roles: list[Role] = Field(max_length=50, description="e.g. release-manager")
