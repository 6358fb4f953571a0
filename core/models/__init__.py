"""The platform's tables. Alembic migrations in `migrations/` are the only way these change in a database.

One module per aggregate, all imported here so that every table is on `Base.metadata` and every
model can be imported from `core.models`:

- base: the declarative `Base` and the shared column helpers
- accounts: users, API tokens, revoked sessions, setup tokens
- servers: servers, deployments and their steps, server secrets, webhook deliveries
- builds: build artifacts and their platform images
- telemetry: server log lines and telemetry events
- gateway: gateway keys, invocations, usage, sessions
- evaluations: evaluation tests, runs, results, certifications
- governance: policy decisions, governance definitions/runs/audit, promotions
- vm: virtual-machine guests, their events and trust history
- remediation: remediation playbooks, bindings, runs, artifacts
"""

from __future__ import annotations

from core.models.accounts import ApiToken, RevokedSession, SetupToken, User
from core.models.base import Base
from core.models.builds import BuildArtifactPlatform, BuildArtifactRun
from core.models.evaluations import Certification, EvalResult, EvalRun, EvalTest
from core.models.gateway import GatewayInvocation, GatewaySession, GatewayUsage, ServerApiKey
from core.models.governance import (
    GovernanceAudit,
    GovernanceDefinition,
    GovernanceRun,
    PolicyDecision,
    Promotion,
    PromotionRejection,
    PromotionTrack,
)
from core.models.remediation import RemediationArtifact, RemediationBinding, RemediationPlaybook, RemediationRun
from core.models.servers import (
    UID_SLOTS,
    Deployment,
    DeploymentStep,
    Server,
    ServerSecret,
    ServerSecretEvent,
    WebhookDelivery,
)
from core.models.telemetry import ServerLog, UsageMetric
from core.models.vm import VmEvent, VmInstance, VmTrustChange

__all__ = [
    "ApiToken",
    "Base",
    "BuildArtifactPlatform",
    "BuildArtifactRun",
    "Certification",
    "Deployment",
    "DeploymentStep",
    "EvalResult",
    "EvalRun",
    "EvalTest",
    "GatewayInvocation",
    "GatewaySession",
    "GatewayUsage",
    "GovernanceAudit",
    "GovernanceDefinition",
    "GovernanceRun",
    "PolicyDecision",
    "Promotion",
    "PromotionRejection",
    "PromotionTrack",
    "RemediationArtifact",
    "RemediationBinding",
    "RemediationPlaybook",
    "RemediationRun",
    "RevokedSession",
    "Server",
    "ServerApiKey",
    "ServerLog",
    "ServerSecret",
    "ServerSecretEvent",
    "SetupToken",
    "UID_SLOTS",
    "UsageMetric",
    "User",
    "VmEvent",
    "VmInstance",
    "VmTrustChange",
    "WebhookDelivery",
]
