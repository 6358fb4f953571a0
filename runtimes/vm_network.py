"""The virtual-machine runtime's guest addresses: each guest gets a DHCP reservation (a stable MAC and a
free address of the network's range) before it boots, so its address is known from the start; the
reservation goes with the guest. The functions here work on a libvirt network object the executor looked up.
"""

from __future__ import annotations

import hashlib
import ipaddress
import xml.etree.ElementTree as ET
from typing import Any

from core.failures import PermanentFailure, RuntimeFailure


def mac_for(deployment_id: str, attempt: int = 0) -> str:
    """A stable locally administered MAC (QEMU's 52:54:00 prefix) for the revision."""
    digest = hashlib.sha256(f"{deployment_id}:{attempt}".encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


def dhcp_range(network_xml: str) -> tuple[list[ipaddress.IPv4Address], dict[str, tuple[str, str]], str]:
    """The addresses a network's DHCP range offers, its reservations (name -> (mac, ip)), and its own
    address. PermanentFailure when the network has no IPv4 DHCP range."""
    root = ET.fromstring(network_xml)
    for ip in root.findall("ip"):
        if ip.get("family", "ipv4") != "ipv4":
            continue
        dhcp = ip.find("dhcp")
        span = dhcp.find("range") if dhcp is not None else None
        if dhcp is None or span is None:
            continue
        start = ipaddress.IPv4Address(span.get("start", ""))
        end = ipaddress.IPv4Address(span.get("end", ""))
        hosts = {
            h.get("name", ""): (h.get("mac", "").lower(), h.get("ip", "")) for h in dhcp.findall("host") if h.get("ip")
        }
        offered = [ipaddress.IPv4Address(n) for n in range(int(start), int(end) + 1)]
        return offered, hosts, ip.get("address", "")
    raise PermanentFailure("the VM network has no IPv4 DHCP range to reserve guest addresses in")


def _update_flags(network: Any) -> int:
    import libvirt

    flags = libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG
    if network.isActive():
        flags |= libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE
    return int(flags)


def reserve(network: Any, network_name: str, name: str, deployment_id: str) -> tuple[str, str]:
    """The guest's (mac, ip) in `network` (named `network_name`): its existing reservation, or a new one."""
    import libvirt

    flags = _update_flags(network)
    for attempt in range(8):
        offered, hosts, own = dhcp_range(network.XMLDesc())
        if name in hosts:
            return hosts[name]
        taken = {ip for _mac, ip in hosts.values()} | {own}
        free = next((str(a) for a in offered if str(a) not in taken), None)
        if free is None:
            raise RuntimeFailure(f"network {network_name!r} has no free address left for another guest")
        mac = mac_for(deployment_id, attempt)
        entry = f"<host mac='{mac}' name='{name}' ip='{free}'/>"
        try:
            network.update(
                libvirt.VIR_NETWORK_UPDATE_COMMAND_ADD_LAST,
                libvirt.VIR_NETWORK_SECTION_IP_DHCP_HOST,
                -1,
                entry,
                flags,
            )
            return mac, free
        except libvirt.libvirtError as exc:
            if "existing dhcp host entry" not in str(exc):
                raise
            # Another launch took the address (or the MAC) meanwhile: look again.
    raise RuntimeFailure(f"could not reserve an address in network {network_name!r}")


def release(network: Any, name: str) -> None:
    """Remove the guest's reservation from `network`, if it has one."""
    import libvirt

    _offered, hosts, _own = dhcp_range(network.XMLDesc())
    if name not in hosts:
        return
    mac, ip = hosts[name]
    flags = _update_flags(network)
    network.update(
        libvirt.VIR_NETWORK_UPDATE_COMMAND_DELETE,
        libvirt.VIR_NETWORK_SECTION_IP_DHCP_HOST,
        -1,
        f"<host mac='{mac}' name='{name}' ip='{ip}'/>",
        flags,
    )


def reserved_address(network: Any, name: str) -> str | None:
    """The address reserved for the guest in `network`, or None."""
    return dhcp_range(network.XMLDesc())[1].get(name, ("", None))[1]
