"""Request and response bodies. Secrets appear only in the *Created bodies, once."""

from __future__ import annotations

import json
import re
import uuid
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, EmailStr, Field, StrictBool, field_validator

from core import secretstore
from core.evaluation import TOOL_NAME, Expectation
from core.gateway_options import GatewayOptions
from core.governance import Role
from core.governance import Step as GovernanceStep
from core.promotion import STAGE_NAME
from core.promotion import Stage as PromotionStage
from core.settings import IMPLEMENTED_RUNTIMES
from core.sources import EnvMap, ServerSource, validate_env

T = TypeVar("T")
SLUG_PATTERN = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


class ListOf(BaseModel, Generic[T]):
    count: int
    data: list[T]


class Message(BaseModel):
    detail: str


# ---- accounts ----------------------------------------------------------------------------------


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


# ---- servers -----------------------------------------------------------------------------------


def _check_slug(value: str | None) -> str | None:
    if value is not None and not SLUG_PATTERN.match(value):
        raise ValueError(
            "slug must be 1-63 characters of lowercase letters, digits and '-', starting and ending with a "
            "letter or digit"
        )
    return value


def _check_name(value: str | None) -> str | None:
    if value is not None:
        value = value.strip()
        if not value or any(ord(c) < 32 for c in value):
            raise ValueError("name must be non-empty printable text")
    return value


class _Resources(BaseModel):
    """What a server may use, on create and update alike."""

    cpu_limit: float | None = Field(
        default=None, gt=0, le=256, description="Cores the server may use; unset: DEFAULT_CPU_LIMIT"
    )
    memory_limit: int | None = Field(
        default=None,
        ge=16,
        le=1048576,
        description="MiB of memory; past it the server is killed. Unset: DEFAULT_MEMORY_LIMIT",
    )


TIER_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,31}$"
REQUIREMENT_PATTERN = r"^[a-z0-9][a-z0-9_.:-]{0,99}$"


class CertificationRequirement(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tier: str = Field(pattern=TIER_PATTERN, description="e.g. gold; lower case letters, digits, _ . -")
    requirement: str = Field(default="default", pattern=REQUIREMENT_PATTERN, description="e.g. smoke, default")


class ServerCreate(_Resources):
    model_config = ConfigDict(extra="forbid")

    gateway: GatewayOptions = Field(default_factory=GatewayOptions, description="Gateway timeouts, limits, tracing")

    name: str = Field(min_length=1, max_length=100)
    slug: str | None = Field(
        default=None,
        description="URL name under /mcp/; derived from the name if omitted",
        json_schema_extra={"pattern": SLUG_PATTERN.pattern},
    )
    source: ServerSource
    env: EnvMap = Field(default_factory=dict, description="Environment variables for the server")
    runtime: Literal["process", "docker", "kubernetes", "virtual-machine"] | None = Field(
        default=None,
        # The schema lists the runtimes this release has; naming another is a 422 that says so.
        json_schema_extra={"anyOf": [{"type": "string", "enum": list(IMPLEMENTED_RUNTIMES)}, {"type": "null"}]},
    )
    use_gpu: StrictBool = Field(default=False, description="Give the server the host's GPUs (docker runtime)")
    isolation: Literal["engine", "gvisor"] | None = Field(
        default=None,
        description="Docker runtime: run the server under gVisor (a user-space kernel between it and the host's) or "
        "on the engine's default runtime. Unset: the installation's CONTAINER_ISOLATION. Only administrators may "
        "ask for less than that (403); gvisor on another runtime is a 422",
    )
    required_certifications: list[CertificationRequirement] = Field(
        default_factory=list,
        max_length=20,
        description="Certifications a revision's artifact must hold before it is launched (see the policy engine)",
    )

    _slug = field_validator("slug")(classmethod(lambda cls, v: _check_slug(v)))
    _name = field_validator("name")(classmethod(lambda cls, v: _check_name(v)))
    _env = field_validator("env")(classmethod(lambda cls, v: validate_env(v)))


class ServerUpdate(_Resources):
    model_config = ConfigDict(extra="forbid")

    gateway: GatewayOptions | None = Field(default=None, description="Replaces the server's gateway options")

    name: str | None = Field(default=None, min_length=1, max_length=100)
    source: ServerSource | None = None
    env: EnvMap | None = None
    runtime: Literal["process", "docker", "kubernetes", "virtual-machine"] | None = Field(
        default=None,
        # The schema lists the runtimes this release has; naming another is a 422 that says so.
        json_schema_extra={"anyOf": [{"type": "string", "enum": list(IMPLEMENTED_RUNTIMES)}, {"type": "null"}]},
    )
    use_gpu: StrictBool | None = None
    isolation: Literal["engine", "gvisor"] | None = Field(
        default=None,
        description="Replaces the server's isolation on the docker runtime (null: the installation's "
        "CONTAINER_ISOLATION); takes effect on the next deploy",
    )
    required_certifications: list[CertificationRequirement] | None = Field(
        default=None, max_length=20, description="Replaces what a revision must hold before it is launched"
    )

    _name = field_validator("name")(classmethod(lambda cls, v: _check_name(v)))
    _env = field_validator("env")(classmethod(lambda cls, v: validate_env(v) if v is not None else v))


class ServerPublic(BaseModel):
    id: uuid.UUID
    owner_id: uuid.UUID
    name: str
    slug: str
    source: dict[str, Any]
    runtime: str | None
    env_keys: list[str] = Field(description="Names of configured variables; values are never returned")
    status: str
    api_key_prefix: str
    active_deployment_id: uuid.UUID | None
    cpu_limit: float | None = None
    memory_limit: int | None = None
    use_gpu: bool = False
    isolation: str | None = Field(
        default=None, description="What the server asked for (engine, gvisor); null: the installation's"
    )
    gateway: GatewayOptions = Field(default_factory=GatewayOptions)
    required_certifications: list[CertificationRequirement] = Field(default_factory=list)
    gateway_url: str
    created_at: datetime
    updated_at: datetime


class ServerCreated(ServerPublic):
    api_key: str = Field(description="Shown only once: the key MCP clients send to the gateway")
    webhook_secret: str = Field(description="Shown only once: HMAC key for signed redeploy webhooks")


class ApiKeyRotated(BaseModel):
    api_key: str
    api_key_prefix: str


class WebhookSecretRotated(BaseModel):
    webhook_secret: str = Field(description="Shown only once: the new HMAC key for signed redeploy webhooks")


class WebhookRedeploy(BaseModel):
    """Optional body of the generic webhook: what to deploy. Empty: the server's source as configured."""

    model_config = ConfigDict(extra="forbid")

    ref: str | None = Field(
        default=None,
        max_length=255,
        description="Git servers: a branch or tag (or refs/heads/...) to deploy the head of",
    )
    revision: str | None = Field(
        default=None, pattern=r"^[0-9a-f]{40}$", description="Git servers: the exact commit to deploy (40 hex digits)"
    )


class RollbackToDeployment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    deployment_id: uuid.UUID = Field(description="The deployment to return to")


class RollbackToRevision(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seq: int = Field(ge=1, description="The revision number (as in `deployments`) to return to")


class RollbackToPrevious(BaseModel):
    """No target named: the newest earlier revision that served."""

    model_config = ConfigDict(extra="forbid")


RollbackRequest = RollbackToDeployment | RollbackToRevision | RollbackToPrevious


class RollbackAccepted(BaseModel):
    deployment_id: uuid.UUID
    workflow_id: str
    status: str
    seq: int
    rolled_back_to: int = Field(description="Revision number whose source and config this deployment runs again")


class WebhookOutcome(BaseModel):
    outcome: str = Field(description="accepted (a deployment runs), ignored (nothing to do, and why) or rejected")
    reason: str
    delivery_id: str | None = None
    deployment_id: uuid.UUID | None = None
    workflow_id: str | None = None
    revision: str | None = None


class WebhookDeliveryPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    provider: str
    delivery_id: str | None
    event: str | None
    outcome: str
    reason: str
    status_code: int
    ref: str | None
    revision: str | None
    deployment_id: uuid.UUID | None
    created_at: datetime


class Capabilities(BaseModel):
    server_id: uuid.UUID
    deployment_id: uuid.UUID | None
    protocol_version: str | None = None
    server_name: str | None = None
    tools: list[dict[str, Any]] = Field(default_factory=list)
    prompts: list[dict[str, Any]] = Field(default_factory=list)
    resources: list[dict[str, Any]] = Field(default_factory=list)


class ClientConfig(BaseModel):
    url: str
    transport: Literal["streamable-http"] = "streamable-http"
    headers: dict[str, str]
    mcpServers: dict[str, Any]  # noqa: N815 - the key clients expect in their config files


class WorkflowStarted(BaseModel):
    workflow_id: str
    status: str


class LogLine(BaseModel):
    source: Literal["platform", "runtime"]
    level: str
    message: str
    created_at: datetime | None = None
    deployment_id: uuid.UUID | None = None


# ---- deployments -------------------------------------------------------------------------------


class DeploymentAccepted(BaseModel):
    deployment_id: uuid.UUID
    workflow_id: str
    status: str
    seq: int


class StepPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    step: str
    status: str
    message: str | None
    attempts: int
    started_at: datetime
    finished_at: datetime | None


class LiveProgress(BaseModel):
    step: str | None
    status: str


class DeploymentPublic(BaseModel):
    id: uuid.UUID
    server_id: uuid.UUID
    seq: int
    workflow_id: str
    status: str
    step: str | None
    runtime: str | None
    error: str | None
    created_at: datetime
    finished_at: datetime | None
    revision: str | None = Field(default=None, description="Git sources: the commit this deployment built")
    image_ref: str | None = Field(default=None, description="Git sources: the image it runs (registry digest)")
    image_digest: str | None = None
    artifact_id: uuid.UUID | None = None


class DeploymentDetail(DeploymentPublic):
    steps: list[StepPublic]
    settled: bool = Field(
        default=False,
        description="The deployment has ended and every step it began is finished. A deployment is `running` "
        "as soon as its revision serves; retiring the earlier revision finishes a moment later.",
    )
    live: LiveProgress | None = Field(default=None, description="The workflow's own view, when it answers")


class ArtifactPlatformPublic(BaseModel):
    platform: str
    image_id: str | None
    local_image: str | None
    manifest_digest: str | None
    build_seconds: float | None
    push_seconds: float | None
    pruned_at: datetime | None


class ArtifactPublic(BaseModel):
    id: uuid.UUID
    server_id: uuid.UUID
    deployment_id: uuid.UUID | None
    status: str = Field(description="building | built | pushed | failed")
    source_repo: str
    source_branch: str | None
    source_revision: str
    subdirectory: str | None
    recipe: dict[str, Any]
    local_image: str | None
    registry_image: str | None
    manifest_tag: str | None
    manifest_digest: str | None
    credential_outcomes: dict[str, Any]
    timings: dict[str, Any]
    error: str | None
    created_at: datetime
    finished_at: datetime | None
    platforms: list[ArtifactPlatformPublic]


class MetricEvent(BaseModel):
    id: int
    event: str
    details: dict[str, Any]
    created_at: datetime


# ---- errors ------------------------------------------------------------------------------------


class ValidationIssue(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorBody(BaseModel):
    """Every error response: what to fix, and a stable machine-readable code."""

    detail: str | list[ValidationIssue]
    code: str = Field(examples=["not_found", "invalid_input", "payload_too_large"])


# ---- files -------------------------------------------------------------------------------------


class FileInfo(BaseModel):
    path: str = Field(description="Relative to the server's /data, '/'-separated")
    size: int = Field(description="Bytes")
    modified_at: datetime


class FileList(BaseModel):
    count: int
    total_bytes: int = Field(description="Bytes all files in /data take, uploads in progress included")
    quota_bytes: int = Field(description="FILES_QUOTA_BYTES: what uploads may fill /data up to")
    max_file_bytes: int = Field(description="FILES_MAX_BYTES: the largest file one upload may store")
    data: list[FileInfo]


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses a route returns, all with the error body."""
    return {status: {"model": ErrorBody} for status in statuses}


# ---- gateway keys, invocations, usage ----------------------------------------------------------


class GatewayKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        min_length=1,
        max_length=100,
        json_schema_extra={"pattern": r"^(?!\s*default\s*$)\s*[A-Za-z0-9][A-Za-z0-9 ._@-]*$"},
        description="Unique among the server's live keys; letters, digits, space and . _ @ -; not 'default'",
    )
    expires_in_days: float | None = Field(default=None, gt=0, le=3650, description="Unset: never expires")
    tools: list[str] | None = Field(
        default=None,
        max_length=1000,
        json_schema_extra={
            "items": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": r"^[^\x00-\x1f]+$"}
        },
        description="Tool allowlist: the key sees only these in tools/list and may call only these. Unset: all.",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        value = value.strip()
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9 ._@-]{0,99}", value):
            raise ValueError("name: letters, digits, space and . _ @ - (starting with a letter or digit)")
        if value == "default":
            raise ValueError("'default' names the server's own key; choose another name")
        return value

    @field_validator("tools")
    @classmethod
    def _tools(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        for tool in value:
            if not tool or len(tool) > 200 or any(ord(c) < 32 for c in tool):
                raise ValueError("tool names are 1-200 printable characters")
        return sorted(set(value))


class GatewayKeyPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    prefix: str
    tools: list[str] | None
    expires_at: datetime | None
    created_at: datetime
    revoked_at: datetime | None


class GatewayKeyCreated(GatewayKeyPublic):
    api_key: str = Field(description="Shown only once: send it as Authorization: Bearer or X-API-Key")


class InvocationPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    created_at: datetime
    key_name: str | None
    http_method: str
    method: str | None = Field(description="JSON-RPC method")
    tool: str | None
    status: int = Field(description="HTTP status the client got")
    outcome: str = Field(
        description="ok, error, timeout, client_gone, upstream_error, rate_limited, server_busy, key_busy, "
        "too_large, response_too_large, forbidden_tool, malformed (a body the gateway cannot read as the server "
        "would), header_mismatch (Mcp-Method/Mcp-Name contradict the body), unauthorized, not_running, session_gone"
    )
    duration_ms: float
    request_bytes: int
    response_bytes: int
    arguments: str | None = Field(description="Only with gateway.trace_payloads: redacted, truncated JSON")
    result: str | None = Field(description="Only with gateway.trace_payloads: redacted, truncated JSON")


class UsagePublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    minute: datetime
    key_name: str
    method: str
    tool: str
    calls: int
    errors: int
    request_bytes: int
    response_bytes: int
    duration_ms: float = Field(description="Sum over the calls")


# ---- evaluations -------------------------------------------------------------------------------


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


# ---- virtual machines and trust ----------------------------------------------------------------


class VmGuestPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    deployment_id: uuid.UUID
    domain: str
    uri: str
    address: str | None
    memory_mib: int
    vcpus: int
    state: str = Field(description="The last lifecycle event the hypervisor reported (started, stopped, ...).")
    posture: str = Field(description="trusted | untrusted | stale | pending: the guest's latest attestation.")
    posture_reason: str | None
    measurement: str | None
    attested_at: datetime | None
    created_at: datetime


class VmEventPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    deployment_id: uuid.UUID | None
    domain: str
    event: str
    detail: str | None
    at: datetime


class TrustChangePublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    server_id: uuid.UUID
    deployment_id: uuid.UUID | None
    domain: str
    previous: str | None
    posture: str
    reason: str
    note: str
    measurement: str | None
    key_id: str | None
    at: datetime


class ServerVm(BaseModel):
    guests: list[VmGuestPublic] = Field(description="The server's guests, newest first.")
    events: list[VmEventPublic] = Field(description="Lifecycle events of its guests, newest first.")
    trust: list[TrustChangePublic] = Field(description="Changes of its guests' attestation posture, newest first.")


# ---- remediation -------------------------------------------------------------------------------


class PlaybookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._:-]*$")
    steps: list[dict[str, Any]] = Field(
        min_length=1,
        max_length=20,
        description="In order; each has `name` and `kind`: restart | redeploy_previous | "
        "rotate_registry_credentials | resources (cpu, memory_mib) | http (url, method, expect_status, "
        "timeout_seconds) | notify (message) | wait (seconds)",
    )
    approval: dict[str, Any] | None = Field(
        default=None, description="An approval step (governance rules: roles/users, required, four-eyes, SLA)"
    )
    sla_seconds: float | None = Field(default=None, gt=0, le=90 * 24 * 3600)


class PlaybookPublic(BaseModel):
    id: uuid.UUID
    name: str
    steps: list[dict[str, Any]]
    approval: dict[str, Any] | None
    sla_seconds: float | None
    servers: list[uuid.UUID] = Field(description="Servers the playbook is bound to")
    created_at: datetime


class RemediationRunCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    server_id: uuid.UUID


class RemediationVoteBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    comment: str = Field(default="", max_length=2000)


class RemediationRunPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    playbook_id: uuid.UUID
    server_id: uuid.UUID
    trigger: str = Field(description="manual | degraded | untrusted")
    status: str = Field(description="awaiting_approval | running | succeeded | failed | rejected | cancelled")
    version: int = Field(description="Grows with every change; send it back as If-Match to change the run")
    workflow_id: str
    current_step: str | None
    results: list[dict[str, Any]] = Field(description="Each step's status, exit code, typed reason and detail")
    exit_code: int | None = Field(description="0 succeeded, 10 a step failed, 20 rejected, 30 cancelled")
    reason: str | None
    cancel_requested: bool
    sla_breached: bool
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


class RemediationArtifactPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    step: str | None
    kind: str
    content: str
    created_at: datetime


# ---- governance --------------------------------------------------------------------------------


class GovernanceDefinitionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._:@-]*$")
    steps: list[GovernanceStep] = Field(min_length=1, max_length=20)


class GovernanceDefinitionPublic(BaseModel):
    id: uuid.UUID
    name: str
    steps: list[dict[str, Any]]
    created_at: datetime


class GovernanceRunCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    server_id: uuid.UUID
    tier: str = Field(pattern=TIER_PATTERN, description="The tier the artifact is governed for")
    deployment_id: uuid.UUID | None = Field(
        default=None, description="The revision whose artifact is governed. Unset: the serving one"
    )


class GovernanceVote(BaseModel):
    model_config = ConfigDict(extra="forbid")

    comment: str = Field(default="", max_length=2000)


class GovernanceAuditPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    step: str | None
    actor: str | None
    action: str = Field(
        description="step_started | approve | reject | refused | escalated | expired | check | run_ended"
    )
    accepted: bool = Field(description="False for an attempt that was refused (it never reached the workflow)")
    comment: str
    created_at: datetime


class GovernanceRunPublic(BaseModel):
    id: uuid.UUID
    definition_id: uuid.UUID
    server_id: uuid.UUID
    subject: str
    tier: str
    requester_id: uuid.UUID | None
    workflow_id: str
    status: str = Field(description="running | approved | rejected | cancelled")
    current_step: str | None
    reason: str | None
    created_at: datetime
    finished_at: datetime | None
    live: dict[str, Any] | None = Field(default=None, description="The workflow's own state, while it answers")
    audit: list[GovernanceAuditPublic] = Field(default_factory=list)


class RolesUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    roles: list[Role] = Field(max_length=50, description="e.g. release-manager")


# ---- promotions --------------------------------------------------------------------------------


class TrackCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    stages: list[PromotionStage] = Field(min_length=1, max_length=10, description="In order, e.g. dev, staging, prod")


class TrackPublic(BaseModel):
    id: uuid.UUID
    name: str
    stages: list[dict[str, Any]]
    held: list[str] = Field(description="Stages whose auto-promotion is held")
    current: dict[str, str | None] = Field(description="The digest each stage runs now (None: none yet)")
    created_at: datetime


class PromotionSchedule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    track_id: uuid.UUID
    stage: str = Field(pattern=STAGE_NAME)
    deployment_id: uuid.UUID | None = Field(
        default=None, description="The deployment whose artifact is promoted (one of your servers')"
    )
    subject: str | None = Field(
        default=None,
        max_length=300,
        description="Or the digest (package@version) itself, as it was promoted into an earlier stage",
    )


class PromotionPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    track_id: uuid.UUID
    stage: str
    stage_index: int
    subject: str
    kind: str = Field(description="manual | auto | rollback")
    status: str = Field(
        description="scheduled | in_progress | awaiting_approval | approved | active | superseded | rolled_back | "
        "rejected | failed | aborted"
    )
    step: str | None = Field(description="queued | order | soak | verification | governance | window | deploy | done")
    origin_deployment_id: uuid.UUID | None
    requester_id: uuid.UUID | None
    workflow_id: str
    evaluation_run_id: uuid.UUID | None
    governance_run_id: uuid.UUID | None
    deployments: dict[str, Any] = Field(description="Server id -> the deployment this promotion made there")
    notes: list[str]
    reason: str | None
    created_at: datetime
    started_at: datetime | None
    activated_at: datetime | None
    finished_at: datetime | None


class DigestRejection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    subject: str = Field(min_length=1, max_length=300, description="The digest (or package@version) to reject")
    reason: str = Field(default="", max_length=2000)


class DigestRejectionPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    subject: str
    reason: str
    rejected_by: str | None
    created_at: datetime


# ---- server secrets ----------------------------------------------------------------------------

SECRET_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"


class SecretValue(BaseModel):
    model_config = ConfigDict(extra="forbid")

    value: str = Field(
        max_length=32768,
        json_schema_extra={"pattern": r"^[^\x00]*$"},
        description="Write-only: given to the server as an environment variable, never returned",
    )

    @field_validator("value")
    @classmethod
    def _value(cls, value: str) -> str:
        return secretstore.check_value(value)


class SecretCreate(SecretValue):
    name: str = Field(
        min_length=1,
        max_length=128,
        json_schema_extra={"pattern": SECRET_NAME_PATTERN},
        description="The environment variable name (letters, digits, _; not PORT, PATH, HOME or MCPHOST_*)",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return secretstore.check_name(value)


class SecretPublic(BaseModel):
    """A secret's metadata. Its value is never returned."""

    model_config = ConfigDict(from_attributes=True)

    name: str
    backend: Literal["sealed", "vault"] = Field(description="sealed: in Postgres; vault: in Vault KV v2")
    version: int = Field(description="1 when created, +1 on every rotation")
    vault_path: str | None = Field(description="Where in Vault KV v2 (under VAULT_MOUNT) the value is")
    vault_version: int | None = Field(description="The KV version the server gets at its next launch")
    created_at: datetime
    updated_at: datetime


class SecretEventPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    action: Literal["created", "rotated", "deleted", "injected"]
    version: int | None
    actor: str = Field(description="Who: a user's email, or 'worker' for a launch")
    deployment_id: uuid.UUID | None = Field(description="The deployment whose launch got the value (injected)")
    at: datetime
