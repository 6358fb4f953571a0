"""Virtual machine guests, their lifecycle events and trust posture."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


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
