"""The policy engine (core.policy): what an artifact is bound to, and the decision with its notes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from core.policy import CertificationFact, Facts, Requirement, decide, exact_version, explain, subject_of

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
DIGEST = "sha256:" + "ab" * 32
GOLD = Requirement("gold", "smoke")


def cert(status: str, *, age_days: float = 1, valid_days: float | None = 30, tier: str = "gold") -> CertificationFact:
    created = NOW - timedelta(days=age_days)
    until = created + timedelta(days=valid_days) if valid_days is not None and status == "pass" else None
    return CertificationFact(tier, "smoke", status, created, until)


def facts(*certs: CertificationFact, required: list[Requirement] | None = None, subject: str | None = DIGEST) -> Facts:
    return Facts(subject=subject, required=[GOLD] if required is None else required, certifications=list(certs),
                 runtime="docker", now=NOW)  # fmt: skip


@pytest.mark.parametrize(
    ("source", "digest", "subject"),
    [
        ({"type": "git", "repo_url": "x"}, DIGEST, DIGEST),
        ({"type": "git", "repo_url": "x"}, None, None),
        ({"type": "git", "repo_url": "x"}, "localimage:latest", None),
        ({"type": "image", "image": f"ghcr.io/acme/w@{DIGEST}"}, None, DIGEST),
        ({"type": "image", "image": "ghcr.io/acme/w:1.2"}, None, None),
        (
            {"type": "package", "package": "mcp-server-time", "version": "2025.9.25"},
            None,
            "pypi:mcp-server-time@2025.9.25",
        ),
        ({"type": "package", "package": "mcp-server-time"}, None, None),
        ({"type": "package", "package": "mcp-server-time", "version": ">=1.0"}, None, None),
        ({"type": "package", "registry": "npm", "package": "@a/b", "version": "1.2.3"}, None, "npm:@a/b@1.2.3"),
        ({"type": "package", "registry": "npm", "package": "@a/b", "version": "^1.2.3"}, None, None),
        ({"type": "package", "registry": "npm", "package": "@a/b", "version": "latest"}, None, None),
        ({"type": "command", "command": "/bin/x"}, None, None),
    ],
)
def test_what_an_artifact_is_bound_to(source: dict[str, str], digest: str | None, subject: str | None) -> None:
    assert subject_of(source, digest) == subject


def test_exact_versions() -> None:
    assert exact_version("pypi", "1.0") and exact_version("pypi", "2025.9.25") and exact_version("pypi", "1.0rc1")
    assert not exact_version("pypi", "~=1.0") and not exact_version("pypi", "1.*") and not exact_version("pypi", None)


def test_nothing_required_is_allowed() -> None:
    decision = decide(facts(required=[]))
    assert decision.allowed and decision.notes == ["policy:no-requirements"] and decision.backend == "docker"


def test_a_valid_passing_certification_allows() -> None:
    decision = decide(facts(cert("pass")))
    assert decision.allowed and decision.notes == ["evaluation:certified:gold:smoke"]
    assert explain(decision).startswith("allowed")


@pytest.mark.parametrize(
    ("certs", "note"),
    [
        ((), "evaluation:missing:gold:smoke"),
        ((cert("pass", tier="silver"),), "evaluation:missing:gold:smoke"),
        ((cert("pass", age_days=40),), "evaluation:expired:gold:smoke"),
        ((cert("fail"),), "evaluation:failed:gold:smoke"),
        ((cert("fail", age_days=2), cert("pending")), "evaluation:pending:gold:smoke"),
        ((cert("pass", age_days=40), cert("fail")), "evaluation:expired:gold:smoke"),
    ],
)
def test_what_blocks_and_why(certs: tuple[CertificationFact, ...], note: str) -> None:
    decision = decide(facts(*certs))
    assert not decision.allowed and decision.notes == [note]
    assert note in explain(decision) and "certify" in explain(decision)


def test_every_requirement_must_be_met() -> None:
    both = [GOLD, Requirement("silver", "smoke")]
    decision = decide(facts(cert("pass"), required=both))
    assert not decision.allowed
    assert decision.notes == ["evaluation:certified:gold:smoke", "evaluation:missing:silver:smoke"]
    assert decide(facts(cert("pass"), cert("pass", tier="silver"), required=both)).allowed


def test_an_unpinned_artifact_cannot_be_certified_so_it_is_blocked() -> None:
    decision = decide(facts(cert("pass"), subject=None))
    assert not decision.allowed and decision.notes[0] == "evaluation:unpinned"
    assert "pin an exact version" in explain(decision)


def test_a_certification_without_an_end_never_expires() -> None:
    assert decide(facts(cert("pass", age_days=4000, valid_days=None))).allowed
