"""The virtual-machine runtime's domain XML: the default libvirt domain template and how it is filled
(`render`, every value escaped), the metadata element that ties a domain to its server and deployment,
the `clean-traffic` filter added to the guest's interfaces, and the names of the platform's domains.
Pure functions: no libvirt calls here.
"""

from __future__ import annotations

import io
import string
import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape, quoteattr

from core.failures import PermanentFailure
from runtimes.base import LaunchSpec

XMLNS = "https://mcphost.io/xmlns/vm/1"
PREFIX = "mcp-"

DEFAULT_TEMPLATE = """<domain type='kvm'>
  <name>$name</name>
  <uuid>$uuid</uuid>
  <metadata>$metadata</metadata>
  <memory unit='MiB'>$memory_mib</memory>
  <vcpu>$vcpus</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type><boot dev='hd'/></os>
  <features><acpi/></features>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='$base_image'/>
      <target dev='vda' bus='virtio'/>
      <transient/>
    </disk>
    <filesystem type='mount' accessmode='squash'>
      <source dir='$workload_dir'/>
      <target dir='mcphost-workload'/>
      <readonly/>
    </filesystem>
    <interface type='network'>
      <source network='$network'/>
      <mac address='$mac'/>
      <model type='virtio'/>
    </interface>
    <serial type='file'><source path='$console_log'/></serial>
    <memballoon model='virtio'/>
  </devices>
</domain>
"""


def domain_name(deployment_id: str) -> str:
    return f"{PREFIX}{deployment_id}"


def render(template: str, values: dict[str, str]) -> str:
    """The template with `$placeholders` filled: every value XML-escaped except the metadata element."""
    safe = {k: (v if k == "metadata" else escape(v, {"'": "&apos;", '"': "&quot;"})) for k, v in values.items()}
    try:
        return string.Template(template).substitute(safe)
    except (KeyError, ValueError) as exc:
        raise PermanentFailure(f"VM_DOMAIN_TEMPLATE has an unknown or broken placeholder: {exc}") from None


# libvirt's filter (nwfilter) that holds a guest to its own MAC and IP addresses: no spoofed ARP, IP or MAC
# traffic, so one guest cannot take another's address (and the gateway's traffic meant for it).
TRAFFIC_FILTER = "clean-traffic"
_FILTERED_INTERFACES = ("network", "bridge", "ethernet")


def with_traffic_filter(xml: str, network: str, address: str | None) -> str:
    """The domain XML with `clean-traffic` on every interface that names no filter of its own, pinned to the
    guest's reserved address on `network` (so the filter need not learn it from the guest's first packet)."""
    try:
        # Written back with the template's own namespace prefixes (the metadata's among them).
        for _event, (prefix, uri) in ET.iterparse(io.StringIO(xml), events=("start-ns",)):
            try:
                ET.register_namespace(prefix, uri)
            except ValueError:  # a prefix ElementTree keeps for itself; it names its own
                pass
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise PermanentFailure(f"VM_DOMAIN_TEMPLATE does not give well-formed XML: {exc}") from None
    changed = False
    for interface in root.iter("interface"):
        if interface.get("type") not in _FILTERED_INTERFACES or interface.find("filterref") is not None:
            continue
        ref = ET.SubElement(interface, "filterref", {"filter": TRAFFIC_FILTER})
        source = interface.find("source")
        if address and interface.get("type") == "network" and source is not None and source.get("network") == network:
            ET.SubElement(ref, "parameter", {"name": "IP", "value": address})
        changed = True
    return ET.tostring(root, encoding="unicode") if changed else xml


def metadata_element(spec: LaunchSpec, port: int, path: str) -> str:
    return (
        f"<mcphost:instance xmlns:mcphost={quoteattr(XMLNS)} server={quoteattr(spec.server_id)} "
        f"deployment={quoteattr(spec.deployment_id)} slug={quoteattr(spec.slug)} port='{port}' "
        f"path={quoteattr(path)}/>"
    )
