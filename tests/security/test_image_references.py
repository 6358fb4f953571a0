"""Image references and image configuration, the channel: an image a tenant names may say it runs as
`USER 00` or as a user whose passwd entry is uid 0; the docker runtime resolves who that is and runs such a
server as its own unprivileged uid. The control resolves the user by name only, as the runtime once did,
and the same container runs as root."""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import docker
import httpx
import pytest

from runtimes.base import LABEL_SERVER
from tests.support.components import Podman, labelled_containers
from tests.support.stack import Stack, deploy


@pytest.fixture(scope="module")
def root_images(docker_engine: Podman) -> dict[str, str]:
    """Images of the tests' MCP server whose USER is root written two other ways."""
    base = docker_engine.ensure_echo_image()
    client = docker.DockerClient(base_url=docker_engine.url, timeout=600)
    images = {}
    try:
        for label, lines in (
            ("zeros", "USER 00\n"),
            ("alias", "USER root\nRUN echo 'toor:x:0:0::/root:/bin/sh' >> /etc/passwd\nUSER toor\n"),
        ):
            tag = f"localhost/mcphost-test-user-{label}:1"
            dockerfile = f"FROM {base}\n{lines}"
            client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True)
            images[label] = tag
    finally:
        client.close()
    return images


@pytest.fixture
async def user(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    client, _ = await stack.user()
    async with client:
        yield client


async def _uid_inside(client: httpx.AsyncClient, engine: Any, image: str) -> tuple[str, dict[str, Any]]:
    response = await client.post(
        "/api/servers", json={"name": f"u-{uuid.uuid4().hex[:6]}", "source": {"type": "image", "image": image}}
    )
    assert response.status_code == 201, response.text
    server = response.json()
    result = await deploy(client, server["id"])
    assert result["status"] == "running", result
    [container] = labelled_containers(engine, f"{LABEL_SERVER}={server['id']}")
    got = container.exec_run(["id", "-u"])
    return got.output.decode().strip(), server


@pytest.mark.parametrize("label", ["zeros", "alias"])
async def test_root_however_written_runs_as_the_servers_uid(
    stack: Stack, user: httpx.AsyncClient, engine: Any, root_images: dict[str, str], label: str
) -> None:
    uid, server = await _uid_inside(user, engine, root_images[label])
    assert uid == str(await stack.sandbox_uid(server["id"])) and uid != "0"
    assert (await user.delete(f"/api/servers/{server['id']}")).status_code == 202


@pytest.mark.parametrize("label", ["zeros", "alias"])
def test_control_such_an_image_left_to_its_own_user_runs_as_root(
    engine: Any, root_images: dict[str, str], label: str
) -> None:
    """What the runtime once did with these images: it judged `User` by its name, found neither "00" nor
    "toor" to be root, and let the engine run the image as its own user, which is uid 0."""
    name = engine.images.get(root_images[label]).attrs["Config"]["User"].split(":", 1)[0]
    assert name not in ("", "root", "0")
    # Polled rather than waited on: the engine's wait endpoint can miss a container that exits at once.
    container = engine.containers.create(root_images[label], ["id", "-u"], entrypoint=[])
    try:
        container.start()
        deadline = time.monotonic() + 120
        while container.status != "exited":
            assert time.monotonic() < deadline, f"the container never exited ({container.status})"
            time.sleep(0.1)
            container.reload()
        output = container.logs(stdout=True, stderr=False)
    finally:
        container.remove(force=True)
    assert output.decode().strip() == "0"
