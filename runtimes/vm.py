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

The domain XML is made in `runtimes.vm_domain`, guest addresses are reserved by `runtimes.vm_network`;
hypervisor events are named and pumped by `runtimes.vm_events`; this module holds the executor and its
libvirt connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import threading
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from core.failures import PermanentFailure, RuntimeFailure
from core.sources import ImageSource
from runtimes.base import Instance, InstanceStatus, LaunchSpec
from runtimes.vm_domain import (
    DEFAULT_TEMPLATE,
    PREFIX,
    XMLNS,
    domain_name,
    metadata_element,
    render,
    with_traffic_filter,
)
from runtimes.vm_events import EventPump, EventSink, describe_event
from runtimes.vm_network import release, reserve, reserved_address

log = logging.getLogger("mcphost.runtime.vm")

NAME = "virtual-machine"


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
                EventPump.ensure()
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
            what, how = describe_event(event, detail)
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
        return reserve(network, self.network, name, deployment_id)

    def _release(self, name: str) -> None:
        import libvirt

        try:
            network = self._connection().networkLookupByName(self.network)
        except libvirt.libvirtError:
            return
        release(network, name)

    def _address(self, name: str) -> str | None:
        import libvirt

        try:
            network = self._connection().networkLookupByName(self.network)
        except libvirt.libvirtError:
            return None
        return reserved_address(network, name)

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
