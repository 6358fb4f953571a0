"""The runtime policy engine: from facts about what is to be launched to a decision. Pure: no I/O; the
clock is a fact like the others.

Facts: the artifact (its immutable subject: an image digest, or a package's exact version), the
certifications the subject holds, what the target requires, and the runtime asked for. The decision says
whether the launch is allowed, on which backend, and why, as machine-readable notes:

- `evaluation:certified:<tier>:<requirement>` — a passing, unexpired certification meets a requirement;
- `evaluation:missing:<tier>:<requirement>` — no certification of the subject meets it;
- `evaluation:failed:<tier>:<requirement>` — the newest certification for it failed;
- `evaluation:pending:<tier>:<requirement>` — one is being evaluated, none has passed yet;
- `evaluation:expired:<tier>:<requirement>` — the passing certifications for it have all expired;
- `evaluation:unpinned` — requirements exist but the artifact has no immutable subject to certify;
- `promotion:not-active:<stage>` — the subject has not been active in the stage a promotion needs it in;
- `governance:pending:<tier>` — a governance run of the subject for a tier has not ended yet;
- `policy_hook:remediation_gate` — a remediation run is active on a server of the target (promotions);
- `policy:no-requirements` — nothing is required: allowed.

Where a virtual-machine guest may serve (`vm_placement`): only a guest whose latest attestation is
`trusted`; otherwise the revision falls back to docker (or kubernetes) with the attestation's note
(`vm:attestation:untrusted:<why>`, `vm:attestation:stale:age`, `vm:attestation:pending:no-quote`) and
`runtime:fallback:<backend>`, or is blocked (`runtime:no-fallback`) when neither is enabled.

Only `certified` notes allow; any other requirement, promotion, governance or remediation note blocks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from packaging.version import InvalidVersion, Version

NPM_EXACT = re.compile(r"^\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$")
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class Requirement:
    tier: str
    requirement: str

    @property
    def key(self) -> str:
        return f"{self.tier}:{self.requirement}"


@dataclass(frozen=True)
class CertificationFact:
    tier: str
    requirement: str
    status: str  # pending | pass | fail
    created_at: datetime
    valid_until: datetime | None = None


@dataclass(frozen=True)
class Facts:
    subject: str | None
    required: list[Requirement]
    certifications: list[CertificationFact]
    runtime: str
    now: datetime
    # Promotions: the stage before the one asked for, and whether the subject has been active there.
    upstream_stage: str | None = None
    upstream_active: bool = True
    # Tiers of governance runs of the subject that have not ended.
    governance_pending: list[str] = field(default_factory=list)
    # Whether a remediation run is active on a server the decision is about.
    under_remediation: bool = False


@dataclass(frozen=True)
class Decision:
    allowed: bool
    backend: str
    notes: list[str] = field(default_factory=list)


def exact_version(registry: str, version: str | None) -> bool:
    """Whether a package version names exactly one release (no range, no tag)."""
    if not version:
        return False
    if registry == "npm":
        return bool(NPM_EXACT.match(version))
    try:
        Version(version)
    except InvalidVersion:
        return False
    return not any(c in version for c in "<>=!~*,")


def subject_of(source: dict[str, Any], image_digest: str | None) -> str | None:
    """The immutable thing a certification is bound to, or None when the source has none: a git build's
    image digest, an image pinned by digest, or a package's registry, name and exact version."""
    kind = source.get("type")
    if kind == "git":
        return image_digest if image_digest and DIGEST.match(image_digest) else None
    if kind == "image":
        _, _, digest = str(source.get("image", "")).partition("@")
        return digest if DIGEST.match(digest) else None
    if kind == "package":
        registry = source.get("registry") or "pypi"
        version = source.get("version")
        if not exact_version(registry, version):
            return None
        return f"{registry}:{source['package']}@{version}"
    return None


def _requirement_note(requirement: Requirement, facts: Facts) -> str:
    matching = sorted(
        (c for c in facts.certifications if (c.tier, c.requirement) == (requirement.tier, requirement.requirement)),
        key=lambda c: c.created_at,
    )
    passing = [c for c in matching if c.status == "pass"]
    valid = [c for c in passing if c.valid_until is None or c.valid_until > facts.now]
    if valid:
        return f"evaluation:certified:{requirement.key}"
    if passing:
        return f"evaluation:expired:{requirement.key}"
    if not matching:
        return f"evaluation:missing:{requirement.key}"
    if matching[-1].status == "pending":
        return f"evaluation:pending:{requirement.key}"
    return f"evaluation:failed:{requirement.key}"


def decide(facts: Facts) -> Decision:
    gates = [
        *(
            []
            if facts.upstream_stage is None or facts.upstream_active
            else [f"promotion:not-active:{facts.upstream_stage}"]
        ),
        *(f"governance:pending:{tier}" for tier in facts.governance_pending),
        *(["policy_hook:remediation_gate"] if facts.under_remediation else []),
    ]
    if not facts.required:
        if gates:
            return Decision(allowed=False, backend=facts.runtime, notes=gates)
        return Decision(allowed=True, backend=facts.runtime, notes=["policy:no-requirements"])
    if facts.subject is None:
        notes = ["evaluation:unpinned", *(f"evaluation:missing:{r.key}" for r in facts.required), *gates]
        return Decision(allowed=False, backend=facts.runtime, notes=notes)
    notes = [_requirement_note(r, facts) for r in facts.required]
    allowed = all(n.startswith("evaluation:certified:") for n in notes) and not gates
    return Decision(allowed=allowed, backend=facts.runtime, notes=[*notes, *gates])


def explain(decision: Decision) -> str:
    """One sentence for people: what blocks, and how to unblock it."""
    if decision.allowed:
        return "allowed: " + ", ".join(decision.notes)
    reasons = [n for n in decision.notes if not n.startswith("evaluation:certified:")]
    hint = (
        "pin an exact version or image digest, then certify it"
        if "evaluation:unpinned" in reasons
        else "promote it through the stages before this one"
        if any(r.startswith("promotion:") for r in reasons)
        else "wait for the governance run to end, or vote on it"
        if all(r.startswith("governance:") for r in reasons)
        else "wait for the remediation run to end, or cancel it"
        if all(r.startswith("policy_hook:remediation_gate") for r in reasons)
        else "certify this artifact with an evaluation run (POST /api/servers/{id}/eval/run with `certify`)"
    )
    return f"blocked by policy ({', '.join(reasons)}): {hint}"


FALLBACK_ORDER = ("docker", "kubernetes")


def vm_placement(posture: str, note: str, enabled: list[str] | tuple[str, ...]) -> Decision:
    """Where a revision asked for on a VM runs, given its guest's latest attestation (`posture` and its
    policy `note`) and the runtimes this worker has enabled."""
    if posture == "trusted":
        return Decision(allowed=True, backend="virtual-machine", notes=[note])
    for backend in FALLBACK_ORDER:
        if backend in enabled:
            return Decision(allowed=True, backend=backend, notes=[note, f"runtime:fallback:{backend}"])
    return Decision(allowed=False, backend="virtual-machine", notes=[note, "runtime:no-fallback"])
