"""The virtual-machine runtime on libvirt's test hypervisor (`test:///default`, the real libvirt API with
no guest booting), with `GuestPlayer` doing what the guest image does (run the workload, answer
attestation): a trusted guest serves through the gateway with its lifecycle and posture recorded; guests
whose quotes fail each check (signature, key, measurement, nonce, age) are replaced by docker with the
policy notes; the posture feed streams the changes to the owner only; redeploy and delete leave the
hypervisor and the network clean."""

from __future__ import annotations

import asyncio
import json
import stat
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.cli import Cli
from tests.support.components import Podman, free_port, require
from tests.support.mcp_client import call_tool
from tests.support.stack import Stack, deploy, make_settings
from tests.support.vmguest import MEASUREMENT, TEMPLATE, URI, GuestPlayer

pytestmark = pytest.mark.timeout(300)
NETWORK = "mcphost-vm-test"


def libvirt_present() -> bool:
    try:
        import libvirt  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def guests(process_state_dir: Path, docker_engine: Podman) -> Iterator[GuestPlayer]:
    require(libvirt_present(), "libvirt-python (make vm-deps; Debian: libvirt-dev and pkg-config)")
    docker_engine.ensure_echo_image()
    player = GuestPlayer(process_state_dir / "vm", NETWORK, docker_engine.url, free_port()).start()
    yield player
    player.stop()


@pytest.fixture(scope="module")
async def vm_stack(
    guests: GuestPlayer,
    temporal_address: str,
    database_url: str,
    process_state_dir: Path,
    docker_engine: Podman,
    workdir: Path,
) -> AsyncIterator[Stack]:
    template = workdir / "test-domain.xml"
    template.write_text(TEMPLATE)
    settings = make_settings(
        database_url,
        temporal_address,
        process_state_dir,
        docker_host=docker_engine.url,
        vm_libvirt_uri=URI,
        vm_network=NETWORK,
        vm_domain_template=template,
        vm_memory_mib=512,
        vm_vcpus=2,
        vm_attestation_port=guests.attestation_port,
        vm_attestation_trust_roots=guests.trust_root,
        vm_attestation_measurements=MEASUREMENT,
        vm_attestation_max_age_seconds=600,
        vm_boot_timeout_seconds=30,
    )
    platform = Stack(settings)
    await platform.start()
    yield platform
    await platform.stop()


def domains() -> dict[str, Any]:
    import libvirt

    conn = libvirt.open(URI)
    try:
        return {d.name(): d.XMLDesc() for d in conn.listAllDomains() if d.name().startswith("mcp-")}
    finally:
        conn.close()


def reservations() -> dict[str, tuple[str, str]]:
    import libvirt

    from runtimes.vm_network import dhcp_range

    conn = libvirt.open(URI)
    try:
        return dhcp_range(conn.networkLookupByName(NETWORK).XMLDesc())[1]
    finally:
        conn.close()


async def until(condition: Any, what: str, bound: float = 60) -> Any:
    deadline = time.monotonic() + bound
    while True:
        value = await condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"still not so after {bound} s: {what}")
        await asyncio.sleep(0.1)


async def create_server(client: httpx.AsyncClient, image: str) -> dict[str, Any]:
    created = await client.post(
        "/api/servers",
        json={
            "name": f"vm-{uuid.uuid4().hex[:6]}",
            "source": {"type": "image", "image": image},
            "runtime": "virtual-machine",
        },
    )
    assert created.status_code == 201, created.text
    server: dict[str, Any] = created.json()
    return server


async def read_trust_events(response: httpx.Response, events: list[dict[str, Any]]) -> None:
    name = ""
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: ") and name == "trust":
            events.append(json.loads(line[6:]))


async def test_a_trusted_guest_serves_with_its_lifecycle_and_posture_recorded(
    vm_stack: Stack, guests: GuestPlayer, docker_engine: Podman, process_state_dir: Path, tmp_path: Path
) -> None:
    guests.mode = "good"
    image = docker_engine.ensure_echo_image()
    token = "vm-" + uuid.uuid4().hex
    owner, _ = await vm_stack.user()
    stranger, _ = await vm_stack.user()
    async with owner, stranger:
        package = await owner.post(
            "/api/servers",
            json={"name": "vm-pkg", "source": {"type": "package", "package": "x"}, "runtime": "virtual-machine"},
        )
        assert package.status_code == 422 and "runs image and git sources" in package.text
        server = await create_server(owner, image)
        sid = server["id"]
        assert (
            await owner.post(f"/api/servers/{sid}/secrets", json={"name": "API_TOKEN", "value": token})
        ).status_code == 201

        # The owner's posture feed is open before the launch; it sees the change as it happens.
        seen: list[dict[str, Any]] = []
        async with owner.stream("GET", "/api/policy/stream") as feed:
            assert feed.status_code == 200
            reader = asyncio.create_task(read_trust_events(feed, seen))
            try:
                first = await deploy(owner, sid)
                assert first["status"] == "running", first
                await until(lambda: _has(seen, sid), "the trusted change on the owner's feed", 30)
            finally:
                reader.cancel()
        change = next(e for e in seen if e["server_id"] == sid)
        assert change["posture"] == "trusted" and change["note"] == "vm:attestation:trusted"

        # The guest: defined from the template with the settings' sizing, its metadata, its reserved address.
        name = f"mcp-{first['id']}"
        xml = domains()[name]
        assert "<memory unit='KiB'>524288</memory>" in xml and ">2</vcpu>" in xml
        assert f'server="{sid}"' in xml and f'deployment="{first["id"]}"' in xml
        assert token not in xml  # secrets reach the guest in its workload only
        workload = process_state_dir / "vm" / name / "workload.json"
        assert json.loads(workload.read_text())["env"]["API_TOKEN"] == token
        assert stat.S_IMODE(workload.stat().st_mode) == 0o600
        assert stat.S_IMODE(workload.parent.stat().st_mode) == 0o700
        address = reservations()[name][1]

        gateway = f"{vm_stack.base_url}/mcp/{server['slug']}"
        assert await call_tool(gateway, server["api_key"], "echo", {"text": "in a guest"}) == "echo: in a guest"

        vm = (await owner.get(f"/api/servers/{sid}/vm")).json()
        guest = vm["guests"][0]
        assert guest["domain"] == name and guest["posture"] == "trusted" and guest["measurement"] == MEASUREMENT
        assert guest["address"] == address and guest["memory_mib"] == 512 and guest["vcpus"] == 2
        assert guest["uri"] == URI
        assert [t["posture"] for t in vm["trust"]] == ["trusted"]
        await until(lambda: _events(owner, sid, {"defined", "started"}), "defined and started events")
        decisions = (await owner.get(f"/api/servers/{sid}/policy-decisions")).json()["data"]
        placed = [d for d in decisions if d["notes"] == ["vm:attestation:trusted"]]
        assert len(placed) == 1 and placed[0]["backend"] == "virtual-machine"
        assert (await stranger.get(f"/api/servers/{sid}/vm")).status_code == 404
        cli = await Cli.for_user(owner, vm_stack.base_url, tmp_path)
        shown = await cli("vm", server["slug"])
        assert shown.code == 0 and "-> trusted vm:attestation:trusted" in shown.out, shown.out
        listed = await cli("vm", server["slug"], "--json")
        assert json.loads(listed.out)["guests"][0]["domain"] == name

        # A redeploy: a new guest serves, the old one is undefined and its address released.
        second = await deploy(owner, sid)
        assert second["status"] == "running", second
        assert await call_tool(gateway, server["api_key"], "echo", {"text": "again"}) == "echo: again"
        await until(lambda: _async(set(domains()) & {name, f"mcp-{second['id']}"} == {f"mcp-{second['id']}"}), "one")
        assert name not in reservations() and not workload.exists()
        await until(lambda: _events(owner, sid, {"stopped", "undefined"}), "stopped and undefined events")

        deleting = await owner.delete(f"/api/servers/{sid}")
        assert deleting.status_code == 202, deleting.text
        await until(lambda: _async(f"mcp-{second['id']}" not in domains()), "no guest after delete", 90)
        assert f"mcp-{second['id']}" not in reservations()
    assert not guests.errors, guests.errors


@pytest.mark.parametrize(
    ("mode", "note"),
    [
        ("bad-signature", "vm:attestation:untrusted:signature"),
        ("unknown-key", "vm:attestation:untrusted:unknown-key"),
        ("unknown-measurement", "vm:attestation:untrusted:measurement"),
        ("wrong-nonce", "vm:attestation:untrusted:nonce"),
        ("stale", "vm:attestation:stale:age"),
    ],
)
async def test_a_guest_that_does_not_attest_is_replaced_by_docker(
    vm_stack: Stack, guests: GuestPlayer, docker_engine: Podman, mode: str, note: str
) -> None:
    owner, _ = await vm_stack.user()
    async with owner:
        server = await create_server(owner, docker_engine.ensure_echo_image())
        sid = server["id"]
        playbook = await owner.post(
            "/api/trust/remediation/playbooks",
            json={"name": "on-untrusted", "steps": [{"name": "tell", "kind": "notify", "message": "guest untrusted"}]},
        )
        assert playbook.status_code == 201, playbook.text
        bound = await owner.put(f"/api/trust/remediation/playbooks/{playbook.json()['id']}/servers/{sid}")
        assert bound.status_code == 204
        guests.mode = mode
        try:
            done = await deploy(owner, sid)
        finally:
            guests.mode = "good"
        assert done["status"] == "running", done
        assert on_docker(docker_engine, done["id"]), "the revision runs in a docker container"
        gateway = f"{vm_stack.base_url}/mcp/{server['slug']}"
        assert await call_tool(gateway, server["api_key"], "echo", {"text": "on docker"}) == "echo: on docker"

        vm = (await owner.get(f"/api/servers/{sid}/vm")).json()
        posture, _, reason = note.removeprefix("vm:attestation:").partition(":")
        assert vm["guests"][0]["posture"] == posture and vm["guests"][0]["posture_reason"] == reason
        assert [(t["posture"], t["note"]) for t in vm["trust"]] == [(posture, note)]
        decisions = (await owner.get(f"/api/servers/{sid}/policy-decisions")).json()["data"]
        fallback = [d for d in decisions if "runtime:fallback:docker" in d["notes"]]
        assert len(fallback) == 1 and fallback[0]["backend"] == "docker" and fallback[0]["notes"][0] == note
        assert f"mcp-{done['id']}" not in domains()  # the untrusted guest is gone
        logs = (await owner.get(f"/api/servers/{sid}/logs")).text
        assert "did not attest" in logs and "running on docker instead" in logs
        # The guest's untrusted posture started the playbook bound to the server.
        runs = (await owner.get("/api/trust/remediation/runs", params={"server_id": sid})).json()["data"]
        assert [r["trigger"] for r in runs] == ["untrusted"]
        await until(lambda: _succeeded(owner, runs[0]["id"]), "the remediation run's end")
        assert (await owner.delete(f"/api/servers/{sid}")).status_code == 202


async def test_the_posture_feed_shows_a_caller_only_their_own_guests(
    vm_stack: Stack, guests: GuestPlayer, docker_engine: Podman
) -> None:
    guests.mode = "good"
    owner, _ = await vm_stack.user()
    other, _ = await vm_stack.user()
    async with owner, other:
        mine = await create_server(owner, docker_engine.ensure_echo_image())
        theirs = await create_server(other, docker_engine.ensure_echo_image())
        assert (await deploy(owner, mine["id"]))["status"] == "running"
        # From the start of history (after=1 replays every change since id 1): the other user's first
        # trust event is their own server's, never the owner's.
        seen: list[dict[str, Any]] = []
        async with other.stream("GET", "/api/policy/stream", params={"after": 1}) as feed:
            reader = asyncio.create_task(read_trust_events(feed, seen))
            try:
                assert (await deploy(other, theirs["id"]))["status"] == "running"
                await until(lambda: _has(seen, theirs["id"]), "their own change", 30)
            finally:
                reader.cancel()
        assert {e["server_id"] for e in seen} == {theirs["id"]}
        for client, server in ((owner, mine), (other, theirs)):
            assert (await client.delete(f"/api/servers/{server['id']}")).status_code == 202


def on_docker(engine: Podman, deployment_id: str) -> bool:
    import docker

    client = docker.DockerClient(base_url=engine.url)
    try:
        return bool(client.containers.list(filters={"label": f"io.mcphost.deployment={deployment_id}"}))
    finally:
        client.close()


async def _succeeded(client: httpx.AsyncClient, run_id: str) -> bool:
    run = (await client.get(f"/api/trust/remediation/runs/{run_id}")).json()
    return bool(run["status"] == "succeeded")


async def _has(seen: list[dict[str, Any]], server_id: str) -> bool:
    return any(e["server_id"] == server_id for e in seen)


async def _async(value: bool) -> bool:
    return value


async def _events(client: httpx.AsyncClient, server_id: str, wanted: set[str]) -> bool:
    vm = (await client.get(f"/api/servers/{server_id}/vm")).json()
    return wanted <= {e["event"] for e in vm["events"]}


async def test_a_guest_is_held_to_its_own_addresses_by_libvirts_clean_traffic_filter(tmp_path: Path) -> None:
    require(libvirt_present(), "libvirt-python (make vm-deps; Debian: libvirt-dev and pkg-config)")
    import xml.etree.ElementTree as ET

    import libvirt

    from core.sources import ImageSource
    from runtimes.base import LaunchSpec
    from runtimes.vm import VirtualMachineExecutor
    from runtimes.vm_domain import with_traffic_filter
    from tests.support.vmguest import define_network

    conn = libvirt.open(URI)  # held open: the test hypervisor's state lives while a connection does
    define_network(conn, NETWORK)
    template = tmp_path / "domain.xml"
    template.write_text(TEMPLATE)
    executor = VirtualMachineExecutor(
        URI,
        network=NETWORK,
        memory_mib=256,
        vcpus=1,
        workload_root=tmp_path / "vm",
        base_image=tmp_path / "base.qcow2",
        template=template,
    )
    spec = LaunchSpec(
        server_id=str(uuid.uuid4()),
        deployment_id=str(uuid.uuid4()),
        slug="filtered",
        source=ImageSource(image="ghcr.io/acme/weather-mcp:1.2"),
    )
    instance = await executor.launch(spec)
    try:
        # As libvirt holds the domain: the template's one interface carries the filter, pinned to the guest's
        # reserved address, which is the address the gateway is given.
        defined = ET.fromstring(conn.lookupByName(instance.ref).XMLDesc())
        interfaces = defined.findall("./devices/interface")
        assert len(interfaces) == 1
        ref = interfaces[0].find("filterref")
        assert ref is not None and ref.get("filter") == "clean-traffic"
        parameters = {p.get("name"): p.get("value") for p in ref.findall("parameter")}
        assert parameters == {"IP": reservations()[instance.ref][1]}
        assert httpx.URL(instance.url).host == parameters["IP"]
    finally:
        await executor.remove(instance)
        await executor.close()
        conn.close()

    # A template that names a filter of its own keeps it; one with no interface to filter is left alone.
    own = (
        "<domain><devices><interface type='network'><filterref filter='clean-traffic-gateway'/></interface>"
        "</devices></domain>"
    )
    kept = ET.fromstring(with_traffic_filter(own, NETWORK, "127.0.1.9"))
    assert [f.get("filter") for f in kept.iter("filterref")] == ["clean-traffic-gateway"]
    assert with_traffic_filter("<domain><devices/></domain>", NETWORK, "127.0.1.9") == "<domain><devices/></domain>"
