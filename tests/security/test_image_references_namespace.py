"""Image references into the platform's own namespace, the channel: a tenant's image source that names
another server's build (`mcphost/srv-<id>` in the local engine, or under REGISTRY's namespace), or an image
by its engine id, would run that server's code and whatever its build baked in, pulled with the
platform's credentials or found in the worker's engine. The API refuses such a source (422, saying why);
the docker runtime refuses again when it launches, by name and by the build label the platform puts on
what it builds. Controls: with the checks off, the same source is accepted and the same launch runs."""

from __future__ import annotations

import io
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import docker
import httpx
import pytest

from core.failures import PermanentFailure
from core.sources import ImageSource
from core.tenancy import image_repository
from runtimes.base import LABEL_SERVER, Instance, LaunchSpec
from runtimes.docker import DockerExecutor
from runtimes.docker_spec import container_name
from tests.support.components import Podman
from tests.support.stack import Stack

REGISTRY = "registry.example:5000/mcp"
DIGEST = "sha256:" + "ab" * 32
NAMESPACE_REASON = "platform's own image namespace"


@pytest.fixture
async def tenant(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    client, account = await stack.user()
    assert account["role"] == "user"
    async with client:
        yield client


@pytest.fixture
async def victim(stack: Stack) -> str:
    """Another tenant's server: its id names its builds."""
    client, _ = await stack.user()
    async with client:
        created = await client.post(
            "/api/servers",
            json={"name": f"victim-{uuid.uuid4().hex[:6]}", "source": {"type": "image", "image": "ghcr.io/a/b:1"}},
        )
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


@pytest.fixture
def with_registry(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """The API process as an installation that pushes its builds to REGISTRY."""
    monkeypatch.setattr(stack.state.settings, "registry", REGISTRY)


async def _create(client: httpx.AsyncClient, image: str) -> httpx.Response:
    return await client.post(
        "/api/servers", json={"name": f"ns-{uuid.uuid4().hex[:8]}", "source": {"type": "image", "image": image}}
    )


def _builds_of(server_id: str) -> dict[str, str]:
    repo = image_repository(server_id)
    return {
        "local engine name": f"localhost/{repo}:0123456789ab-linux-amd64",
        "short name": repo,
        "registry build": f"{REGISTRY}/{repo}@{DIGEST}",
        "registry host in capitals": f"REGISTRY.example:5000/mcp/{repo}:1",
    }


async def test_a_tenant_cannot_name_another_servers_build(
    tenant: httpx.AsyncClient, victim: str, with_registry: None
) -> None:
    for what, image in _builds_of(victim).items():
        refused = await _create(tenant, image)
        assert refused.status_code == 422, (what, refused.text)
        assert NAMESPACE_REASON in refused.text and "only its own build" in refused.text, (what, refused.text)
    for what, image in {
        "package image": "localhost/mcphost/pkg-0123456789abcdef:1",
        "anything else under the registry's namespace": f"{REGISTRY}/tools/scraper:2",
    }.items():
        refused = await _create(tenant, image)
        assert refused.status_code == 422 and NAMESPACE_REASON in refused.text, (what, refused.text)
    by_id = await _create(tenant, "0123456789ab")
    assert by_id.status_code == 422 and "reads as an image id" in by_id.text, by_id.text

    # An image of the tenant's own is no business of the namespace rule.
    own = await _create(tenant, "ghcr.io/acme/weather-mcp:1.2")
    assert own.status_code == 201, own.text

    # Nor can an update point a server at another's build; the source stays what it was.
    server = own.json()
    moved = await tenant.patch(
        f"/api/servers/{server['id']}",
        json={"source": {"type": "image", "image": _builds_of(victim)["registry build"]}},
    )
    assert moved.status_code == 422 and NAMESPACE_REASON in moved.text, moved.text
    shown = await tenant.get(f"/api/servers/{server['id']}")
    assert shown.json()["source"]["image"] == "ghcr.io/acme/weather-mcp:1.2"

    # A server's own build stays its to name (as the platform names it for its git deployments).
    for image in (_builds_of(server["id"])["registry build"], _builds_of(server["id"])["local engine name"]):
        pinned = await tenant.patch(f"/api/servers/{server['id']}", json={"source": {"type": "image", "image": image}})
        assert pinned.status_code == 200, pinned.text
        assert pinned.json()["source"]["image"] == image


async def test_control_without_the_check_another_servers_build_is_accepted(
    tenant: httpx.AsyncClient, victim: str, with_registry: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("api.routes.servers.image_refusal", lambda *args, **kwargs: None)
    for what, image in _builds_of(victim).items():
        accepted = await _create(tenant, image)
        assert accepted.status_code == 201, (what, accepted.text)


# ---- the docker runtime, on the real engine -----------------------------------------------------------


@pytest.fixture(scope="module")
def builds(docker_engine: Podman) -> Iterator[dict[str, str]]:
    """Two servers' ids, the first's build under its platform name, and a copy of it labelled as the
    platform labels its builds but tagged outside the namespace (as any other name the engine resolves
    to it would be)."""
    echo = docker_engine.ensure_echo_image()
    owner, other = str(uuid.uuid4()), str(uuid.uuid4())
    client = docker.DockerClient(base_url=docker_engine.url, timeout=600)
    repository, tag = f"localhost/{image_repository(owner)}", "0123456789ab-linux-amd64"
    named = f"{repository}:{tag}"
    labelled = f"localhost/mcphost-test-relabelled-{uuid.uuid4().hex[:8]}:1"
    try:
        client.images.get(echo).tag(repository, tag)
        dockerfile = f"FROM {echo}\nLABEL {LABEL_SERVER}={owner}\n"
        client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=labelled, rm=True)
        yield {"owner": owner, "other": other, "named": named, "labelled": labelled}
    finally:
        for tag in (named, labelled):
            try:
                client.images.remove(tag)
            except docker.errors.APIError:
                pass
        client.close()


def _spec(server_id: str, image: str, builder: str | None = None) -> LaunchSpec:
    return LaunchSpec(
        server_id=server_id,
        deployment_id=str(uuid.uuid4()),
        slug="ns-test",
        source=ImageSource(image=image),
        image_builder=builder,
    )


def _container(engine: Any, spec: LaunchSpec) -> Any | None:
    try:
        return engine.containers.get(container_name(spec.deployment_id))
    except docker.errors.NotFound:
        return None


async def _launched(executor: DockerExecutor, engine: Any, spec: LaunchSpec) -> None:
    instance: Instance = await executor.launch(spec)
    try:
        container = _container(engine, spec)
        assert container is not None and container.labels[LABEL_SERVER] == spec.server_id
        assert isinstance(spec.source, ImageSource)
        assert container.image.id == engine.images.get(spec.source.image).id
    finally:
        await executor.remove(instance)


async def test_the_docker_runtime_runs_a_build_only_for_its_server(
    docker_engine: Podman, engine: Any, builds: dict[str, str]
) -> None:
    executor = DockerExecutor(docker_engine.url, registry=REGISTRY)
    try:
        # Another server, naming the build: refused before anything is made, at prepare and at launch.
        foreign = _spec(builds["other"], builds["named"])
        with pytest.raises(PermanentFailure) as refused:
            await executor.prepare(foreign)
        assert NAMESPACE_REASON in refused.value.message
        with pytest.raises(PermanentFailure) as refused:
            await executor.launch(foreign)
        assert NAMESPACE_REASON in refused.value.message
        assert _container(engine, foreign) is None

        # The same build under a name outside the namespace: its build label gives it away.
        relabelled = _spec(builds["other"], builds["labelled"])
        with pytest.raises(PermanentFailure) as refused:
            await executor.launch(relabelled)
        assert "build of another server" in refused.value.message
        assert _container(engine, relabelled) is None

        # Its own server runs it; so does a server the platform hands that build to (a promotion).
        await _launched(executor, engine, _spec(builds["owner"], builds["named"]))
        await _launched(executor, engine, _spec(builds["other"], builds["labelled"], builder=builds["owner"]))
    finally:
        await executor.close()


async def test_control_without_the_runtime_check_another_servers_build_runs(
    docker_engine: Podman, engine: Any, builds: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("runtimes.docker_images.image_refusal", lambda *args, **kwargs: None)
    executor = DockerExecutor(docker_engine.url, registry=REGISTRY)
    try:
        await _launched(executor, engine, _spec(builds["other"], builds["named"]))
    finally:
        await executor.close()
