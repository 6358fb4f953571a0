"""The kubernetes runtime (cluster, namespace, service account, storage, readiness) and the
virtual-machine runtime (libvirt, guest size and image, attestation of guests)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings


class KubernetesVmSettings(BaseSettings):
    """The kubernetes and virtual-machine runtimes."""

    # The kubernetes runtime.
    k8s_kubeconfig: Path | None = Field(
        default=None, description="Kubeconfig of the cluster the kubernetes runtime uses (unset: in-cluster config)."
    )
    k8s_context: str | None = None
    k8s_namespace: str = Field(default="mcphost", pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    k8s_service_account: str = Field(default="default", pattern=r"^[a-z0-9]([-.a-z0-9]{0,251}[a-z0-9])?$")
    k8s_registry_secret_name: str | None = Field(default=None, pattern=r"^[a-z0-9]([-.a-z0-9]{0,251}[a-z0-9])?$")
    k8s_access: Literal["service", "pod"] = "service"
    k8s_data_size: str = Field(default="1Gi", pattern=r"^[0-9]+(Mi|Gi|Ti)$")
    k8s_storage_class: str | None = None
    k8s_ready_timeout_seconds: float = Field(default=300.0, gt=0)

    # The virtual-machine runtime (libvirt) and the attestation of its guests.
    vm_libvirt_uri: str | None = Field(
        default=None,
        description="libvirt connection of the virtual-machine runtime (qemu:///system; test:///default in tests).",
    )
    vm_network: str = Field(default="default", min_length=1, description="libvirt network guests are attached to.")
    vm_memory_mib: int = Field(default=1024, ge=64, description="Memory of each guest.")
    vm_vcpus: int = Field(default=1, ge=1, le=64, description="Virtual CPUs of each guest.")
    vm_domain_template: Path | None = Field(
        default=None, description="Domain XML template ($name, $uuid, $memory_mib, ...); default: a KVM guest."
    )
    vm_base_image: Path = Field(
        default=Path("/var/lib/mcphost/guest.qcow2"),
        description="The guest OS image every VM boots (read-only, changes discarded on stop).",
    )
    vm_boot_timeout_seconds: float = Field(default=120.0, gt=0, description="How long a guest may take to attest.")
    vm_attestation_port: int = Field(default=9443, ge=1, le=65535, description="Guest agent port serving quotes.")
    vm_attestation_trust_roots: str = Field(
        default="", description="Keys guests' quotes may be signed with: key_id=<base64 Ed25519 public key>,..."
    )
    vm_attestation_measurements: str = Field(
        default="", description="Hex digests of the guest images allowed to serve, comma-separated."
    )
    vm_attestation_max_age_seconds: float = Field(default=300.0, gt=0, description="Oldest quote that is fresh.")

    @field_validator("vm_attestation_trust_roots")
    @classmethod
    def _trust_roots(cls, value: str) -> str:
        from core.attestation import parse_trust_roots

        parse_trust_roots(value)  # ValueError names the entry to fix
        return value

    @field_validator("vm_attestation_measurements")
    @classmethod
    def _measurements(cls, value: str) -> str:
        from core.attestation import parse_measurements

        parse_measurements(value)
        return value

    @property
    def libvirt_uri(self) -> str:
        return self.vm_libvirt_uri or "qemu:///system"
