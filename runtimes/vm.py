"""The virtual-machine runtime: each server revision runs in a libvirt guest of its own.

A revision is a domain `mcp-<deployment id>` defined from a template (memory and vCPUs from settings),
attached to `VM_NETWORK` with a DHCP reservation the platform makes (so the guest's address is known
before it boots; libvirt's `clean-traffic` filter holds the guest to it and its MAC), and given its
workload (image, port, path, config env and secrets) as a read-only directory (`<filesystem>` tag
`mcphost-workload`) that only that guest sees. The guest OS (`VM_BASE_IMAGE`,
booted with a throw-away overlay) runs the workload's image and an attestation agent that answers
`GET http://<guest>:<VM_ATTESTATION_PORT>/attestation?nonce=<n>` with a signed quote (core.attestation).

Every method looks at the hypervisor first (the domain, its reservation), so each is idempotent. The
domain's metadata (namespace `https://mcphost.io/xmlns/vm/1`) ties it to its server and deployment.
Hypervisor lifecycle events (defined, started, stopped, crashed, undefined, ...) are handed to a sink,
which the worker writes to `runtime_vm_events`.

Production uses `qemu:///system`; the tests use libvirt's built-in `test:///default` hypervisor.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import ipaddress
import json
import logging
import os
import shutil
import string
import threading
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import httpx

from core.failures import PermanentFailure, RuntimeFailure
from core.sources import ImageSource
from runtimes.base import Instance, InstanceStatus, LaunchSpec

log = logging.getLogger("mcphost.runtime.vm")

NAME = "virtual-machine"
XMLNS = "https://mcphost.io/xmlns/vm/1"
PREFIX = "mcp-"
# (domain name, server id, deployment id, event, detail): what the hypervisor reported.
EventSink = Callable[[str, str, str, str, str], None]

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

# libvirt's lifecycle event and detail codes, as words.
EVENTS = ["defined", "undefined", "started", "suspended", "resumed", "stopped", "shutdown", "pmsuspended", "crashed"]
STOP_DETAILS = ["shutdown", "destroyed", "crashed", "migrated", "saved", "failed", "from-snapshot"]


def domain_name(deployment_id: str) -> str:
    return f"{PREFIX}{deployment_id}"


def mac_for(deployment_id: str, attempt: int = 0) -> str:
    """A stable locally administered MAC (QEMU's 52:54:00 prefix) for the revision."""
    digest = hashlib.sha256(f"{deployment_id}:{attempt}".encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


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


class _EventPump:
    """libvirt delivers domain events through an event loop registered before the first connection; one
    thread per process runs it and calls each executor's callback."""

    started = False
    lock = threading.Lock()

    @classmethod
    def ensure(cls) -> None:
        import libvirt

        with cls.lock:
            if cls.started:
                return
            libvirt.virEventRegisterDefaultImpl()  # must come before the first connection is opened

            def run() -> None:
                while True:
                    try:
                        libvirt.virEventRunDefaultImpl()
                    except Exception:  # noqa: BLE001 - the pump must outlive a bad callback
                        log.exception("libvirt event loop iteration failed")

            threading.Thread(target=run, name="libvirt-events", daemon=True).start()
            cls.started = True


class VirtualMachineExecutor:
    name = NAME

    def __init__(
        self,
        uri: str,
        *,
        network: str,
        memory_mib: int,
        vcpus: int,
        workload_root: Path,
        base_image: Path,
        template: Path | None = None,
        attestation_port: int = 9443,
        boot_timeout: float = 120.0,
        event_sink: EventSink | None = None,
    ) -> None:
        self.uri = uri
        self.network = network
        self.memory_mib = memory_mib
        self.vcpus = vcpus
        self.workload_root = workload_root
        self.base_image = base_image
        self.template_path = template
        self.attestation_port = attestation_port
        self.boot_timeout = boot_timeout
        self.event_sink = event_sink
        self._conn: Any = None
        self._callback: int | None = None
        self._lock = threading.Lock()
        self._http: httpx.AsyncClient | None = None

    # -- the connection ----------------------------------------------------------------------------------

    def _connection(self) -> Any:
        import libvirt

        with self._lock:
            if self._conn is not None and self._conn.isAlive():
                return self._conn
            if self.event_sink is not None:
                _EventPump.ensure()
            try:
                self._conn = libvirt.open(self.uri)
            except libvirt.libvirtError as exc:
                raise RuntimeFailure(f"libvirt at {self.uri} cannot be reached: {exc}") from None
            if self.event_sink is not None:
                self._callback = self._conn.domainEventRegisterAny(
                    None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_event, None
                )
            return self._conn

    def _on_event(self, _conn: Any, domain: Any, event: int, detail: int, _opaque: Any) -> None:
        sink = self.event_sink
        if sink is None:
            return
        try:
            name = domain.name()
            if not name.startswith(PREFIX):
                return
            what = EVENTS[event] if 0 <= event < len(EVENTS) else f"event-{event}"
            how = STOP_DETAILS[detail] if what == "stopped" and 0 <= detail < len(STOP_DETAILS) else str(detail)
            if what == "stopped" and how == "crashed":
                what = "crashed"
            server_id, deployment_id = "", name[len(PREFIX) :]
            meta = self._meta(domain)
            if meta is not None:
                server_id, deployment_id = meta["server"], meta["deployment"]
            sink(name, server_id, deployment_id, what, how)
        except Exception:  # noqa: BLE001 - never let a callback break libvirt's loop
            log.exception("recording a libvirt event failed")

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """A blocking libvirt call off the event loop; libvirt errors become runtime failures."""
        import libvirt

        try:
            return await asyncio.to_thread(fn, *args)
        except libvirt.libvirtError as exc:
            raise RuntimeFailure(f"libvirt: {exc.get_error_message() or exc}") from None

    def _lookup(self, name: str) -> Any:
        import libvirt

        try:
            return self._connection().lookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise

    @staticmethod
    def _meta(domain: Any) -> dict[str, str] | None:
        import libvirt

        try:
            raw = domain.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, XMLNS)
        except libvirt.libvirtError:
            return None
        element = ET.fromstring(raw)
        if not element.get("server") or not element.get("deployment"):
            return None
        return {k: element.get(k, "") for k in ("server", "deployment", "slug", "port", "path")}

    # -- guest addresses ---------------------------------------------------------------------------------

    def _reserve(self, name: str, deployment_id: str) -> tuple[str, str]:
        """The guest's (mac, ip): its existing reservation in the network, or a new one."""
        import libvirt

        try:
            network = self._connection().networkLookupByName(self.network)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_NETWORK:
                raise PermanentFailure(f"libvirt has no network {self.network!r} (VM_NETWORK)") from None
            raise
        flags = libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG
        if network.isActive():
            flags |= libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE
        for attempt in range(8):
            offered, hosts, own = dhcp_range(network.XMLDesc())
            if name in hosts:
                return hosts[name]
            taken = {ip for _mac, ip in hosts.values()} | {own}
            free = next((str(a) for a in offered if str(a) not in taken), None)
            if free is None:
                raise RuntimeFailure(f"network {self.network!r} has no free address left for another guest")
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
        raise RuntimeFailure(f"could not reserve an address in network {self.network!r}")

    def _release(self, name: str) -> None:
        import libvirt

        try:
            network = self._connection().networkLookupByName(self.network)
        except libvirt.libvirtError:
            return
        _offered, hosts, _own = dhcp_range(network.XMLDesc())
        if name not in hosts:
            return
        mac, ip = hosts[name]
        flags = libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG
        if network.isActive():
            flags |= libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE
        network.update(
            libvirt.VIR_NETWORK_UPDATE_COMMAND_DELETE,
            libvirt.VIR_NETWORK_SECTION_IP_DHCP_HOST,
            -1,
            f"<host mac='{mac}' name='{name}' ip='{ip}'/>",
            flags,
        )

    def _address(self, name: str) -> str | None:
        import libvirt

        try:
            network = self._connection().networkLookupByName(self.network)
        except libvirt.libvirtError:
            return None
        return dhcp_range(network.XMLDesc())[1].get(name, ("", None))[1]

    # -- the executor protocol ---------------------------------------------------------------------------

    async def prepare(self, spec: LaunchSpec) -> str:
        if not isinstance(spec.source, ImageSource):
            raise PermanentFailure("the virtual-machine runtime runs images (image and git sources)")
        await self._call(self._connection)
        return f"guest of {self.memory_mib} MiB and {self.vcpus} vCPU for {spec.source.image}"

    def workload_dir(self, name: str) -> Path:
        return self.workload_root / name

    def _write_workload(self, name: str, spec: LaunchSpec, source: ImageSource) -> Path:
        """What the guest runs, readable by that guest alone (it holds config env and secrets)."""
        directory = self.workload_dir(name)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(directory, 0o700)
        workload = {
            "server_id": spec.server_id,
            "deployment_id": spec.deployment_id,
            "image": source.image,
            "port": source.port,
            "path": source.path,
            "env": spec.env,
            "memory_mib": self.memory_mib,
            "vcpus": self.vcpus,
        }
        target = directory / "workload.json"
        partial = directory / "workload.json.partial"
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(workload, handle)
        os.replace(partial, target)
        return directory

    def _define(self, spec: LaunchSpec, source: ImageSource) -> Any:
        name = domain_name(spec.deployment_id)
        domain = self._lookup(name)
        if domain is not None:
            return domain
        mac, ip = self._reserve(name, spec.deployment_id)
        directory = self._write_workload(name, spec, source)
        template = self.template_path.read_text() if self.template_path else DEFAULT_TEMPLATE
        xml = render(
            template,
            {
                "name": name,
                "uuid": str(uuid.UUID(spec.deployment_id)),
                "memory_mib": str(self.memory_mib),
                "vcpus": str(self.vcpus),
                "network": self.network,
                "mac": mac,
                "workload_dir": str(directory),
                "base_image": str(self.base_image),
                "console_log": str(directory / "console.log"),
                "metadata": metadata_element(spec, source.port, source.path),
            },
        )
        return self._connection().defineXML(with_traffic_filter(xml, self.network, ip))

    def _launch(self, spec: LaunchSpec) -> Instance:
        assert isinstance(spec.source, ImageSource)
        domain = self._define(spec, spec.source)
        if not domain.isActive():
            domain.create()
        name = domain.name()
        address = self._address(name)
        if address is None:
            raise RuntimeFailure(f"guest {name} has no address reserved in network {self.network!r}")
        return self._instance(name, spec.server_id, spec.deployment_id, address, spec.source.port, spec.source.path)

    def _instance(self, name: str, server_id: str, deployment_id: str, address: str, port: int, path: str) -> Instance:
        return Instance(
            runtime=NAME,
            ref=name,
            deployment_id=deployment_id,
            server_id=server_id,
            url=f"http://{address}:{port}{path}",
        )

    async def launch(self, spec: LaunchSpec) -> Instance:
        if not isinstance(spec.source, ImageSource):
            raise PermanentFailure("the virtual-machine runtime runs images (image and git sources)")
        instance: Instance = await self._call(self._launch, spec)
        return instance

    def _all(self, server_id: str | None) -> list[Instance]:
        found = []
        for domain in self._connection().listAllDomains():
            if not domain.name().startswith(PREFIX):
                continue
            meta = self._meta(domain)
            if meta is None or (server_id is not None and meta["server"] != server_id):
                continue
            address = self._address(domain.name()) or "0.0.0.0"
            found.append(
                self._instance(
                    domain.name(), meta["server"], meta["deployment"], address, int(meta["port"] or 0), meta["path"]
                )
            )
        return found

    async def instances(self, server_id: str) -> list[Instance]:
        found: list[Instance] = await self._call(self._all, server_id)
        return found

    async def server_ids(self) -> list[str]:
        found: list[Instance] = await self._call(self._all, None)
        return sorted({i.server_id for i in found})

    def _status(self, name: str) -> InstanceStatus:
        import libvirt

        domain = self._lookup(name)
        if domain is None:
            return InstanceStatus("missing")
        state, reason = domain.state()
        if state in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED, libvirt.VIR_DOMAIN_PAUSED):
            return InstanceStatus("running")
        crashed = state == libvirt.VIR_DOMAIN_CRASHED or (
            state == libvirt.VIR_DOMAIN_SHUTOFF and reason == libvirt.VIR_DOMAIN_SHUTOFF_CRASHED
        )
        return InstanceStatus("exited", detail="crashed" if crashed else "shut off")

    async def status(self, instance: Instance) -> InstanceStatus:
        status: InstanceStatus = await self._call(self._status, instance.ref)
        return status

    def _stop(self, name: str) -> None:
        domain = self._lookup(name)
        if domain is not None and domain.isActive():
            domain.destroy()

    async def stop(self, instance: Instance) -> None:
        await self._call(self._stop, instance.ref)

    def _remove(self, name: str) -> None:
        import libvirt

        domain = self._lookup(name)
        if domain is not None:
            if domain.isActive():
                domain.destroy()
            try:
                domain.undefine()
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    raise
        self._release(name)
        shutil.rmtree(self.workload_dir(name), ignore_errors=True)

    async def remove(self, instance: Instance) -> None:
        await self._call(self._remove, instance.ref)

    async def logs(self, instance: Instance, tail: int = 200) -> list[str]:
        console = self.workload_dir(instance.ref) / "console.log"
        try:
            lines = await asyncio.to_thread(console.read_text, errors="replace")
        except OSError:
            return []
        return lines.splitlines()[-tail:]

    # -- attestation -------------------------------------------------------------------------------------

    async def quote(self, instance: Instance, nonce: str) -> dict[str, Any] | None:
        """The guest's quote for `nonce`, or None while its agent does not answer (still booting)."""
        host = httpx.URL(instance.url).host
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=httpx.Timeout(5.0, connect=2.0), trust_env=False)
        try:
            response = await self._http.get(
                f"http://{host}:{self.attestation_port}/attestation", params={"nonce": nonce}
            )
        except httpx.HTTPError:
            return None
        if response.status_code == 503:
            return None  # the agent is up, the quote is not ready yet
        if response.status_code != 200 or len(response.content) > 64 * 1024:
            return {"malformed": True}
        try:
            body = response.json()
        except ValueError:
            return {"malformed": True}
        return body if isinstance(body, dict) else {"malformed": True}

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        with self._lock:
            conn, self._conn = self._conn, None
            callback, self._callback = self._callback, None
        if conn is not None:
            try:
                if callback is not None:
                    conn.domainEventDeregisterAny(callback)
                conn.close()
            except Exception:  # noqa: BLE001 - closing a connection that already went
                pass
