"""Servers: create, update, what they answer, rotated keys, capabilities and client configuration."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

from api.schemas.common import CertificationRequirement
from core.gateway_options import GatewayOptions
from core.settings import IMPLEMENTED_RUNTIMES
from core.sources import EnvMap, ServerSource, validate_env

SLUG_PATTERN = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


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
