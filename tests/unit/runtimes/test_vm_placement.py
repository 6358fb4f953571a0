"""Pure parts of the virtual-machine runtime: where a revision goes after its guest's attestation, the
domain template (values escaped, unknown placeholders refused), the DHCP range and reservations read from
a network, stable MACs, and the attestation settings refusing what they cannot use."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from pydantic import ValidationError

from core.failures import PermanentFailure
from core.policy import vm_placement
from core.settings import Settings
from runtimes.vm_domain import DEFAULT_TEMPLATE, render
from runtimes.vm_network import dhcp_range, mac_for


def test_only_a_trusted_guest_serves() -> None:
    trusted = vm_placement("trusted", "vm:attestation:trusted", ["process", "docker"])
    assert trusted.allowed and trusted.backend == "virtual-machine" and trusted.notes == ["vm:attestation:trusted"]
    for posture, note in [
        ("untrusted", "vm:attestation:untrusted:signature"),
        ("stale", "vm:attestation:stale:age"),
        ("pending", "vm:attestation:pending:no-quote"),
    ]:
        placed = vm_placement(posture, note, ["process", "docker", "kubernetes"])
        assert placed.allowed and placed.backend == "docker"
        assert placed.notes == [note, "runtime:fallback:docker"]


def test_kubernetes_is_the_fallback_without_docker_and_nothing_is_blocked() -> None:
    placed = vm_placement("untrusted", "vm:attestation:untrusted:nonce", ["process", "kubernetes"])
    assert placed.backend == "kubernetes" and placed.notes[-1] == "runtime:fallback:kubernetes"
    blocked = vm_placement("stale", "vm:attestation:stale:age", ["process"])
    assert not blocked.allowed and blocked.notes == ["vm:attestation:stale:age", "runtime:no-fallback"]


def values(**changes: str) -> dict[str, str]:
    return {
        "name": "mcp-1",
        "uuid": "7d4b7a3e-52f2-4b67-9d0a-6a4c1f3d2e10",
        "memory_mib": "512",
        "vcpus": "2",
        "network": "default",
        "mac": "52:54:00:aa:bb:cc",
        "workload_dir": "/state/vm/mcp-1",
        "base_image": "/images/guest.qcow2",
        "console_log": "/state/vm/mcp-1/console.log",
        "metadata": "<m:instance xmlns:m='urn:x' server='s'/>",
    } | changes


def test_the_default_template_renders_a_domain_with_the_values_escaped() -> None:
    xml = render(DEFAULT_TEMPLATE, values(network="a'b<c>&d"))
    domain = ET.fromstring(xml)  # still well-formed: the hostile value could not break out of its attribute
    assert domain.findtext("name") == "mcp-1" and domain.findtext("vcpu") == "2"
    source, instance = domain.find("devices/interface/source"), domain.find("metadata/{urn:x}instance")
    assert source is not None and source.get("network") == "a'b<c>&d"
    assert domain.find("devices/filesystem/readonly") is not None
    assert instance is not None and instance.get("server") == "s"


def test_a_template_with_an_unknown_placeholder_is_refused() -> None:
    with pytest.raises(PermanentFailure, match="VM_DOMAIN_TEMPLATE"):
        render("<domain><name>$name</name><x>$nope</x></domain>", values())


NETWORK = """<network><name>n</name>
<ip address='10.9.0.1' netmask='255.255.255.0'><dhcp><range start='10.9.0.2' end='10.9.0.4'/>
<host mac='52:54:00:00:00:01' name='mcp-a' ip='10.9.0.2'/></dhcp></ip></network>"""


def test_the_dhcp_range_and_reservations_of_a_network() -> None:
    offered, hosts, own = dhcp_range(NETWORK)
    assert [str(a) for a in offered] == ["10.9.0.2", "10.9.0.3", "10.9.0.4"]
    assert hosts == {"mcp-a": ("52:54:00:00:00:01", "10.9.0.2")} and own == "10.9.0.1"
    with pytest.raises(PermanentFailure, match="DHCP range"):
        dhcp_range("<network><name>n</name><ip address='10.9.0.1' netmask='255.255.255.0'/></network>")


def test_macs_are_stable_per_revision_and_attempt() -> None:
    assert mac_for("d-1") == mac_for("d-1") and mac_for("d-1") != mac_for("d-1", 1) != mac_for("d-2")
    assert mac_for("d-1").startswith("52:54:00:")


def test_attestation_settings_refuse_what_they_cannot_use() -> None:
    base = {"jwt_secret": "j" * 40, "secrets_key": "k" * 40}
    with pytest.raises(ValidationError, match="trust root"):
        Settings.model_validate(base | {"vm_attestation_trust_roots": "root-1=not-a-key"})
    with pytest.raises(ValidationError, match="measurement"):
        Settings.model_validate(base | {"vm_attestation_measurements": "abc"})
    assert Settings.model_validate(base | {"vm_libvirt_uri": "test:///default"}).vm_enabled
    assert not Settings.model_validate(base | {"container_runtime": "docker"}).vm_enabled
