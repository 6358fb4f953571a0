"""The promotion rules (core.promotion) and the policy engine's promotion and governance notes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from core import promotion as rules
from core.errors import DomainError
from core.policy import Facts, Requirement, decide, explain

T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)  # a Monday


def track(*stages: dict[str, object]) -> rules.TrackSpec:
    return rules.TrackSpec.model_validate({"stages": [{"servers": [str(uuid.uuid4())], **s} for s in stages]})


def fact(stage: str, subject: str, status: str, activated: datetime | None = None) -> rules.PromotionFact:
    return rules.PromotionFact(stage, subject, status, activated or T0, activated)


def test_windows_allow_deny_days_and_midnight() -> None:
    office = rules.Window(kind="allow", days=["mon", "tue"], start="09:00", end="17:00")
    assert office.matches(T0) and not office.matches(T0.replace(hour=17))
    assert not office.matches(T0 + timedelta(days=2))  # Wednesday
    night = rules.Window(kind="deny", start="22:00", end="02:00", days=["mon"])
    assert night.matches(T0.replace(hour=23)) and night.matches(T0.replace(hour=1) + timedelta(days=1))
    assert not night.matches(T0.replace(hour=1))  # Monday 01:00 belongs to Sunday's night
    assert rules.window_open([], T0)
    assert rules.window_open([office], T0) and not rules.window_open(
        [office, rules.Window(kind="deny", start="11:00", end="13:00")], T0
    )
    closed = T0.replace(hour=18)
    assert rules.next_open([office], closed) == (T0 + timedelta(days=1)).replace(hour=9)
    assert rules.next_open([office], T0) == T0
    never = rules.Window(kind="deny", start="00:00", end="23:59")
    assert rules.next_open([never, rules.Window(kind="allow", days=["sun"], start="23:59", end="00:00")], T0) == (
        T0 + timedelta(days=6)
    ).replace(hour=23, minute=59)
    assert rules.next_open([never, rules.Window(kind="deny", start="23:59", end="00:00")], T0) is None


def test_bad_windows_and_tracks_are_refused_with_the_reason() -> None:
    with pytest.raises(ValidationError, match="HH:MM"):
        rules.Window(kind="allow", start="25:00", end="02:00")
    with pytest.raises(ValidationError, match="unique"):
        track({"name": "dev"}, {"name": "dev"})
    shared = str(uuid.uuid4())
    with pytest.raises(ValidationError, match="one stage"):
        rules.TrackSpec.model_validate(
            {"stages": [{"name": "a", "servers": [shared]}, {"name": "b", "servers": [shared]}]}
        )
    with pytest.raises(ValidationError):
        track({"name": "Prod!"})


def test_order_soak_and_rolled_back_upstream() -> None:
    spec = track({"name": "dev"}, {"name": "prod", "soak_seconds": 600})
    assert rules.check_order(spec, 0, "d1", [], T0) == rules.OrderCheck()
    refused = rules.check_order(spec, 1, "d1", [], T0)
    assert refused.refusal and "'dev'" in refused.refusal
    history = [fact("dev", "d1", "active", T0)]
    assert rules.check_order(spec, 1, "d1", history, T0 + timedelta(seconds=100)).soak_left == 500
    assert rules.check_order(spec, 1, "d1", history, T0 + timedelta(seconds=700)).soak_left == 0
    # Superseded upstream still counts as having been there; rolled back does not.
    assert (
        rules.check_order(spec, 1, "d1", [fact("dev", "d1", "superseded", T0)], T0 + timedelta(hours=1)).refusal is None
    )
    assert rules.check_order(spec, 1, "d1", [fact("dev", "d1", "rolled_back", T0)], T0).refusal


def test_current_rollback_target_and_auto_candidates() -> None:
    spec = track({"name": "dev"}, {"name": "staging", "auto_promote": True}, {"name": "prod"})
    history = [
        fact("staging", "a", "superseded", T0),
        fact("staging", "b", "active", T0 + timedelta(hours=1)),
    ]
    current = rules.current("staging", history)
    assert current is not None and current.subject == "b"
    assert rules.rollback_target("staging", history) == "a"
    assert rules.rollback_target("prod", history) is None
    assert rules.auto_candidate(spec, 1, "c", history, rejected=set(), held=set())
    assert not rules.auto_candidate(spec, 1, "c", history, rejected={"c"}, held=set())  # rejected: never
    assert not rules.auto_candidate(spec, 1, "c", history, rejected=set(), held={"staging"})
    assert not rules.auto_candidate(spec, 1, "a", history, rejected=set(), held=set())  # tried there already
    assert not rules.auto_candidate(spec, 2, "c", history, rejected=set(), held=set())  # prod is manual
    assert not rules.auto_candidate(spec, 3, "c", history, rejected=set(), held=set())  # no stage after


def test_policy_notes_for_promotion_and_governance() -> None:
    base = {"subject": "sha256:" + "a" * 64, "certifications": [], "runtime": "promotion", "now": T0}
    blocked = decide(Facts(required=[], upstream_stage="staging", upstream_active=False, **base))  # type: ignore[arg-type]
    assert not blocked.allowed and blocked.notes == ["promotion:not-active:staging"]
    assert "stages before" in explain(blocked)
    pending = decide(Facts(required=[], governance_pending=["prod"], **base))  # type: ignore[arg-type]
    assert not pending.allowed and pending.notes == ["governance:pending:prod"]
    assert "vote" in explain(pending)
    both = decide(
        Facts(required=[Requirement("gold", "smoke")], upstream_stage="dev", upstream_active=True, **base)  # type: ignore[arg-type]
    )
    assert not both.allowed and both.notes == ["evaluation:missing:gold:smoke"]
    free = decide(Facts(required=[], upstream_stage="dev", upstream_active=True, **base))  # type: ignore[arg-type]
    assert free.allowed and free.notes == ["policy:no-requirements"]


def test_a_promotion_only_moves_forward_and_an_ended_one_stays_ended() -> None:
    S = rules.Status
    assert rules.may_move(S.SCHEDULED, S.IN_PROGRESS)
    assert rules.may_move("in_progress", "awaiting_approval")
    assert rules.may_move(S.AWAITING_APPROVAL, S.APPROVED)
    assert rules.may_move(S.APPROVED, S.ACTIVE)
    assert rules.may_move(S.SCHEDULED, S.ACTIVE)  # a rollback deploys straight away
    assert rules.may_move(S.IN_PROGRESS, S.IN_PROGRESS)
    for open_ in rules.OPEN:
        for end in (S.REJECTED, S.FAILED, S.ABORTED):
            assert rules.may_move(open_, end)
    assert not rules.may_move(S.APPROVED, S.IN_PROGRESS)
    assert not rules.may_move(S.AWAITING_APPROVAL, S.SCHEDULED)
    assert rules.may_move(S.ACTIVE, S.SUPERSEDED) and rules.may_move(S.ACTIVE, S.ROLLED_BACK)
    assert not rules.may_move(S.ACTIVE, S.FAILED)
    for ended in (S.SUPERSEDED, S.ROLLED_BACK, S.REJECTED, S.FAILED, S.ABORTED):
        assert not any(rules.may_move(ended, other) for other in S if other != ended)
    assert set(rules.OPEN) | set(rules.ENDED) == set(S)


def test_a_stage_server_is_pinned_to_the_promoted_artifact_of_its_own_source() -> None:
    git = {"type": "git", "repo_url": "https://git.example/a.git", "subdirectory": None, "ref": "main"}
    pinned = rules.pinned_source("b", git, dict(git), "abc123", uuid.uuid4())
    assert pinned["ref"] == "abc123" and git["ref"] == "main"
    package = {"type": "package", "package": "mcp-time", "version": "1"}
    assert rules.pinned_source("b", package, {**package, "version": "2"}, None, None)["version"] == "2"
    with pytest.raises(DomainError, match="was never built"):
        rules.pinned_source("b", git, dict(git), "abc123", None)
    with pytest.raises(DomainError, match="does not build from"):
        rules.pinned_source("b", git, {**git, "repo_url": "https://git.example/other.git"}, "abc123", uuid.uuid4())
    with pytest.raises(DomainError, match="does not run package"):
        rules.pinned_source("b", package, {**package, "package": "other"}, None, None)
    with pytest.raises(DomainError, match="is a git source"):
        rules.pinned_source("b", git, package, None, None)
