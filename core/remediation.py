"""Remediation playbooks: what to do for a server that went wrong, in order. Pure: no I/O, no clock.

A playbook is ordered steps, each one of:

- `restart` — replace the serving revision's instance (as the supervisor does);
- `redeploy_previous` — deploy again the newest earlier revision that served (its artifact, no rebuild);
- `rotate_registry_credentials` — run the registry credential refresher (`REGISTRY_AUTH_REFRESHER`);
- `resources` — change the server's CPU and/or memory (takes effect at the next restart or deploy);
- `http` — call an endpoint (a runbook hook, a pager); a status outside `expect_status` fails the step;
- `notify` — write a line to the server's log and the run's artifacts;
- `wait` — pause (a durable timer).

It may require an approval before any step runs (the same rules as a governance approval step: roles
or users, distinct approvals, four-eyes, SLA escalation, expiry) and may have an SLA for the whole run,
past which the run records the breach.

Every run ends with a structured exit code and, unless it succeeded, a typed reason.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, model_validator

from core.governance import MAX_SECONDS, STEP_NAME, ApprovalStep

# Exit codes of a run.
EXIT_OK = 0
EXIT_STEP_FAILED = 10
EXIT_REJECTED = 20
EXIT_CANCELLED = 30


class RunStatus(StrEnum):
    """A run waits for its approval (`awaiting_approval`) when its playbook asks for one, runs its steps
    (`running`) and ends `succeeded`, `failed`, `rejected` or `cancelled`."""

    AWAITING_APPROVAL = "awaiting_approval"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"
    CANCELLED = "cancelled"


ACTIVE = (RunStatus.AWAITING_APPROVAL, RunStatus.RUNNING)
ENDED = (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.REJECTED, RunStatus.CANCELLED)
TRIGGERS = ("manual", "degraded", "untrusted")


class _Step(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=STEP_NAME)


class RestartStep(_Step):
    kind: Literal["restart"]


class RedeployPreviousStep(_Step):
    kind: Literal["redeploy_previous"]


class RotateCredentialsStep(_Step):
    kind: Literal["rotate_registry_credentials"]


class ResourcesStep(_Step):
    kind: Literal["resources"]
    cpu: float | None = Field(default=None, gt=0, le=64)
    memory_mib: int | None = Field(default=None, ge=64, le=1024 * 1024)

    @model_validator(mode="after")
    def _something(self) -> ResourcesStep:
        if self.cpu is None and self.memory_mib is None:
            raise ValueError(f"resources step {self.name!r} changes nothing: give cpu and/or memory_mib")
        return self


class HttpStep(_Step):
    kind: Literal["http"]
    url: HttpUrl
    method: Literal["GET", "POST", "PUT"] = "POST"
    expect_status: list[int] = Field(default_factory=lambda: list(range(200, 300)), min_length=1, max_length=100)
    timeout_seconds: float = Field(default=30, gt=0, le=600)


class NotifyStep(_Step):
    kind: Literal["notify"]
    message: str = Field(min_length=1, max_length=2000)


class WaitStep(_Step):
    kind: Literal["wait"]
    seconds: float = Field(gt=0, le=MAX_SECONDS)


Step = Annotated[
    RestartStep | RedeployPreviousStep | RotateCredentialsStep | ResourcesStep | HttpStep | NotifyStep | WaitStep,
    Field(discriminator="kind"),
]


class Playbook(BaseModel):
    model_config = ConfigDict(extra="forbid")

    steps: list[Step] = Field(min_length=1, max_length=20)
    approval: ApprovalStep | None = Field(default=None, description="Required before any step runs")
    sla_seconds: float | None = Field(default=None, gt=0, le=MAX_SECONDS, description="The run should end by then")

    @model_validator(mode="after")
    def _unique(self) -> Playbook:
        names = [s.name for s in self.steps] + ([self.approval.name] if self.approval else [])
        if len(set(names)) != len(names):
            raise ValueError("step names (the approval's included) must be unique within a playbook")
        return self


def failure_reason(kind: str, detail: str) -> str:
    """A typed reason: `step_failed:<kind>:<detail>` with the detail as a short word."""
    return f"step_failed:{kind}:{detail}"
