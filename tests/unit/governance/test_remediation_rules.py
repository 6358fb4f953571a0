"""Playbook validation and the remediation gate of the policy engine (pure)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from core.policy import Facts, decide, explain
from core.remediation import Playbook


def test_a_playbook_of_every_step_kind_with_an_approval() -> None:
    playbook = Playbook.model_validate(
        {
            "approval": {"name": "ok", "kind": "approval", "roles": ["sre"], "required": 2},
            "sla_seconds": 600,
            "steps": [
                {"name": "a", "kind": "restart"},
                {"name": "b", "kind": "redeploy_previous"},
                {"name": "c", "kind": "rotate_registry_credentials"},
                {"name": "d", "kind": "resources", "cpu": 1.5},
                {"name": "e", "kind": "http", "url": "https://pager.example/hook"},
                {"name": "f", "kind": "notify", "message": "hi"},
                {"name": "g", "kind": "wait", "seconds": 5},
            ],
        }
    )
    assert [s.kind for s in playbook.steps][-1] == "wait" and playbook.approval is not None


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"steps": []}, "at least 1"),
        ({"steps": [{"name": "x", "kind": "reboot"}]}, "kind"),
        ({"steps": [{"name": "x", "kind": "resources"}]}, "changes nothing"),
        ({"steps": [{"name": "x", "kind": "http", "url": "ftp://x"}]}, "URL scheme"),
        ({"steps": [{"name": "x", "kind": "notify", "message": "a"}, {"name": "x", "kind": "restart"}]}, "unique"),
        ({"steps": [{"name": "x", "kind": "restart"}], "approval": {"name": "ok", "kind": "approval"}}, "no approver"),
        ({"steps": [{"name": "x", "kind": "restart", "extra": 1}]}, "extra"),
    ],
)
def test_bad_playbooks_are_refused_with_the_reason(body: dict[str, object], needle: str) -> None:
    with pytest.raises(ValidationError) as info:
        Playbook.model_validate(body)
    assert needle.lower() in str(info.value).lower()


def test_an_active_remediation_blocks_a_promotion_with_its_note() -> None:
    facts = Facts(subject=None, required=[], certifications=[], runtime="promotion", now=datetime.now(UTC))
    assert decide(facts).allowed
    gated = decide(Facts(**{**facts.__dict__, "under_remediation": True}))
    assert not gated.allowed and gated.notes == ["policy_hook:remediation_gate"]
    assert "remediation run" in explain(gated)
