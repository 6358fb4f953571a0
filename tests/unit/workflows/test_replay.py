"""Replay recorded workflow histories against today's workflow code: a change that breaks determinism
for runs already in flight fails here (record new ones with tests/histories/record.py)."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from worker.main import WORKFLOWS
from workflows import placement

HISTORIES = sorted((Path(__file__).resolve().parents[2] / "histories").glob("*.json"))


def _workflow_type(path: Path) -> str:
    events = json.loads(path.read_text())["events"]
    return str(events[0]["workflowExecutionStartedEventAttributes"]["workflowType"]["name"])


def _patches(path: Path) -> set[str]:
    events = json.loads(path.read_text())["events"]
    markers = [e["markerRecordedEventAttributes"] for e in events if "markerRecordedEventAttributes" in e]
    return {
        json.loads(base64.b64decode(m["details"]["patch-data"]["payloads"][0]["data"]))["id"]
        for m in markers
        if m["markerName"] == "core_patch"
    }


def test_every_workflow_has_a_recorded_history() -> None:
    recorded = {_workflow_type(p) for p in HISTORIES}
    assert {w.__temporal_workflow_definition.name for w in WORKFLOWS} <= recorded  # type: ignore[attr-defined]


def _patch_ids(call: str) -> set[str]:
    """The patch ids the workflows pass to `workflow.<call>(...)`, by constant or literal."""
    import workflows.deploy as deploy
    import workflows.promotion as promotion

    code = "".join(p.read_text() for p in sorted((Path(__file__).resolve().parents[3] / "workflows").glob("*.py")))
    ids = set()
    for name in re.findall(rf"workflow\.{call}\(([\w.\"-]+)\)", code):
        if name.startswith('"'):
            ids.add(name.strip('"'))
        elif name == "placement.PATCH":
            ids.add(placement.PATCH)
        else:
            ids.add(str(getattr(deploy, name, None) or getattr(promotion, name)))
    return ids


def _retired_in_code() -> set[str]:
    """The patch ids the workflows only deprecate: their old branch is gone."""
    return _patch_ids("deprecate_patch")


def test_both_sides_of_every_live_patch_are_recorded() -> None:
    # Runs from before a patch may still be in flight: a workflow that has a patched history keeps an
    # unpatched one too, until the patch is retired (deprecated, and the histories that need its old
    # branch removed with it).
    retired = _retired_in_code()
    by_type: dict[str, list[set[str]]] = {}
    for path in HISTORIES:
        by_type.setdefault(_workflow_type(path), []).append(_patches(path))
    for workflow_type, histories in by_type.items():
        for patch in set().union(*histories) - retired:
            assert any(patch not in h for h in histories), f"{workflow_type}: no history from before {patch!r}"
    assert any("promotion-governance-started-first" in h for h in by_type["PromotionWorkflow"])
    assert any("remediation-trigger" in h for h in by_type["SupervisorWorkflow"])


def test_retired_patches_are_only_deprecated_and_their_markers_still_replay() -> None:
    retired = _retired_in_code()
    assert {"host-placement", "drain-sessions", "policy-gate", "child-search-attributes"} <= retired
    assert not retired & _patch_ids("patched")
    # Runs that recorded the markers are kept and replay (test_recorded_history_replays): one per workflow.
    marked = {_workflow_type(p) for p in HISTORIES if _patches(p) & retired}
    assert {"DeployWorkflow", "StopServerWorkflow", "DeleteServerWorkflow"} <= marked


def test_the_supervisor_history_holds_a_restart() -> None:
    events = json.loads((HISTORIES[0].parent / "supervise.json").read_text())["events"]
    activities = [
        e["activityTaskScheduledEventAttributes"]["activityType"]["name"]
        for e in events
        if "activityTaskScheduledEventAttributes" in e
    ]
    assert "supervise_restart" in activities and "supervise_probe" in activities


def _scheduled(name: str) -> list[str]:
    events = json.loads((HISTORIES[0].parent / name).read_text())["events"]
    return [
        e["activityTaskScheduledEventAttributes"]["activityType"]["name"]
        for e in events
        if "activityTaskScheduledEventAttributes" in e
    ]


def test_the_evaluation_histories_hold_a_candidate_and_a_blocked_deployment() -> None:
    candidate = _scheduled("evaluation_candidate.json")
    assert (
        candidate.index("launch_instance")
        < candidate.index("run_evaluation_tests")
        < candidate.index("release_candidate")
    )
    assert "launch_instance" not in _scheduled("evaluation.json")
    # Blocked by policy: nothing is claimed, prepared or launched.
    assert not {"claim_host", "prepare_source", "launch_instance"} & set(_scheduled("deploy_blocked_policy.json"))


def _children(name: str) -> list[str]:
    events = json.loads((HISTORIES[0].parent / name).read_text())["events"]
    key = "startChildWorkflowExecutionInitiatedEventAttributes"
    return [e[key]["workflowType"]["name"] for e in events if key in e]


def test_the_promotion_histories_hold_verification_governance_and_deployment() -> None:
    assert _children("promotion_verified.json") == ["EvaluationRunWorkflow"]
    assert _children("promotion_governed.json") == ["GovernanceRunWorkflow", "DeployWorkflow"]
    timers = [
        e
        for e in json.loads((HISTORIES[0].parent / "promotion_governed.json").read_text())["events"]
        if "timerStartedEventAttributes" in e
    ]
    assert timers, "the soak of the governed promotion is a durable timer"
    git = _children("deploy_git_kinds.json")
    assert git == ["BuildWorkflow", "PushWorkflow", "SupervisorWorkflow"], git


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_recorded_history_replays(path: Path) -> None:
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    result = await Replayer(workflows=WORKFLOWS).replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, result.replay_failure


def test_the_remediation_histories_hold_every_kind_of_step_and_the_trigger() -> None:
    run = _scheduled("remediation_remediation.json")
    assert {"remediation_step", "supervise_restart", "remediation_record"} <= set(run)
    events = json.loads((HISTORIES[0].parent / "remediation_remediation.json").read_text())["events"]
    assert any("startChildWorkflowExecutionInitiatedEventAttributes" in e for e in events)  # redeploy_previous
    assert any("timerStartedEventAttributes" in e for e in events)  # the wait step
    updates = [e for e in events if "workflowExecutionUpdateAcceptedEventAttributes" in e]
    assert len(updates) == 1  # the refused vote never entered history
    assert "remediation_trigger" in _scheduled("supervise_degraded_remediation.json")
    assert "remediation-trigger" in _patches(HISTORIES[0].parent / "supervise_degraded_remediation.json")
