"""Tenant Dockerfiles, the channel, against the build host's network: git builds through podman's API.

A Dockerfile may `ADD http://127.0.0.1:<port>/...` (fetched by the engine itself, on the host) or `RUN`
a connection to the host's loopback, its other addresses, a container bridge's gateway or a cloud
metadata address. The first is refused before anything is built; RUN steps run on a build network of
the platform's making (`builds.network`) where those connections fail. A listener of the test, on every
address of the host, counts what reached it. The controls turn each protection off and the same
Dockerfiles reach the listener, so the tests can fail. RUN steps still reach the internet.
"""

from __future__ import annotations

import contextlib
import json
import os
import ssl
import subprocess
import threading
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from socketserver import UnixStreamServer
from typing import Any

import pytest

from builds import dockerfile, network
from builds.images import ImageBuilder, unreachable_hint
from tests.support.components import ECHO_IMAGE, IN_CI, Podman, require
from tests.support.git_server import GitHttpServer
from tests.support.stack import Stack, deploy, make_settings

# Builds, and the deployment of the one that succeeds, take longer than the suite's default limit.
pytestmark = pytest.mark.timeout(900)

ADD_REFUSED = "ADD of a URL is fetched by the build host"
CA_BUNDLE = Path(ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt")
PROBE = """\
import sys, urllib.request

reached = 0
for url in sys.argv[1:]:
    try:
        body = urllib.request.urlopen(url, timeout=5).read()
        print("probe reached", url, body[:40])
        reached += 1
    except Exception as exc:
        print("probe unreachable", url, exc)
sys.exit(0 if reached == len(sys.argv) - 1 else 1)
"""
# Connects to port 9 of each address and prints the errno it ends with.
CONNECT = """\
import socket, sys

for address in sys.argv[1:]:
    with socket.socket() as s:
        s.settimeout(10)
        print(address, s.connect_ex((address, 9)))
"""


# --- the Dockerfile checks, as pure functions --------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "FROM x\nADD http://127.0.0.1:8080/secret /secret\n",
        "from x\nadd https://example.com/a.tgz /a\n",
        "FROM x\nAdd HTTP://example.com/a /a\n",
        'FROM x\nADD ["http://169.254.169.254/latest/meta-data/", "/m"]\n',
        'FROM x\nADD --chown=1:1 --chmod=644 ["https://example.com/a", "/a"]\n',
        "FROM x\nADD --checksum=sha256:0123 https://example.com/a /a\n",
        "FROM x\nADD --link --keep-git-dir=true https://github.com/a/b.git /src\n",
        "FROM x\nADD git@github.com:a/b.git /src\n",
        "FROM x\nADD git://example.com/b.git /src\n",
        "FROM x\nADD local.txt http://127.0.0.1/x /dst/\n",
        "FROM x\nADD \\\n  # a comment inside the continuation\n\n  --chown=0 \\\n  http://127.0.0.1/x \\\n  /x\n",
        "FROM x\nADD htt\\\np://127.0.0.1/x /x\n",
        "# escape=`\nFROM x\nADD `\n  http://127.0.0.1/x /x\n",
        "FROM x\nADD h`ttp://127.0.0.1/x /x\n",
        "FROM x\nADD 'http://127.0.0.1/x' /x\n",
        'FROM x\nADD "http://127.0.0.1/x" /x\n',
        "FROM x\nONBUILD ADD http://127.0.0.1/x /x\n",
        "FROM x\nRUN <<EOF\nADD http://127.0.0.1/x /x\nEOF\n",
        "FROM x\nARG SRC=http://127.0.0.1/x\nADD $SRC /x\n",
        "FROM x\nADD ${SRC:-http://127.0.0.1/x} /x\n",
        "FROM x\nRUN --network=host curl http://127.0.0.1/\n",
        "FROM x\nrun --mount=type=cache,target=/c --network=HOST true\n",
    ],
)
def test_dockerfiles_that_reach_the_build_host_are_refused(text: str) -> None:
    refused = dockerfile.network_refusals(text)
    assert refused, text
    line = refused[0].line
    assert 1 < line <= len(text.splitlines()) and str(refused[0]).startswith(f"line {line}: ")


@pytest.mark.parametrize(
    "text",
    [
        "FROM x\nADD app.tar.gz /srv/\nCOPY . /srv\n",
        'FROM x\nADD --chown=1:1 ["a b.txt", "/x"]\nADD <<EOF /etc/motd\nhello\nEOF\n',
        "FROM x\n# ADD http://127.0.0.1/x /x\nRUN curl -fsSLo /x https://example.com/x\n",
        "FROM x\nRUN apt-get update \\\n && add-apt-repository ppa:x/y \\\n && echo ADD http://example.com\n",
        "FROM x\nRUN --network=none pip install --no-index /w/*.whl\nRUN --network=default true\n",
        "FROM x\nCOPY --from=builder http/x /x\nENV URL=http://example.com\n",
    ],
)
def test_ordinary_dockerfiles_pass(text: str) -> None:
    assert dockerfile.network_refusals(text) == []


def test_the_refusal_names_the_line_and_the_way_out() -> None:
    [refusal] = dockerfile.network_refusals("FROM x\n\nRUN true\nADD --link http://10.0.0.1/a /a\n")
    assert refusal.line == 4
    assert "ADD http://10.0.0.1/a" in str(refusal) and "RUN curl -fsSLo /x <url>" in str(refusal)


def test_dockerfiles_the_engine_preprocesses_are_refused() -> None:
    assert dockerfile.name_problem("build/Containerfile.in") is not None
    assert dockerfile.name_problem("Dockerfile.IN") is not None
    assert dockerfile.name_problem("Dockerfile") is None and dockerfile.name_problem("docker/Dockerfile.inc") is None


def test_instructions_are_read_as_engines_read_them() -> None:
    text = '# escape=`\nFROM x\nADD --chown=0 `\n  # note\n  ["a", "/b"]\nRUN echo \\\n'
    assert dockerfile.escape_directive(text) == "`"
    parsed = dockerfile.instructions(text)
    assert [(i.line, i.keyword, i.flags, i.args) for i in parsed] == [
        (2, "FROM", (), ("x",)),
        (3, "ADD", ("--chown=0",), ("a", "/b")),
        (6, "RUN", (), ("echo", "\\")),
    ]
    assert dockerfile.escape_directive("FROM x\n# escape=`\n") == "\\"


def test_the_filter_blocks_what_is_not_the_internet() -> None:
    blocked = network.blocked_networks(["127.0.0.1", "192.0.2.2", "198.51.100.0/24", "default", "not an address"])
    for expected in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16"):
        assert expected in blocked
    assert "192.0.2.2/32" in blocked and "198.51.100.0/24" in blocked and "127.0.0.0/8" in blocked
    assert "127.0.0.1/32" not in blocked  # collapsed into 127/8
    rules = network.nft_ruleset(blocked)
    assert "reject" in rules and "nfproto ipv6 reject" in rules and f"ip daddr {network.SLIRP_DNS}" in rules
    # Recording a refused destination never decides whether it is refused.
    assert "ip daddr @blocked add @tried { ip daddr }\n" in rules
    params = network.engine_params("/run/x/net")
    assert json.loads(params["nsoptions"]) == [{"Name": "network", "Host": False, "Path": "/run/x/net"}]
    assert json.loads(params["dropcaps"]) == ["CAP_NET_RAW", "CAP_NET_ADMIN"]


def test_failed_builds_say_why_only_when_the_network_is_why() -> None:
    assert "169.254.169.254" in unreachable_hint([], ["169.254.169.254"])
    assert "build host" in unreachable_hint(["urlopen error [Errno 111] Connection refused"], [])
    assert unreachable_hint(["error: could not compile `x`"], []) == ""


# --- an engine where the platform cannot isolate builds -------------------------------------------------


class _FakeEngine(BaseHTTPRequestHandler):
    answers: dict[str, Any] = {}

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's name
        pass

    def address_string(self) -> str:
        return "unix"

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        name = self.path.split("?")[0].rstrip("/").rsplit("/", 1)[-1]
        body = json.dumps(self.answers.get(name, {})).encode()
        self.send_response(200 if name in self.answers else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextlib.contextmanager
def fake_engine(tmp_path: Path, components: list[str], security: list[str]) -> Iterator[str]:
    answers = {
        "version": {"ApiVersion": "1.41", "Version": "24.0.0", "Components": [{"Name": n} for n in components]},
        "info": {"SecurityOptions": security},
        "_ping": "OK",
    }
    handler = type("Engine", (_FakeEngine,), {"answers": answers})
    path = tmp_path / f"engine-{uuid.uuid4().hex[:6]}.sock"
    server = UnixStreamServer(str(path), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"unix://{path}"
    finally:
        server.shutdown()
        server.server_close()


async def test_engines_the_platform_cannot_isolate_are_named(tmp_path: Path) -> None:
    with fake_engine(tmp_path, ["Engine", "containerd"], ["name=seccomp,profile=builtin"]) as url:
        problem = await ImageBuilder(url).isolation_problem()
        assert problem is not None and "Docker Engine" in problem
    with fake_engine(tmp_path, ["Podman Engine"], ["name=seccomp", "name=rootless"]) as url:
        problem = await ImageBuilder(url).isolation_problem()
        assert problem is not None and "rootless" in problem


# --- real builds through the platform ------------------------------------------------------------------


class _Secret(BaseHTTPRequestHandler):
    server: Listener

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's name
        pass

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        self.server.hits.append((self.client_address[0], self.path))
        self.send_response(200)
        self.send_header("Content-Length", "6")
        self.end_headers()
        self.wfile.write(b"secret")


class Listener(ThreadingHTTPServer):
    """Answers every request with a secret, on every address of the host, and remembers what reached it."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("0.0.0.0", 0), _Secret)
        self.hits: list[tuple[str, str]] = []
        self.port = self.server_address[1]

    def paths(self, token: str) -> list[str]:
        return [path for _, path in self.hits if token in path]


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _routes(*args: str) -> list[dict[str, Any]]:
    listed = subprocess.run(["ip", "-j", "-4", "route", "show", *args], capture_output=True, text=True)
    return list(json.loads(listed.stdout or "[]")) if listed.returncode == 0 else []


def host_addresses() -> dict[str, str]:
    """Interface -> the host's own IPv4 address on it, loopback aside: the address of the interface its
    default route leaves by, and a few container bridges' gateways (the engine's networks)."""
    local = {r["dev"]: r["dst"] for r in _routes("table", "local", "type", "local") if r.get("dev") != "lo"}
    local = {dev: dst for dev, dst in local.items() if "/" not in dst}
    uplinks = {r.get("dev") for r in _routes("default")}
    chosen = {dev: dst for dev, dst in local.items() if dev in uplinks}
    bridges = sorted(dev for dev in local if dev not in uplinks)[:3]
    return {**chosen, **{dev: local[dev] for dev in bridges}}


@pytest.fixture
def build_settings(
    database_url: str, temporal_address: str, process_state_dir: Path, docker_engine: Podman, base_image: str
) -> dict[str, Any]:
    docker_engine.ensure_echo_image()
    return {
        "database_url": database_url,
        "temporal_address": temporal_address,
        "state_dir": process_state_dir,
        "docker_host": docker_engine.url,
        "git_allow_insecure_urls": True,
        "build_python_image": base_image,
    }


@contextlib.asynccontextmanager
async def platform(base: dict[str, Any], **overrides: Any) -> AsyncIterator[Stack]:
    values = {**base, **overrides}
    settings = make_settings(
        values.pop("database_url"), values.pop("temporal_address"), values.pop("state_dir"), **values
    )
    stack = Stack(settings)
    await stack.start()
    try:
        yield stack
    finally:
        await stack.stop()


async def build_and_deploy(stack: Stack, git_server: GitHttpServer, files: dict[str, str | bytes]) -> dict[str, Any]:
    name = f"net-{uuid.uuid4().hex[:8]}"
    git_server.publish(name, files)
    client, _ = await stack.user()
    async with client:
        response = await client.post(
            "/api/servers", json={"name": name, "source": {"type": "git", "repo_url": git_server.url(name)}}
        )
        assert response.status_code == 201, response.text
        server = response.json()
        result = await deploy(client, server["id"], timeout=600)
        logs = (await client.get(f"/api/servers/{server['id']}/logs", params={"tail": 2000})).json()["data"]
        result["build_log"] = [line["message"] for line in logs if line["deployment_id"] == result["id"]]
        return result


async def test_add_of_a_url_is_refused_before_anything_is_fetched(
    build_settings: dict[str, Any], git_server: GitHttpServer, listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = uuid.uuid4().hex
    files: dict[str, str | bytes] = {
        "Dockerfile": f"FROM {ECHO_IMAGE}\nADD http://127.0.0.1:{listener.port}/secret-{token} /secret\nEXPOSE 8080\n"
    }
    async with platform(build_settings) as stack:
        failed = await build_and_deploy(stack, git_server, files)
        assert failed["status"] == "failed", failed
        assert ADD_REFUSED in failed["error"] and "line 2" in failed["error"], failed["error"]
        assert "RUN curl" in failed["error"]
        assert [s["step"] for s in failed["steps"]][-1] == "build"
        assert listener.paths(token) == []

        # Control: without the check, the engine fetches the URL itself, on the host, whatever network RUN
        # steps are on, and the answer would be in the image.
        monkeypatch.setattr("activities.build.network_refusals", lambda text: [])
        fetched = await build_and_deploy(stack, git_server, files)
        assert listener.paths(token) == [f"/secret-{token}"], (listener.hits, fetched.get("error"))


async def test_run_steps_cannot_reach_the_host_or_private_networks(
    build_settings: dict[str, Any], git_server: GitHttpServer, listener: Listener
) -> None:
    token = uuid.uuid4().hex
    local = host_addresses()
    targets = [f"http://127.0.0.1:{listener.port}/loopback-{token}"]
    targets += [f"http://{address}:{listener.port}/{dev}-{token}" for dev, address in sorted(local.items())]
    targets.append("http://169.254.169.254/latest/meta-data/")
    files: dict[str, str | bytes] = {
        "probe.py": PROBE,
        "Dockerfile": f"FROM {ECHO_IMAGE}\nCOPY probe.py /probe.py\nRUN python3 /probe.py {' '.join(targets)}\n"
        "EXPOSE 8080\n",
    }
    async with platform(build_settings) as stack:
        failed = await build_and_deploy(stack, git_server, files)
    assert failed["status"] == "failed", failed
    assert listener.paths(token) == [], listener.hits
    error = failed["error"]
    assert "builds reach the internet only, never the build host" in error, error
    # Every address the build tried beyond its own loopback is named: the host's, the bridges', metadata.
    for address in [*local.values(), "169.254.169.254"]:
        assert address in error, (address, error)
    probed = [line for line in failed["build_log"] if "probe " in line]
    assert len(probed) == len(targets) and all("probe unreachable" in line for line in probed), probed
    assert any("Connection refused" in line for line in probed if "/loopback-" in line), probed

    # Control: on the engine's default network, the same step reaches the host on every address (but a
    # bridge another test removed meanwhile).
    async with platform(build_settings, build_network_isolation="off") as stack:
        await build_and_deploy(stack, git_server, files)
    reached = listener.paths(token)
    still = set(local.items()) & set(host_addresses().items())
    assert f"/loopback-{token}" in reached and all(f"/{dev}-{token}" in reached for dev, _ in still), listener.hits


def host_reaches_pypi() -> str | None:
    try:
        context = ssl.create_default_context(cafile=str(CA_BUNDLE))
        urllib.request.urlopen("https://pypi.org/simple/", timeout=20, context=context).close()
    except OSError as exc:
        return f"this host does not reach https://pypi.org ({exc})"
    return None


async def test_run_steps_reach_the_internet(build_settings: dict[str, Any], git_server: GitHttpServer) -> None:
    reason = host_reaches_pypi()
    if reason and not IN_CI:
        pytest.skip(reason)
    # The host's trust store, so a TLS-inspecting proxy in front of this host's internet is trusted too.
    files: dict[str, str | bytes] = {
        "ca.pem": CA_BUNDLE.read_bytes(),
        "Dockerfile": f"FROM {ECHO_IMAGE}\nCOPY ca.pem /ca.pem\n"
        'RUN SSL_CERT_FILE=/ca.pem python3 -c "import urllib.request; '
        f"urllib.request.urlopen('https://pypi.org/simple/', timeout=30); print('{uuid.uuid4().hex} fetched')\"\n"
        "EXPOSE 8080\n",
    }
    async with platform(build_settings) as stack:
        built = await build_and_deploy(stack, git_server, files)
    assert built["status"] == "running", (built.get("error"), built["build_log"][-20:])
    assert any("fetched" in line for line in built["build_log"])
    assert any("build network: the internet only" in line for line in built["build_log"])


async def test_an_engine_that_cannot_isolate_builds_refuses_them_unless_told(
    build_settings: dict[str, Any], git_server: GitHttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def docker_engine_problem(self: ImageBuilder) -> str:
        return "needs podman's API as the engine (DOCKER_HOST is a Docker Engine)"

    monkeypatch.setattr(ImageBuilder, "isolation_problem", docker_engine_problem)
    files: dict[str, str | bytes] = {"Dockerfile": f"FROM {ECHO_IMAGE}\nRUN true {uuid.uuid4().hex}\nEXPOSE 8080\n"}
    async with platform(build_settings) as stack:
        refused = await build_and_deploy(stack, git_server, files)
    assert refused["status"] == "failed", refused
    assert "Docker Engine" in refused["error"] and "BUILD_NETWORK_ISOLATION=off" in refused["error"], refused
    async with platform(build_settings, build_network_isolation="off") as stack:
        built = await build_and_deploy(stack, git_server, files)
    assert built["status"] == "running", (built.get("error"), built["build_log"][-20:])
    assert any("BUILD_NETWORK_ISOLATION=off" in line for line in built["build_log"])


def test_a_build_network_leaves_nothing_behind(tmp_path: Path) -> None:
    problem = network.host_problem()
    require(problem is None, f"build network isolation: it {problem}")
    run_dir = tmp_path / "run"
    with network.BuildNetwork(run_dir) as net:
        namespace = Path(net.path)
        assert os.readlink(namespace) != os.readlink("/proc/self/ns/net")
        assert net.holder is not None and net.slirp is not None
        processes = [net.holder, net.slirp]
        listed = subprocess.run(
            ["nsenter", f"--net={namespace}", "nft", "list", "table", "inet", network.TABLE],
            capture_output=True,
            text=True,
        )
        assert listed.returncode == 0 and "10.0.0.0/8" in listed.stdout, listed.stderr
        # A connection to a refused address is recorded; the namespace's own loopback is not refused.
        probe = subprocess.run(
            ["nsenter", f"--net={namespace}", "python3", "-c", CONNECT, "169.254.169.254", "127.0.0.1"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "169.254.169.254 113" in probe.stdout and "127.0.0.1 111" in probe.stdout, probe
        assert net.blocked_attempts() == ["169.254.169.254"]
    assert all(proc.poll() is not None for proc in processes)
    assert list(run_dir.iterdir()) == []


async def test_the_tests_engine_can_isolate_builds(docker_engine: Podman) -> None:
    """Where these builds could not be isolated, the tests above would fail on the refusal; say why here
    (in CI, where the machines can, a problem is a failure, not a skip)."""
    problem = await ImageBuilder(docker_engine.url).isolation_problem()
    require(problem is None, f"build network isolation: the engine {problem}")


def test_a_build_network_leaves_the_hosts_mounts_alone() -> None:
    """The engine keeps each container's network namespace as a mount under /run/netns; a build network
    must not take them away (slirp4netns's own sandbox did, and every container then lost its network)."""
    problem = network.host_problem()
    require(problem is None, f"build network isolation: it {problem}")
    name = f"mcphost-test-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        mounted = f" /run/netns/{name} "
        assert mounted in Path("/proc/self/mountinfo").read_text()
        with network.BuildNetwork():
            pass
        assert mounted in Path("/proc/self/mountinfo").read_text()
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)
