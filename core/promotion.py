"""Promotion tracks and the rules a promotion follows. Pure: no I/O; the clock is an argument.

A track is an ordered list of stages (e.g. dev -> staging -> prod). A stage names its servers, the
certifications a digest must hold there, an optional verification (an evaluation run that certifies the
digest), an optional governance definition, a soak time, whether it promotes automatically, and
promotion windows.

- Order: a digest enters a stage only once it has been active in the stage before it (the first stage
  takes any digest). A digest rolled back from the stage before does not count.
- Soak: a stage's `soak_seconds` is how long the digest must have been active upstream before it may
  enter; a promotion waits for it (a durable timer).
- Windows: `deny` windows close the stage while they match; when there are `allow` windows the stage is
  open only while one matches. Times are UTC, `HH:MM`; a window whose end is before its start runs over
  midnight. No windows: always open.
- Auto-promotion: when a digest becomes active in a stage, the next stage (if it promotes automatically
  and is not held) is scheduled with it, unless that digest was rejected on the track or has already been
  tried there.
"""

from __future__ import annotations

import copy
import uuid
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core.errors import DomainError
from core.governance import MAX_SECONDS

STAGE_NAME = r"^[a-z0-9][a-z0-9_.-]{0,31}$"
TIER = r"^[a-z0-9][a-z0-9_.-]{0,31}$"
REQUIREMENT = r"^[a-z0-9][a-z0-9_.:-]{0,99}$"
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


class Status(StrEnum):
    """A promotion moves scheduled -> in_progress -> awaiting_approval -> approved -> active, or ends
    rejected, failed or aborted; an active one becomes superseded (a newer digest took the stage) or
    rolled_back (the stage went back to the digest before it)."""

    SCHEDULED = "scheduled"
    IN_PROGRESS = "in_progress"
    AWAITING_APPROVAL = "awaiting_approval"
    APPROVED = "approved"
    ACTIVE = "active"
    SUPERSEDED = "superseded"
    ROLLED_BACK = "rolled_back"
    REJECTED = "rejected"
    FAILED = "failed"
    ABORTED = "aborted"


ACTIVE = Status.ACTIVE
OPEN = (Status.SCHEDULED, Status.IN_PROGRESS, Status.AWAITING_APPROVAL, Status.APPROVED)
ENDED = (Status.ACTIVE, Status.SUPERSEDED, Status.ROLLED_BACK, Status.REJECTED, Status.FAILED, Status.ABORTED)
# What each status may become. An open promotion may end at any step; an active one only gives way.
MOVES: dict[Status, frozenset[Status]] = {
    **{
        status: frozenset(OPEN[index + 1 :]) | {Status.ACTIVE, Status.REJECTED, Status.FAILED, Status.ABORTED}
        for index, status in enumerate(OPEN)
    },
    Status.ACTIVE: frozenset({Status.SUPERSEDED, Status.ROLLED_BACK}),
    **{status: frozenset() for status in ENDED if status is not Status.ACTIVE},
}


def may_move(current: str, to: str) -> bool:
    """Whether a promotion in status `current` may become `to` (staying put is always allowed)."""
    return current == to or Status(to) in MOVES[Status(current)]


def _clock(value: str) -> time:
    try:
        hours, minutes = value.split(":")
        return time(int(hours), int(minutes))
    except ValueError:
        raise ValueError(f"{value!r} is not a time of day as HH:MM (00:00 to 23:59)") from None


class Window(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["allow", "deny"]
    days: list[Day] = Field(default_factory=list, description="Days it applies to (UTC); empty: every day")
    start: str = Field(description="HH:MM, UTC")
    end: str = Field(description="HH:MM, UTC; before `start`: the window runs over midnight")

    @field_validator("start", "end")
    @classmethod
    def _time(cls, value: str) -> str:
        _clock(value)
        return value

    def matches(self, now: datetime) -> bool:
        start, end, at = _clock(self.start), _clock(self.end), now.time().replace(second=0, microsecond=0)
        day = DAYS[now.weekday()]
        if start <= end:
            return (not self.days or day in self.days) and start <= at < end
        # Over midnight: the part after midnight belongs to the day the window started on.
        yesterday = DAYS[(now.weekday() - 1) % 7]
        if at >= start:
            return not self.days or day in self.days
        return at < end and (not self.days or yesterday in self.days)


class Verification(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tier: str = Field(pattern=TIER)
    requirement: str = Field(default="default", pattern=REQUIREMENT)
    valid_days: float = Field(default=30, gt=0, le=3650)


class StageRequirement(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tier: str = Field(pattern=TIER)
    requirement: str = Field(default="default", pattern=REQUIREMENT)


class Stage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=STAGE_NAME, description="e.g. dev, staging, prod")
    servers: list[uuid.UUID] = Field(min_length=1, max_length=20, description="Your servers this stage deploys")
    required_certifications: list[StageRequirement] = Field(default_factory=list, max_length=20)
    verification: Verification | None = Field(
        default=None, description="An evaluation run that certifies the digest before it enters the stage"
    )
    governance_workflow_id: uuid.UUID | None = Field(
        default=None, description="A governance definition the promotion must pass (approvals, checks, waits)"
    )
    governance_tier: str | None = Field(default=None, pattern=TIER, description="Unset: the stage's name")
    soak_seconds: float = Field(default=0, ge=0, le=MAX_SECONDS, description="Active upstream at least this long")
    auto_promote: bool = Field(default=False, description="Take the newest digest that becomes active upstream")
    windows: list[Window] = Field(default_factory=list, max_length=20)


class TrackSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stages: list[Stage] = Field(min_length=1, max_length=10)

    @model_validator(mode="after")
    def _distinct(self) -> TrackSpec:
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError("stage names must be unique within a track")
        servers = [server for stage in self.stages for server in stage.servers]
        if len(set(servers)) != len(servers):
            raise ValueError("a server belongs to one stage of a track: name each server once")
        return self

    def index(self, stage: str) -> int | None:
        return next((i for i, s in enumerate(self.stages) if s.name == stage), None)


@dataclass(frozen=True)
class PromotionFact:
    stage: str
    subject: str
    status: str
    created_at: datetime
    activated_at: datetime | None = None


def promotion_workflow_id(promotion_id: uuid.UUID | str) -> str:
    return f"promotion-{promotion_id}"


def facts_of(rows: list[Any]) -> list[PromotionFact]:
    """Promotion records (anything with their fields) as the facts these rules read."""
    return [PromotionFact(p.stage, p.subject, p.status, p.created_at, p.activated_at) for p in rows]


def window_open(windows: list[Window], now: datetime) -> bool:
    if any(w.kind == "deny" and w.matches(now) for w in windows):
        return False
    allows = [w for w in windows if w.kind == "allow"]
    return not allows or any(w.matches(now) for w in allows)


def next_open(windows: list[Window], now: datetime) -> datetime | None:
    """The first minute at or after `now` when the stage is open; None when no minute of the coming
    eight days is (the windows never open)."""
    if window_open(windows, now):
        return now
    at = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    for _ in range(8 * 24 * 60):
        if window_open(windows, at):
            return at
        at += timedelta(minutes=1)
    return None


def upstream_activation(track: TrackSpec, index: int, subject: str, history: list[PromotionFact]) -> datetime | None:
    """When the digest first became active in the stage before `index` (not counting a promotion that was
    rolled back); None when it never did."""
    upstream = track.stages[index - 1].name
    times = [
        p.activated_at
        for p in history
        if p.stage == upstream
        and p.subject == subject
        and p.status in (Status.ACTIVE, Status.SUPERSEDED)
        and p.activated_at
    ]
    return min(times) if times else None


@dataclass(frozen=True)
class OrderCheck:
    refusal: str | None = None  # why the digest may not enter the stage at all
    soak_left: float = 0.0  # seconds it still has to soak upstream


def check_order(track: TrackSpec, index: int, subject: str, history: list[PromotionFact], now: datetime) -> OrderCheck:
    if index == 0:
        return OrderCheck()
    upstream = track.stages[index - 1].name
    since = upstream_activation(track, index, subject, history)
    if since is None:
        return OrderCheck(
            refusal=f"{subject} has not been active in stage {upstream!r}, which comes before "
            f"{track.stages[index].name!r}: promote it there first"
        )
    soaked = (now - since).total_seconds()
    return OrderCheck(soak_left=max(0.0, track.stages[index].soak_seconds - soaked))


def current(stage: str, history: list[PromotionFact]) -> PromotionFact | None:
    """The promotion whose digest the stage runs now."""
    active = [p for p in history if p.stage == stage and p.status == ACTIVE and p.activated_at]
    return max(active, key=lambda p: p.activated_at or p.created_at) if active else None


def rollback_target(stage: str, history: list[PromotionFact]) -> str | None:
    """The digest the stage ran before its current one (the newest superseded one that is not current)."""
    now = current(stage, history)
    if now is None:
        return None
    earlier = [
        p
        for p in history
        if p.stage == stage
        and p.status == Status.SUPERSEDED
        and p.subject != now.subject
        and p.activated_at
        and now.activated_at
        and p.activated_at < now.activated_at
    ]
    return max(earlier, key=lambda p: p.activated_at or p.created_at).subject if earlier else None


def auto_candidate(
    track: TrackSpec,
    index: int,
    subject: str,
    history: list[PromotionFact],
    *,
    rejected: set[str],
    held: set[str],
) -> bool:
    """Whether `subject`, just active in stage `index - 1`, is promoted into stage `index` automatically."""
    if index >= len(track.stages):
        return False
    stage = track.stages[index]
    if not stage.auto_promote or stage.name in held or subject in rejected:
        return False
    # Tried there already (whatever came of it): a person decides about it from now on.
    return not any(p.stage == stage.name and p.subject == subject for p in history)


def pinned_source(
    name: str, mine: dict[str, Any], theirs: dict[str, Any], revision: str | None, artifact_id: Any
) -> dict[str, Any]:
    """Server `name`'s own source (`mine`), pinned to exactly the artifact a deployment of source `theirs`
    ran (its git `revision` and built `artifact_id`); a DomainError when the server does not build from
    the same thing."""
    pinned = copy.deepcopy(mine)
    kind = pinned.get("type")
    if kind != theirs.get("type"):
        raise DomainError(f"server {name!r} is a {kind} source; the promoted artifact is {theirs.get('type')}")
    if kind == "git":
        if (pinned.get("repo_url"), pinned.get("subdirectory")) != (theirs.get("repo_url"), theirs.get("subdirectory")):
            raise DomainError(f"server {name!r} does not build from {theirs.get('repo_url')}")
        if not revision or not artifact_id:
            raise DomainError("the promoted revision was never built")
        pinned["ref"] = revision
        return pinned
    if kind == "package":
        same = (pinned.get("registry") or "pypi", pinned.get("package")) == (
            theirs.get("registry") or "pypi",
            theirs.get("package"),
        )
        if not same:
            raise DomainError(f"server {name!r} does not run package {theirs.get('package')}")
        pinned["version"] = theirs.get("version")
        return pinned
    if kind == "image":
        pinned["image"] = theirs.get("image")
        return pinned
    raise DomainError(f"a {kind} source cannot be promoted")
