"""The guest side of libvirt's test hypervisor (`test:///default`), which defines and "runs" domains but
boots nothing. `GuestPlayer` plays what the guest image does in production: for each running `mcp-*`
domain it runs the workload the platform gave it (workload.json: image, port, env) as a podman container
published on the address the platform reserved for the guest (a loopback address, from a test network
whose DHCP range is 127.0.1.0/24), and serves the attestation agent there, signing quotes with a test
key. `mode` makes the agent misbehave the ways the verifier must catch. Stopped and undefined domains
lose their container and agent."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from core.attestation import sign

URI = "test:///default"
MEASUREMENT = hashlib.sha256(b"mcphost test guest image").hexdigest()
NETWORK_XML = """<network><name>{name}</name><forward mode='nat'/><bridge name='{bridge}'/>
<ip address='127.0.1.1' netmask='255.255.255.0'><dhcp><range start='127.0.1.2' end='127.0.1.250'/></dhcp></ip>
</network>"""
TEMPLATE = """<domain type='test'>
  <name>$name</name>
  <uuid>$uuid</uuid>
  <metadata>$metadata</metadata>
  <memory unit='MiB'>$memory_mib</memory>
  <vcpu>$vcpus</vcpu>
  <os><type>hvm</type></os>
  <devices>
    <interface type='network'><source network='$network'/><mac address='$mac'/></interface>
    <filesystem type='mount' accessmode='squash'>
      <source dir='$workload_dir'/><target dir='mcphost-workload'/><readonly/>
    </filesystem>
  </devices>
</domain>
"""
MODES = ("good", "bad-signature", "unknown-key", "unknown-measurement", "wrong-nonce", "stale", "silent")


def define_network(conn: Any, name: str) -> None:
    import libvirt

    try:
        network = conn.networkLookupByName(name)
    except libvirt.libvirtError:
        network = conn.networkDefineXML(NETWORK_XML.format(name=name, bridge=name[:12]))
    if not network.isActive():
        network.create()


class GuestPlayer:
    def __init__(self, workload_root: Path, network: str, docker_url: str, attestation_port: int) -> None:
        self.workload_root = workload_root
        self.network = network
        self.docker_url = docker_url
        self.attestation_port = attestation_port
        self.key = Ed25519PrivateKey.generate()
        self.mode = "good"
        self.guests: dict[str, tuple[str, ThreadingHTTPServer]] = {}  # domain -> (container, agent)
        self.quotes_served = 0
        self.errors: list[str] = []
        self.boot_retries: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.docker: Any = None
        self.conn: Any = None

    @property
    def trust_root(self) -> str:
        raw = self.key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return "test-guest=" + base64.b64encode(raw).decode()

    def start(self) -> GuestPlayer:
        import docker
        import libvirt

        # The test hypervisor's state lives as long as a connection to it is open: this one, until stop().
        self.conn = libvirt.open(URI)
        define_network(self.conn, self.network)
        self.docker = docker.DockerClient(base_url=self.docker_url)
        for left in self.docker.containers.list(all=True, filters={"label": "io.mcphost.test.guest=1"}):
            left.remove(force=True)
        self._thread = threading.Thread(target=self._loop, name="guest-player", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        for name in list(self.guests):
            self._shut(name)
        self.docker.close()
        self.conn.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._sync()
            except Exception as exc:  # noqa: BLE001 - the loop keeps going; tests read `errors`
                self.errors.append(repr(exc))
            self._stop.wait(0.1)

    def _address(self, name: str) -> str | None:
        from runtimes.vm_network import dhcp_range

        hosts = dhcp_range(self.conn.networkLookupByName(self.network).XMLDesc())[1]
        return hosts[name][1] if name in hosts else None

    def _sync(self) -> None:
        running = {name for name in map(self._active_name, self.conn.listAllDomains()) if name}
        for name in set(self.guests) - running:
            self._shut(name)
        for name in running - set(self.guests):
            try:
                self._boot(name)
            except Exception as exc:  # noqa: BLE001 - e.g. the address still held by a guest just gone
                self.boot_retries.append(repr(exc))
                self._remove_container(f"guest-{name[4:16]}")

    @staticmethod
    def _active_name(domain: Any) -> str | None:
        """The platform domain's name while it runs; None for others, and for one undefined since it was
        listed (the platform removes domains while this loop looks)."""
        import libvirt

        try:
            name: str = domain.name()
            return name if name.startswith("mcp-") and domain.isActive() else None
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise

    def _boot(self, name: str) -> None:
        workload = json.loads((self.workload_root / name / "workload.json").read_text())
        address = self._address(name)
        assert address is not None, f"{name} has no reservation"
        container = f"guest-{name[4:16]}"
        agent = ThreadingHTTPServer((address, self.attestation_port), self._agent_handler())
        agent.daemon_threads = True
        try:
            self._run(container, workload, address)
        except BaseException:
            agent.server_close()
            raise
        threading.Thread(target=agent.serve_forever, name=f"agent-{name[:12]}", daemon=True).start()
        self.guests[name] = (container, agent)

    def _run(self, container: str, workload: dict[str, Any], address: str) -> None:
        self.docker.containers.run(
            workload["image"],
            detach=True,
            name=container,
            environment=workload["env"] | {"PORT": str(workload["port"])},
            ports={f"{workload['port']}/tcp": (address, workload["port"])},
            cap_drop=["ALL"],
            tmpfs={"/tmp": "rw,mode=1777", "/data": "rw,mode=1777"},
            labels={"io.mcphost.test.guest": "1"},
        )

    def _shut(self, name: str) -> None:
        container, agent = self.guests.pop(name)
        agent.shutdown()
        agent.server_close()
        self._remove_container(container)

    def _remove_container(self, container: str) -> None:
        import docker.errors

        try:
            self.docker.containers.get(container).remove(force=True)
        except docker.errors.NotFound:
            pass

    def quote(self, nonce: str) -> dict[str, Any] | None:
        mode = self.mode
        if mode == "silent":
            return None
        issued = datetime.now(UTC) - (timedelta(hours=2) if mode == "stale" else timedelta(0))
        report = {
            "key_id": "someone-else" if mode == "unknown-key" else "test-guest",
            "measurement": hashlib.sha256(b"another image").hexdigest()
            if mode == "unknown-measurement"
            else MEASUREMENT,
            "nonce": "not-the-nonce" if mode == "wrong-nonce" else nonce,
            "issued_at": issued.isoformat(),
        }
        signed = sign(report, self.key if mode != "bad-signature" else Ed25519PrivateKey.generate())
        return signed

    def _agent_handler(self) -> type[BaseHTTPRequestHandler]:
        player = self

        class Agent(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                url = urlsplit(self.path)
                nonce = parse_qs(url.query).get("nonce", [""])[0]
                quote = player.quote(nonce) if url.path == "/attestation" else None
                if quote is None:
                    self.send_response(503)
                    self.end_headers()
                    return
                body = json.dumps(quote).encode()
                player.quotes_served += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                pass

        return Agent
