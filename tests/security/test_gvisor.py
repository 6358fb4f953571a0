"""gVisor, the stronger isolation of container servers, on the real engine (podman's Docker Engine API with
gVisor's `runsc` registered). A server under it runs on gVisor's user-space kernel, not the host's, and
answers through the gateway like any other; a non-administrator cannot go below the installation's
level; a server is never started on the engine's default runtime in gVisor's place: an engine without
the runtime, or one that would ignore it, fails the deployment and says why. Every container, whatever
its isolation, keeps a seccomp filter."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import docker
import httpx
import pytest

from core.isolation import effective_isolation, isolation_refusal, weakening_refusal
from core.sources import ImageSource
from core.tenancy import server_data_dir
from runtimes.base import LABEL_SERVER, LaunchSpec
from runtimes.docker import DockerExecutor
from runtimes.docker_engine import IsolationUnavailable
from runtimes.docker_spec import container_name, network_name
from tests.support.components import Podman, labelled_containers, require
from tests.support.mcp_client import call_tool
from tests.support.stack import Stack, deploy, make_settings, running, wait_for

HOST_KERNEL = os.uname().release
# What gVisor's kernel tells a program it is (its /proc/version).
GVISOR_KERNEL = "Linux version 4.4.0"


@pytest.fixture(scope="module")
def echo_image(docker_engine: Podman) -> str:
    return docker_engine.ensure_echo_image()


@pytest.fixture(scope="module")
def gvisor_url(docker_engine: Podman) -> str:
    require(Podman.gvisor_available(), "gVisor's runsc (apt-get install runsc)")
    return docker_engine.start_gvisor()


def gvisor_settings(stack: Stack, docker_engine: Podman, gvisor_url: str, **overrides: Any) -> Any:
    return make_settings(
        stack.settings.database_url,
        stack.settings.temporal_address,
        stack.settings.state_dir,
        docker_host=docker_engine.url,
        container_gvisor_docker_host=gvisor_url,
        **overrides,
    )


@pytest.fixture(scope="module")
async def chooser(stack: Stack, docker_engine: Podman, gvisor_url: str) -> AsyncIterator[Stack]:
    """An installation whose servers run on the engine's default runtime unless they ask for gVisor."""
    async with running(gvisor_settings(stack, docker_engine, gvisor_url)) as platform:
        yield platform


@pytest.fixture
async def under_gvisor(stack: Stack, docker_engine: Podman, gvisor_url: str) -> AsyncIterator[Stack]:
    """An installation whose container servers all run under gVisor (CONTAINER_ISOLATION=gvisor)."""
    async with running(gvisor_settings(stack, docker_engine, gvisor_url, container_isolation="gvisor")) as platform:
        yield platform


async def create(client: httpx.AsyncClient, image: str, **fields: Any) -> httpx.Response:
    return await client.post(
        "/api/servers",
        json={"name": f"gv-{uuid.uuid4().hex[:6]}", "source": {"type": "image", "image": image}, **fields},
    )


async def deployed(platform: Stack, client: httpx.AsyncClient, engine: Any, image: str, **fields: Any) -> Any:
    """A running server (answering MCP through the gateway) and its one container."""
    response = await create(client, image, **fields)
    assert response.status_code == 201, response.text
    server = response.json()
    result = await deploy(client, server["id"])
    assert result["status"] == "running", result
    gateway = f"{platform.base_url}/mcp/{server['slug']}"
    assert await call_tool(gateway, server["api_key"], "echo", {"text": "through"}) == "echo: through"
    [container] = labelled_containers(engine, f"{LABEL_SERVER}={server['id']}")
    return server, result, container


async def delete(client: httpx.AsyncClient, engine: Any, server_id: str) -> None:
    """Delete a server and wait until its containers are gone: the platform that removes them may stop
    right after the test."""
    assert (await client.delete(f"/api/servers/{server_id}")).status_code == 202

    async def gone() -> bool:
        return not labelled_containers(engine, f"{LABEL_SERVER}={server_id}")

    await wait_for(gone, f"the containers of server {server_id} to go", timeout=60)


def run(container: Any, *command: str) -> str:
    result = container.exec_run(list(command))
    output: str = result.output.decode(errors="replace").strip()
    assert result.exit_code == 0, output
    return output


def oci_runtime(docker_engine: Podman, container: Any) -> str:
    """The runtime the engine runs the container on. Podman's Docker-compatible inspect says `oci` for
    every container (HostConfig.Runtime); its own inspect names it."""
    return docker_engine.podman("inspect", "--format", "{{.OCIRuntime}}", container.id).stdout.strip()


def seccomp_mode(status: str) -> str:
    return next(line.split(":", 1)[1].strip() for line in status.splitlines() if line.startswith("Seccomp:"))


async def test_a_server_that_asks_for_gvisor_runs_on_its_kernel_and_answers(
    chooser: Stack, echo_image: str, docker_engine: Podman, engine: docker.DockerClient
) -> None:
    client, account = await chooser.user()
    assert account["role"] == "user"
    async with client:
        server, result, boxed = await deployed(chooser, client, engine, echo_image, isolation="gvisor")
        _, _, plain = await deployed(chooser, client, engine, echo_image)

        assert server["isolation"] == "gvisor"
        prepared = next(s for s in result["steps"] if s["step"] == "prepare")
        assert "runs under gVisor (runtime runsc)" in prepared["message"]

        # The server's system calls reach gVisor's kernel; its sibling's reach the host's.
        assert oci_runtime(docker_engine, boxed) == "runsc"
        assert run(boxed, "cat", "/proc/version").startswith(GVISOR_KERNEL)
        assert HOST_KERNEL not in run(boxed, "cat", "/proc/version")
        assert oci_runtime(docker_engine, plain) == "runc"
        assert HOST_KERNEL in run(plain, "cat", "/proc/version")

        # The container's other confinement is unchanged under gVisor: no privilege gain, the server's
        # uid, and its /data shared with the host.
        host = boxed.attrs["HostConfig"]
        assert any(opt.startswith("no-new-privileges") for opt in host["SecurityOpt"] or [])
        uid = boxed.attrs["Config"]["User"].split(":")[0]
        assert run(boxed, "id", "-u") == uid != "0"
        data_dir = server_data_dir(chooser.settings.state_dir, server["id"])
        (data_dir / "from-host").write_text("host\n")
        run(boxed, "sh", "-c", "cat /data/from-host > /data/from-server")
        assert (data_dir / "from-server").read_text() == "host\n"
        assert str((data_dir / "from-server").stat().st_uid) == uid

        # The host side of the sandbox (runsc's sandbox process, what the container's pid is) is under a
        # seccomp filter of gVisor's own, as the engine-default container is under the engine's.
        boxed.reload()
        with open(f"/proc/{boxed.attrs['State']['Pid']}/status") as handle:
            assert seccomp_mode(handle.read()) == "2"
        assert seccomp_mode(run(plain, "cat", "/proc/self/status")) == "2"

        for sid in (server["id"], plain.labels[LABEL_SERVER]):
            await delete(client, engine, sid)


async def test_a_default_container_keeps_the_engines_seccomp_filter(
    stack: Stack, echo_image: str, engine: docker.DockerClient
) -> None:
    client, _ = await stack.user()
    async with client:
        server, _, container = await deployed(stack, client, engine, echo_image)
        assert server["isolation"] is None
        # 2: filtering. `seccomp=unconfined` (or a profile that filters nothing) would leave 0.
        assert seccomp_mode(run(container, "cat", "/proc/self/status")) == "2"
        assert HOST_KERNEL in run(container, "cat", "/proc/version")
        assert not any("seccomp" in opt for opt in container.attrs["HostConfig"]["SecurityOpt"] or [])
        await delete(client, engine, server["id"])


async def test_an_engine_that_would_ignore_the_runtime_fails_the_deployment(
    stack: Stack, echo_image: str, docker_engine: Podman, engine: docker.DockerClient
) -> None:
    """The suite's own engine knows `runsc`, but podman's API service runs every container on its default
    runtime whatever the request says. Without CONTAINER_GVISOR_DOCKER_HOST the server is not run there."""
    require(Podman.gvisor_available(), "gVisor's runsc (apt-get install runsc)")
    client, _ = await stack.user()
    async with client:
        response = await create(client, echo_image, isolation="gvisor")
        assert response.status_code == 201, response.text
        server = response.json()
        result = await deploy(client, server["id"])
        assert result["status"] == "failed", result
        assert "would run this server on runtime 'runc', not gVisor's 'runsc'" in result["error"]
        assert "CONTAINER_GVISOR_DOCKER_HOST" in result["error"]
        assert labelled_containers(engine, f"{LABEL_SERVER}={server['id']}") == []
        # The network made for the refused container goes with it: nothing else would ever remove it once
        # the server is deleted.
        assert engine.networks.list(names=[network_name(server["id"])]) == []
        await delete(client, engine, server["id"])


async def test_an_engine_without_the_runtime_is_told_plainly(docker_engine: Podman, echo_image: str) -> None:
    executor = DockerExecutor(docker_engine.url, gvisor_runtime="gvisor-missing")
    spec = LaunchSpec(
        server_id=str(uuid.uuid4()),
        deployment_id=str(uuid.uuid4()),
        slug="gv-missing",
        source=ImageSource(image=echo_image),
        isolation="gvisor",
    )
    try:
        for step in (executor.prepare, executor.launch):
            with pytest.raises(IsolationUnavailable) as raised:
                await step(spec)
            assert raised.value.permanent
            assert "the container engine has no runtime 'gvisor-missing'" in raised.value.message
            assert "containers.conf" in raised.value.message and "daemon.json" in raised.value.message
        with pytest.raises(docker.errors.NotFound):
            executor._docker().containers.get(container_name(spec.deployment_id))
    finally:
        await executor.close()


async def test_an_installation_under_gvisor_keeps_non_administrators_there(
    under_gvisor: Stack, echo_image: str, docker_engine: Podman, engine: docker.DockerClient
) -> None:
    user, _ = await under_gvisor.user()
    admin, _ = await under_gvisor.user(role="admin")
    async with user, admin:
        server, _, container = await deployed(under_gvisor, user, engine, echo_image)
        assert server["isolation"] is None
        assert oci_runtime(docker_engine, container) == "runsc"
        assert run(container, "cat", "/proc/version").startswith(GVISOR_KERNEL)

        # Below the installation's level is for administrators only, on create and on update.
        refused = await create(user, echo_image, isolation="engine")
        assert refused.status_code == 403, refused.text
        assert "weaker than this installation's CONTAINER_ISOLATION=gvisor" in refused.text
        patched = await user.patch(f"/api/servers/{server['id']}", json={"isolation": "engine"})
        assert patched.status_code == 403, patched.text

        trusted, _, own = await deployed(under_gvisor, admin, engine, echo_image, isolation="engine")
        assert oci_runtime(docker_engine, own) == "runc"
        assert HOST_KERNEL in run(own, "cat", "/proc/version")

        for client, sid in ((user, server["id"]), (admin, trusted["id"])):
            await delete(client, engine, sid)


async def test_gvisor_is_refused_where_it_would_not_be_given(stack: Stack, echo_image: str) -> None:
    client, _ = await stack.user()
    async with client:
        package = {"type": "package", "registry": "pypi", "package": "mcphost-test-hostile"}
        response = await client.post(
            "/api/servers",
            json={"name": "gv-process", "source": package, "runtime": "process", "isolation": "gvisor"},
        )
        assert response.status_code == 422, response.text
        assert "gVisor isolation is offered for container servers; choose the docker runtime" in response.text

        response = await create(client, echo_image, isolation="gvisor")
        assert response.status_code == 201, response.text
        server = response.json()
        # A later change of runtime may not leave the choice behind.
        moved = await client.patch(f"/api/servers/{server['id']}", json={"runtime": "process", "source": package})
        assert moved.status_code == 422, moved.text
        assert "gVisor isolation is offered for container servers" in moved.text

        unknown = await create(client, echo_image, isolation="kata")
        assert unknown.status_code == 422, unknown.text
        assert (await client.delete(f"/api/servers/{server['id']}")).status_code == 202


@pytest.mark.parametrize(
    ("requested", "default", "admin", "runs"),
    [(None, "engine", False, "engine"), (None, "gvisor", False, "gvisor"), ("gvisor", "engine", False, "gvisor"),
     ("engine", "gvisor", False, "gvisor"), ("engine", "gvisor", True, "engine"), ("gvisor", "gvisor", True, "gvisor"),
     ("bogus", "gvisor", True, "gvisor")],
)  # fmt: skip
def test_a_server_is_never_below_the_installations_level_unless_an_administrator_owns_it(
    requested: str | None, default: Any, admin: bool, runs: str
) -> None:
    assert effective_isolation(requested, default, admin=admin) == runs
    refused = weakening_refusal(requested, default, admin=admin)
    assert (refused is None) == (admin or requested in (None, runs))


def test_only_the_docker_runtime_takes_a_gvisor_server() -> None:
    assert isolation_refusal("gvisor", "docker") is None
    assert isolation_refusal("engine", "process") is None and isolation_refusal(None, "kubernetes") is None
    for runtime in ("process", "kubernetes", "virtual-machine"):
        assert isolation_refusal("gvisor", runtime) is not None


async def test_launch_options_name_the_runtime_and_never_a_seccomp_profile() -> None:
    base = LaunchSpec(
        server_id=str(uuid.uuid4()), deployment_id=str(uuid.uuid4()), slug="s", source=ImageSource(image="x:1")
    )
    executor = DockerExecutor(gvisor_runtime="runsc-custom")
    for isolation in ("engine", "gvisor"):
        spec = LaunchSpec(**{**base.__dict__, "isolation": isolation})
        options, _ = await executor._run_options(spec, "x:1")
        assert options.get("runtime") == ("runsc-custom" if isolation == "gvisor" else None)
        assert options["security_opt"] == ["no-new-privileges"]
