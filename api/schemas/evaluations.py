"""Evaluation tests and runs, certifications and policy decisions."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

from api.schemas.common import CertificationRequirement
from core.evaluation import TOOL_NAME, Expectation


class EvalTestCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        min_length=1,
        max_length=100,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._:@-]*$",
        description="Unique among the server's tests; letters, digits, space and . _ : @ -",
    )
    tool: str = Field(pattern=TOOL_NAME.pattern, description="The tool to call")
    arguments: dict[str, Any] = Field(default_factory=dict, description="The tool's arguments (at most 64 KiB)")
    expectation: Expectation
    expect_error: StrictBool = Field(default=False, description="The tool is expected to answer with isError")
    timeout_seconds: float = Field(default=30.0, gt=0, le=600, description="Longest the call may take")

    @field_validator("arguments")
    @classmethod
    def _small(cls, arguments: dict[str, Any]) -> dict[str, Any]:
        if len(json.dumps(arguments)) > 64 * 1024:
            raise ValueError("arguments are larger than 64 KiB")
        return arguments


class EvalTestPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    tool: str
    arguments: dict[str, Any]
    expectation: dict[str, Any]
    expect_error: bool
    timeout_seconds: float
    created_at: datetime


class CertifyRequest(CertificationRequirement):
    valid_days: float = Field(default=30, gt=0, le=3650, description="How long a passing certification is valid")


class EvalRunCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    deployment_id: uuid.UUID | None = Field(
        default=None,
        description="The revision to evaluate. Unset: the one serving. A revision that does not serve is "
        "launched beside the serving one for the run and removed after it",
    )
    tests: list[str] | None = Field(
        default=None, min_length=1, max_length=500, description="Names of the tests to run. Unset: all of them"
    )
    certify: CertifyRequest | None = Field(
        default=None,
        description="Certify the revision's artifact (its image digest, or its package's exact version) when the "
        "run ends: pass when every test passed",
    )


class EvalRunPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    server_id: uuid.UUID
    deployment_id: uuid.UUID | None
    seq: int
    workflow_id: str
    status: str = Field(description="pending | running | passed | failed | error | cancelled")
    candidate: bool = Field(description="The revision was launched beside the serving one for this run")
    subject: str | None = Field(description="The artifact the run certifies (with `certify`)")
    total: int
    passed: int
    score: float | None = Field(description="Mean score of the results, 0..1")
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class EvalResultPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    run_id: uuid.UUID
    test_id: uuid.UUID
    test_name: str
    tool: str
    passed: bool
    score: float
    latency_ms: float | None
    detail: str
    excerpt: str
    created_at: datetime


class EvalScoreboardRow(EvalRunPublic):
    server_name: str


class EvalSummaryRow(BaseModel):
    rank: int
    server_id: uuid.UUID
    server_name: str
    runs: int = Field(description="Finished runs")
    average_score: float = Field(description="Mean of the finished runs' scores")
    latest_score: float | None
    latest_status: str
    latest_run_id: uuid.UUID
    latest_at: datetime


class EvalRunResults(BaseModel):
    run: EvalRunPublic
    results: list[EvalResultPublic]


class ArtifactEvaluationCreate(CertifyRequest):
    tests: list[str] | None = Field(
        default=None, min_length=1, max_length=500, description="Names of the tests to run. Unset: all of them"
    )


class CertificationPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    server_id: uuid.UUID
    subject: str = Field(description="sha256:<image digest>, or <registry>:<package>@<exact version>")
    artifact_id: uuid.UUID | None
    tier: str
    requirement: str
    status: str = Field(description="pending | pass | fail")
    evaluation_run_id: uuid.UUID | None = Field(description="The evidence")
    valid_days: float
    valid_from: datetime | None
    valid_until: datetime | None
    created_at: datetime


class PolicyDecisionPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    deployment_id: uuid.UUID | None
    subject: str | None
    allowed: bool
    backend: str
    notes: list[str]
    created_at: datetime
