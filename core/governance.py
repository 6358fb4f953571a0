"""Governance definitions and who may vote on an approval step. Pure: no I/O, no clock.

A definition is an ordered list of steps:

- `approval`: who may approve (`roles` and/or named `users`), how many distinct approvals it needs,
  whether the requester may approve their own request (four-eyes when not), an SLA after which it is
  escalated (more approvers are added and everyone is told), and an expiry after which it ends as
  configured (`reject` or `approve`). One reject from an approver rejects the step.
- `check`: the run's artifact holds a passing, unexpired certification of a tier and requirement.
- `wait`: a pause (a durable timer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

ROLE_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
Role = Annotated[str, Field(pattern=ROLE_PATTERN)]
Email = Annotated[str, Field(min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")]
STEP_NAME = r"^[A-Za-z0-9][A-Za-z0-9 ._:-]{0,63}$"
MAX_SECONDS = 90 * 24 * 3600


class RunStatus(StrEnum):
    """A governance run is `running` until its steps end it `approved` or `rejected`, or it is
    `cancelled` (its workflow could not start, or the promotion it gated ended first)."""

    RUNNING = "running"
    APPROVED = "approved"
    REJECTED = "rejected"
    CANCELLED = "cancelled"


class _Step(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=STEP_NAME)


class ApprovalStep(_Step):
    kind: Literal["approval"]
    roles: list[Role] = Field(default_factory=list, max_length=20, description="Anyone with one of these roles")
    users: list[Email] = Field(default_factory=list, max_length=50, description="And these people, by email")
    required: int = Field(default=1, ge=1, le=20, description="Distinct approvals needed")
    allow_requester: bool = Field(default=False, description="False: four-eyes, the requester cannot approve")
    sla_seconds: float | None = Field(default=None, gt=0, le=MAX_SECONDS, description="Escalate after this long")
    escalate_roles: list[Role] = Field(default_factory=list, max_length=20, description="Added on escalation")
    escalate_users: list[Email] = Field(default_factory=list, max_length=50, description="Added on escalation")
    expire_seconds: float | None = Field(
        default=None, gt=0, le=MAX_SECONDS, description="End the step this long after it opened"
    )
    on_expiry: Literal["reject", "approve"] = "reject"

    @model_validator(mode="after")
    def _someone(self) -> ApprovalStep:
        if not self.roles and not self.users:
            raise ValueError(f"approval step {self.name!r} names no approver: give roles or users")
        if self.sla_seconds and self.expire_seconds and self.expire_seconds <= self.sla_seconds:
            raise ValueError(f"approval step {self.name!r}: expire_seconds must be longer than sla_seconds")
        return self


class CheckStep(_Step):
    kind: Literal["check"]
    tier: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,31}$")
    requirement: str = Field(default="default", pattern=r"^[a-z0-9][a-z0-9_.:-]{0,99}$")


class WaitStep(_Step):
    kind: Literal["wait"]
    seconds: float = Field(gt=0, le=MAX_SECONDS)


Step = Annotated[ApprovalStep | CheckStep | WaitStep, Field(discriminator="kind")]


class Definition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    steps: list[Step] = Field(min_length=1, max_length=20)

    @model_validator(mode="after")
    def _unique(self) -> Definition:
        names = [s.name for s in self.steps]
        if len(set(names)) != len(names):
            raise ValueError("step names must be unique within a definition")
        return self


@dataclass
class Voter:
    user_id: str
    email: str
    roles: list[str] = field(default_factory=list)


@dataclass
class Vote:
    user_id: str
    email: str
    approve: bool
    comment: str = ""


@dataclass(frozen=True)
class Refusal:
    code: str  # not_approver | four_eyes | duplicate
    message: str


def eligible(step: ApprovalStep, voter: Voter, *, escalated: bool) -> bool:
    roles = set(step.roles) | (set(step.escalate_roles) if escalated else set())
    users = {u.lower() for u in step.users} | ({u.lower() for u in step.escalate_users} if escalated else set())
    return voter.email.lower() in users or bool(roles & set(voter.roles))


def refusal(
    step: ApprovalStep, voter: Voter, *, requester_id: str, votes: list[Vote], escalated: bool
) -> Refusal | None:
    """Why this vote must not count, or None when it may."""
    if not eligible(step, voter, escalated=escalated):
        who = [*(f"role {r}" for r in step.roles), *step.users]
        return Refusal(
            "not_approver", f"{voter.email} may not vote on step {step.name!r} (approvers: {', '.join(who)})"
        )
    if voter.user_id == requester_id and not step.allow_requester:
        return Refusal("four_eyes", f"step {step.name!r} needs four eyes: the requester cannot approve or reject it")
    if any(v.user_id == voter.user_id for v in votes):
        return Refusal("duplicate", f"{voter.email} has already voted on step {step.name!r}")
    return None


def outcome(step: ApprovalStep, votes: list[Vote]) -> str | None:
    """`approved`, `rejected`, or None while the step is still open."""
    if any(not v.approve for v in votes):
        return "rejected"
    if len({v.user_id for v in votes if v.approve}) >= step.required:
        return "approved"
    return None
