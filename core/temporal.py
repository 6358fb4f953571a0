"""The Temporal client and the custom search attributes operators filter workflows by in the Web UI."""

from __future__ import annotations

import logging
from typing import Literal

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
from temporalio.client import Client
from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes

from core.settings import Settings

log = logging.getLogger(__name__)

SERVER_ID = SearchAttributeKey.for_keyword("McpServerId")
DEPLOYMENT_ID = SearchAttributeKey.for_keyword("McpDeploymentId")
# What a workflow does: deploy, build, push, stop, delete, supervisor, evaluation, governance, promotion.
KIND = SearchAttributeKey.for_keyword("McpKind")
# The promotion stage a workflow works for, and the digest (or package@version) it moves.
STAGE = SearchAttributeKey.for_keyword("McpStage")
DIGEST = SearchAttributeKey.for_keyword("McpDigest")
SEARCH_ATTRIBUTES = (SERVER_ID, DEPLOYMENT_ID, KIND, STAGE, DIGEST)

Kind = Literal[
    "deploy",
    "build",
    "push",
    "stop",
    "delete",
    "supervisor",
    "evaluation",
    "governance",
    "promotion",
    "remediation",
]


def search_attributes(
    kind: Kind,
    *,
    server_id: str | None = None,
    deployment_id: str | None = None,
    stage: str | None = None,
    digest: str | None = None,
) -> TypedSearchAttributes:
    """What a workflow is filed under: its kind, and whichever of server, deployment, stage and digest it
    works for (an attribute given as None is left out)."""
    values = ((SERVER_ID, server_id), (DEPLOYMENT_ID, deployment_id), (KIND, kind), (STAGE, stage), (DIGEST, digest))
    return TypedSearchAttributes([SearchAttributePair(key, value) for key, value in values if value is not None])


async def connect(settings: Settings) -> Client:
    return await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace)


async def ensure_search_attributes(client: Client, namespace: str) -> None:
    """Register the platform's search attributes if the namespace lacks them (idempotent)."""
    existing = await client.operator_service.list_search_attributes(ListSearchAttributesRequest(namespace=namespace))
    missing = {
        key.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD
        for key in SEARCH_ATTRIBUTES
        if key.name not in existing.custom_attributes
    }
    if missing:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(search_attributes=missing, namespace=namespace)
        )
        log.info("registered search attributes %s", ", ".join(missing))


def dev_server_search_attribute_args() -> list[str]:
    args: list[str] = []
    for key in SEARCH_ATTRIBUTES:
        args += ["--search-attribute", f"{key.name}=Keyword"]
    return args
